//! `sbatch`: the command line, `SBATCH_*` variables and `#SBATCH` directives → a `JobSpec`.
//!
//! Users bring scripts written for Slurm, so options parse as Slurm's sbatch parses them:
//! getopt rules (`--opt=v`, `--opt v`, `-Xv`, `-X v`, unique prefixes of long options,
//! options end at the script path), `#SBATCH` lines only at the top of the script, and the
//! precedence command line > `SBATCH_*` environment > script. The defaults are Slurm's
//! (one node, one task, one CPU per task, `slurm-%j.out`, the whole environment exported).
//!
//! What berth cannot do yet must never be dropped quietly: a job that silently lost its
//! `--dependency` or `--exclusive` runs wrong and nobody notices. Every real sbatch option
//! berth lacks is therefore an error naming it, and so is a value berth cannot honour.
//!
//! # Layout
//! - [`options`]: the option table (one entry per option), the refused options, the
//!   `SBATCH_*` variables.
//! - [`opts`]: [`opts::Opts`], where one source's options land.
//! - [`directives`]: script checks and `#SBATCH` scanning.
//! - [`env`]: `SBATCH_*` variables.
//! - [`build`]: merged options → `JobSpec`.
//! - [`error`]: [`SbatchError`]. Value parsers live in [`crate::opt`].

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use berth_proto::v1::JobSpec;

pub mod build;
pub mod directives;
pub mod env;
pub mod error;
pub mod options;
pub mod opts;
mod usage;

pub use crate::opt::dependency::{parse_dependency, DEPENDENCIES_MAX, DEPENDENCY_KINDS};
pub use crate::opt::signal::{parse_signal, SignalSpec};
pub use crate::opt::switches::SWITCH_WAIT_DEFAULT_SECS;
pub use error::SbatchError;
pub use usage::USAGE;

use build::{absolute_path, build_spec, Script};
use directives::{check_script, parse_directives, wrap_script};
use opts::Opts;

/// Who is submitting, from where: everything sbatch reads from its process.
#[derive(Debug, Clone, Default)]
pub struct SubmitContext {
    /// The directory sbatch runs in: relative paths resolve against it.
    pub cwd: PathBuf,
    /// The submitting environment (`--export` picks from it; `SBATCH_*` are read from it).
    pub env: BTreeMap<String, String>,
    /// The submitting user's name.
    pub user: String,
    /// The submitting user's uid.
    pub uid: u32,
    /// The submitting user's primary gid.
    pub gid: u32,
    /// This host's name (`AllocNode`, `SLURM_SUBMIT_HOST`).
    pub host: String,
}

/// Who submits from where, for `tool` (sbatch, salloc, srun): its warnings name it.
pub fn submit_context(tool: &str) -> anyhow::Result<SubmitContext> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let mut env = std::env::vars().collect::<BTreeMap<_, _>>();
    // An inherited variable berthd would refuse is left out (naming it with --export is
    // still refused, with berthd's reason).
    env.retain(|k, _| match berth_auth::env_policy::denied(k) {
        Some(why) => {
            eprintln!("{tool}: warning: {k} not exported: {why}");
            false
        }
        None => true,
    });
    Ok(SubmitContext {
        cwd: std::env::current_dir()?,
        env,
        user,
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        host: berth_agent::machine::hostname(),
    })
}

/// A parsed submission: what to send, and how to report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The job to submit.
    pub spec: JobSpec,
    /// `--parsable`: print only the job id.
    pub parsable: bool,
    /// Things the user should hear about that are not errors (e.g. an `#SBATCH` line after
    /// the first command, which Slurm ignores too). Print each to stderr as `sbatch: warning:`.
    pub warnings: Vec<String>,
}

/// Parses `sbatch` arguments (everything after the command name) into a submission.
///
/// Options end at the first argument that is not one (the script path) or after `--`; the
/// rest are the script's arguments. Without a script path and without `--wrap`, the script
/// is read with `read_stdin`, as sbatch reads standard input. Precedence: command line, then
/// `SBATCH_*` variables in `ctx.env`, then `#SBATCH` directives.
///
/// # Errors
/// [`SbatchError`] naming the option, value, line or file at fault; a help or version
/// request ([`SbatchError::is_help`], [`SbatchError::is_version`]) asks the caller to print
/// [`USAGE`] or its version instead.
pub fn parse_submission(
    args: &[String],
    ctx: &SubmitContext,
    read_stdin: &mut dyn FnMut() -> io::Result<Vec<u8>>,
) -> Result<Submission, SbatchError> {
    let mut cli = Opts::default();
    let operands = &args[parse_options(args, &mut cli)?..];
    let env = env::options_from_env(&ctx.env)?;
    let (script, text, script_args) = match (&cli.wrap, operands.first()) {
        (Some(_), Some(extra)) => return Err(SbatchError::WrapWithScript(extra.clone())),
        (Some(command), None) => (Script::Wrap, wrap_script(command).into_bytes(), Vec::new()),
        (None, Some(path)) => {
            let absolute = absolute_path(&ctx.cwd, path);
            let bytes = std::fs::read(&absolute).map_err(|error| SbatchError::ScriptRead {
                path: path.clone(),
                error,
            })?;
            (
                Script::File {
                    given: path.clone(),
                    absolute,
                },
                bytes,
                operands[1..].to_vec(),
            )
        }
        (None, None) => (
            Script::Stdin,
            read_stdin().map_err(SbatchError::StdinRead)?,
            Vec::new(),
        ),
    };
    // A script in another encoding (Latin-1 comments, say) runs byte for byte, as Slurm
    // runs it: its directives are read from a lossy copy, which is also what tools show.
    let (text, raw) = match String::from_utf8(text) {
        Ok(text) => (text, Vec::new()),
        Err(e) => {
            let raw = e.into_bytes();
            (String::from_utf8_lossy(&raw).into_owned(), raw)
        }
    };
    check_script(&text)?;
    let (directives, warnings) = parse_directives(&text)?;
    let opts = directives.overlaid_by(env).overlaid_by(cli);
    let parsable = opts.parsable;
    let mut spec = build_spec(opts, &script, text, script_args, ctx)?;
    spec.script_bytes = raw;
    Ok(Submission {
        spec,
        parsable,
        warnings,
    })
}

/// The job of an interactive allocation (salloc, srun outside any job) asked for by
/// `opts`, running the command `name`: no script, no output files (what runs in it writes
/// to the tool's terminal).
///
/// # Errors
/// As [`parse_submission`] for the same options.
pub fn allocation_spec(
    opts: Opts,
    name: &str,
    ctx: &SubmitContext,
) -> Result<JobSpec, SbatchError> {
    let script = Script::Allocation { name: name.into() };
    let mut spec = build_spec(opts, &script, String::new(), Vec::new(), ctx)?;
    spec.allocation = true;
    spec.stdout = "/dev/null".into();
    spec.stderr = "/dev/null".into();
    Ok(spec)
}

/// Parses sbatch options from `args` into `opts` and returns the index of the first operand
/// (`args.len()` when there is none).
fn parse_options(args: &[String], opts: &mut Opts) -> Result<usize, SbatchError> {
    Ok(crate::opt::getopt::parse(&options::SBATCH, args, opts)?)
}

#[cfg(test)]
mod tests;
