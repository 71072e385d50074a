//! `salloc`: get an allocation, run a command (by default the user's shell) on this host
//! with the allocation's `SLURM_*` variables, so that `srun` inside it launches steps on
//! the allocated nodes, and give the allocation back when the command exits.
//!
//! salloc takes sbatch's job options from the same table ([`crate::sbatch::options`]),
//! less those that only mean something for a batch script (`--array`, `--output`,
//! `--wrap`…), which salloc does not know, as in Slurm; `SALLOC_*` variables stand for
//! options as `SBATCH_*` ones do for sbatch. The job ends COMPLETED when the command exits
//! 0 and FAILED with its exit code otherwise; a time limit or `scancel` ends the command.

use crate::allocation;
use crate::client;
use crate::opt::table::{OptionSpec, Table};
use crate::sbatch::{self, opts::Opts};
use anyhow::{anyhow, Context as _};
use berth_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;
use tokio_stream::StreamExt as _;

/// sbatch options salloc does not have (salloc(1) lists none of them).
pub const NOT_SALLOC: &[&str] = &[
    "array",
    "container-env",
    "container-image",
    "container-mounts",
    "container-workdir",
    "error",
    "export",
    "no-requeue",
    "open-mode",
    "output",
    "parsable",
    "requeue",
    "workdir",
    "wrap",
];

/// How long the command has after SIGTERM, when the allocation ends under it, before
/// SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// salloc's option table: sbatch's, less [`NOT_SALLOC`].
pub fn table() -> &'static Table<Opts> {
    static TABLE: OnceLock<Table<Opts>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let options: Vec<OptionSpec<Opts>> = sbatch::options::SUPPORTED
            .iter()
            .filter(|o| !NOT_SALLOC.contains(&o.long))
            .map(|o| OptionSpec {
                long: o.long,
                short: o.short,
                arg: o.arg,
                show_job: o.show_job,
                set: o.set,
            })
            .collect();
        let unsupported: Vec<(&'static str, Option<char>)> = sbatch::options::UNSUPPORTED
            .iter()
            .filter(|(long, _)| !matches!(*long, "wait" | "test-only" | "batch"))
            .copied()
            .collect();
        Table {
            options: Box::leak(options.into_boxed_slice()),
            unsupported: Box::leak(unsupported.into_boxed_slice()),
        }
    })
}

/// Parses salloc's arguments: the options (command line over `SALLOC_*` variables in
/// `env`) and the command to run (empty: the user's shell).
///
/// # Errors
/// The first bad option, value or variable, in sbatch's words.
pub fn parse(
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<(Opts, Vec<String>), sbatch::SbatchError> {
    let mut cli = Opts::default();
    let first = crate::opt::getopt::parse(table(), args, &mut cli)?;
    let from_env = sbatch::env::options_from_prefixed(env, "SALLOC_", NOT_SALLOC)?;
    Ok((from_env.overlaid_by(cli), args[first..].to_vec()))
}

/// Runs salloc with `args`; returns the command's exit status.
///
/// # Errors
/// Bad options, berthd unreachable, the allocation refused or revoked before it started,
/// or the command not runnable.
pub async fn run(args: Vec<String>) -> anyhow::Result<i32> {
    let ctx = crate::sbatch::submit_context("salloc")?;
    let (opts, mut command) = match parse(&args, &ctx.env) {
        Ok(p) => p,
        Err(e) if e.is_help() => {
            println!("Usage: salloc [OPTIONS(0)...] [ : [OPTIONS(N)...]] [command(0) [args(0)...]]\n(the job options are sbatch's: berth sbatch --help)");
            return Ok(0);
        }
        Err(e) if e.is_version() => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    if command.is_empty() {
        command.push(
            ctx.env
                .get("SHELL")
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "/bin/sh".into()),
        );
    }
    let name = command[0]
        .rsplit('/')
        .next()
        .unwrap_or(&command[0])
        .to_string();
    let spec = sbatch::allocation_spec(opts, &name, &ctx)?;
    let channel = client::connect(&client::servers(None)).await?;
    let mut jobs = client::jobs(channel);
    let allocation::Granted { job, mut watch } =
        allocation::obtain(&mut jobs, spec, "salloc", false).await?;
    let id = job.id;
    let mut child = match tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(allocation::variables(&job))
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let exit = pb::AllocationExit {
                exit_code: 127,
                signal: 0,
            };
            eprintln!("salloc: Relinquishing job allocation {id}");
            let _ = allocation::release(&mut jobs, id, exit).await;
            return Err(anyhow!("{}: {e}", command[0]));
        }
    };
    // Ctrl-C reaches the command through the terminal; salloc itself stays to release.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut revoked = false;
    // Until the allocation ends under the command, or the watch is lost (berthd gone:
    // the allocation may still be there, so the command keeps running).
    let mut watching = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = int.recv() => {}
            _ = term.recv() => stop(&mut child),
            update = watch.next(), if watching => {
                let ended = match update {
                    Some(Ok(j)) => j.state() != pb::JobState::Running,
                    _ => {
                        watching = false;
                        false
                    }
                };
                if ended {
                    watching = false;
                    revoked = true;
                    eprintln!("salloc: Job allocation {id} has been revoked.");
                    stop(&mut child);
                    let pid = child.id();
                    tokio::spawn(async move {
                        tokio::time::sleep(COMMAND_GRACE).await;
                        if let Some(pid) = pid {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    });
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let exit = pb::AllocationExit {
        exit_code: status.code().unwrap_or(0),
        signal: status.signal().unwrap_or(0),
    };
    if !revoked {
        eprintln!("salloc: Relinquishing job allocation {id}");
        if let Err(e) = allocation::release(&mut jobs, id, exit).await {
            eprintln!("salloc: error: releasing job allocation {id}: {e}");
        }
    }
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    })
}

/// SIGTERM to the command.
fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_end_at_the_command_and_salloc_variables_yield_to_the_command_line() {
        let env: BTreeMap<String, String> = [
            ("SALLOC_PARTITION".to_string(), "debug".to_string()),
            ("SALLOC_TIMELIMIT".to_string(), "10".to_string()),
        ]
        .into();
        let (o, cmd) = parse(&args("-N 2 -t 5 srun -N 2 hostname"), &env).unwrap();
        assert_eq!(cmd, args("srun -N 2 hostname"));
        assert_eq!(o.time_secs, Some(300));
        assert_eq!(o.partition.as_deref(), Some("debug"));
        let (_, cmd) = parse(&args("-n1"), &env).unwrap();
        assert!(cmd.is_empty());
    }

    #[test]
    fn batch_only_options_are_unknown_to_salloc_and_bad_values_are_refused() {
        let env = BTreeMap::new();
        for bad in [
            "--array=0-3 true",
            "--wrap=true",
            "-o out.txt true",
            "--parsable true",
        ] {
            let err = parse(&args(bad), &env).unwrap_err().to_string();
            assert!(err.contains("unrecognized option"), "{bad}: {err}");
        }
        let err = parse(&args("-t never true"), &env).unwrap_err().to_string();
        assert!(err.contains("never"), "{err}");
        let env: BTreeMap<String, String> =
            [("SALLOC_TIMELIMIT".to_string(), "x".to_string())].into();
        let err = parse(&args("true"), &env).unwrap_err().to_string();
        assert!(err.contains("SALLOC_TIMELIMIT"), "{err}");
    }
}
