//! `berth sshare`, `berth sprio` and `berth admin accounts`: the fair-share tree, the
//! priority factors of pending jobs, and the accounts/QOS configuration.
//!
//! The tables follow Slurm's `sshare` and `sprio` column names; berth has no separate
//! user associations, so sshare lists accounts only (leaves are users or projects).

use crate::client;
use crate::client::status_text;
use crate::client::Channel;
use berth_proto::v1::{self as pb, admin_service_client::AdminServiceClient};
use clap::Parser;

/// Renders `sshare`'s table (one line per account, indented by depth as Slurm does).
pub fn render_shares(rows: &[pb::ShareRow]) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>11} {:>13} {:>13} {:>10} {:>10}\n",
        "Account", "RawShares", "NormShares", "RawUsage", "EffectvUsage", "FairShare", "LevelFS"
    );
    out.push_str(&format!("{}\n", "-".repeat(92)));
    for r in rows {
        let name = format!("{}{}", " ".repeat(r.depth as usize), r.account);
        let fs = if r.fairshare < 0.0 {
            String::new()
        } else {
            format!("{:.6}", r.fairshare)
        };
        let level = if r.depth == 0 {
            String::new()
        } else if r.level_fs.is_infinite() {
            "inf".to_string()
        } else {
            format!("{:.6}", r.level_fs)
        };
        out.push_str(&format!(
            "{name:<20} {:>9} {:>11.6} {:>13.0} {:>13.6} {fs:>10} {level:>10}\n",
            r.shares, r.norm_shares, r.raw_usage, r.effective_usage
        ));
    }
    out
}

/// Renders `sprio`'s table: weighted factors (what they add to the priority; their sum
/// is the priority, give or take rounding), or the factors themselves with `normalized`
/// (`-n`). One column per term of the priority sum: Slurm's AGE, FAIRSHARE, JOBSIZE and
/// QOS, and berth's SHORT (favor short time limits).
pub fn render_priorities(p: &pb::PrioritiesResponse, normalized: bool) -> String {
    let mut out = format!(
        "{:>10} {:<10} {:<12} {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "JOBID",
        "USER",
        "ACCOUNT",
        "QOS",
        "PRIORITY",
        "AGE",
        "FAIRSHARE",
        "JOBSIZE",
        "QOS_F",
        "SHORT"
    );
    let w = |f: f64, weight: u32| {
        if normalized {
            format!("{f:.7}")
        } else {
            format!("{:.0}", f * f64::from(weight))
        }
    };
    for j in &p.jobs {
        out.push_str(&format!(
            "{:>10} {:<10} {:<12} {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            j.job_id,
            j.user,
            j.account,
            j.qos,
            j.priority,
            w(j.age, p.weight_age),
            w(j.fairshare, p.weight_fairshare),
            w(j.size, p.weight_size),
            w(j.qos_factor, p.weight_qos),
            w(j.short, j.weight_short),
        ));
    }
    out
}

/// `sprio -w`'s line. The short factor's weight travels on each job row, so it is shown
/// only when some job is listed.
pub fn render_weights(p: &pb::PrioritiesResponse) -> String {
    let short = p
        .jobs
        .first()
        .map(|j| format!(" SHORT={}", j.weight_short))
        .unwrap_or_default();
    format!(
        "Weights: AGE={} FAIRSHARE={} JOBSIZE={} QOS={}{short}\n",
        p.weight_age, p.weight_fairshare, p.weight_size, p.weight_qos
    )
}

async fn admin_client() -> anyhow::Result<AdminServiceClient<Channel>> {
    Ok(AdminServiceClient::new(
        client::connect(&client::servers(None)).await?,
    ))
}

fn parse<P: Parser>(name: &str, args: Vec<String>) -> Result<P, i32> {
    P::try_parse_from(std::iter::once(name.to_string()).chain(args)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            1
        } else {
            0
        }
    })
}

/// `berth sshare`.
///
/// # Errors
/// The server's error, or no server.
pub async fn sshare(args: Vec<String>) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(name = "sshare", about = "fair-share tree: shares, usage, factors")]
    struct Args {}
    if let Err(code) = parse::<Args>("sshare", args) {
        return Ok(code);
    }
    let rows = admin_client()
        .await?
        .get_shares(pb::SharesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
        .into_inner()
        .rows;
    print!("{}", render_shares(&rows));
    Ok(0)
}

/// `berth sprio [-j IDS] [-n] [-w]`.
///
/// # Errors
/// Bad job ids, the server's error, or no server.
pub async fn sprio(args: Vec<String>) -> anyhow::Result<i32> {
    #[derive(Parser)]
    #[command(name = "sprio", about = "priority factors of pending jobs")]
    struct Args {
        /// Job ids (comma-separated).
        #[arg(short = 'j', long = "jobs", value_delimiter = ',')]
        jobs: Vec<String>,
        /// Factors in [0, 1] instead of weighted.
        #[arg(short = 'n', long = "norm")]
        norm: bool,
        /// Print the weights.
        #[arg(short = 'w', long = "weights")]
        weights: bool,
    }
    let a = match parse::<Args>("sprio", args) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let job_ids = a
        .jobs
        .iter()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("Invalid job id specified: {s}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let p = admin_client()
        .await?
        .get_priorities(pb::PrioritiesRequest { job_ids })
        .await
        .map_err(|s| anyhow::anyhow!("{}", status_text(&s)))?
        .into_inner();
    if a.weights {
        print!("{}", render_weights(&p));
        return Ok(0);
    }
    print!("{}", render_priorities(&p, a.norm));
    Ok(0)
}

/// `berth admin accounts show | set FILE`.
///
/// # Errors
/// Usage, an unreadable file, or the server's refusal (a bad file changes nothing).
pub async fn accounts(c: &mut AdminServiceClient<Channel>, words: &[&str]) -> anyhow::Result<i32> {
    let err = |s: tonic::Status| anyhow::anyhow!("{}", status_text(&s));
    match words {
        ["show"] => {
            let cfg = c
                .get_accounts(pb::AccountsRequest {})
                .await
                .map_err(err)?
                .into_inner();
            print!("{}", cfg.toml);
        }
        ["set", file] => {
            let toml = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?;
            crate::client::retried(&*c, toml, |mut c, toml| async move {
                c.set_accounts(pb::AccountsConfig { toml }).await
            })
            .await
            .map_err(err)?;
            println!("accounts configuration from {file} installed");
        }
        _ => anyhow::bail!("usage: berth admin accounts show | accounts set FILE"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshare_indents_and_marks_leaves() {
        let rows = vec![
            pb::ShareRow {
                account: "root".into(),
                shares: 1,
                norm_shares: 1.0,
                raw_usage: 100.0,
                effective_usage: 1.0,
                level_fs: 1.0,
                fairshare: -1.0,
                ..Default::default()
            },
            pb::ShareRow {
                account: "alice".into(),
                depth: 1,
                shares: 2,
                norm_shares: 0.5,
                raw_usage: 0.0,
                effective_usage: 0.0,
                level_fs: f64::INFINITY,
                fairshare: 1.0,
            },
        ];
        let out = render_shares(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("Account"), "{out}");
        assert!(lines[2].starts_with("root "), "{out}");
        assert!(lines[3].starts_with(" alice"), "{out}");
        assert!(
            lines[3].contains("1.000000") && lines[3].ends_with("inf"),
            "{out}"
        );
    }

    #[test]
    fn sprio_shows_every_term_of_the_priority_sum() {
        let p = pb::PrioritiesResponse {
            jobs: vec![pb::JobPriority {
                job_id: 7,
                user: "u".into(),
                account: "a".into(),
                qos: "training".into(),
                // 10000*1 + 1000*0.5 + 2000*0.25 + 10000*0.5 + 4000*0.125 = 16500
                priority: 16500,
                fairshare: 1.0,
                age: 0.5,
                qos_factor: 0.5,
                size: 0.25,
                short: 0.125,
                weight_short: 4000,
            }],
            weight_fairshare: 10000,
            weight_age: 1000,
            weight_qos: 10000,
            weight_size: 2000,
        };
        let out = render_priorities(&p, false);
        let head: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            [
                "JOBID",
                "USER",
                "ACCOUNT",
                "QOS",
                "PRIORITY",
                "AGE",
                "FAIRSHARE",
                "JOBSIZE",
                "QOS_F",
                "SHORT"
            ]
        );
        let cols: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cols,
            ["7", "u", "a", "training", "16500", "500", "10000", "500", "5000", "500"]
        );
        // The weighted columns add up to the priority.
        let sum: u64 = cols[5..].iter().map(|c| c.parse::<u64>().unwrap()).sum();
        assert_eq!(sum, 16500);
        let line = render_priorities(&p, true)
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert!(
            line.contains("0.5000000") && line.contains("1.0000000") && line.ends_with("0.1250000"),
            "{line}"
        );
        assert_eq!(
            render_weights(&p),
            "Weights: AGE=1000 FAIRSHARE=10000 JOBSIZE=2000 QOS=10000 SHORT=4000\n"
        );
        let empty = pb::PrioritiesResponse { jobs: vec![], ..p };
        assert!(!render_weights(&empty).contains("SHORT"));
    }
}
