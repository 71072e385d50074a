//! Expands sbatch's `--output`/`--error` filename patterns once the job's node is known.
//!
//! Done in the state machine at allocation (deterministically, from the command's data) so
//! that `scontrol show job` and the agent agree on one path. Supported: `%j`/`%A` job id,
//! `%x` job name, `%u` user, `%N` first node, `%%` a literal `%`; other `%` sequences are
//! kept as written, as Slurm does for ones it does not know. A relative result is joined to
//! the job's working directory.

use berth_proto::v1::JobSpec;

/// The absolute path for `pattern` (or `default` when the pattern is empty).
pub fn resolve(spec: &JobSpec, job_id: u64, node: &str, pattern: &str, default: &str) -> String {
    let pattern = if pattern.is_empty() { default } else { pattern };
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j') | Some('A') => out.push_str(&job_id.to_string()),
            Some('x') => out.push_str(&spec.name),
            Some('u') => out.push_str(&spec.user),
            Some('N') => out.push_str(node),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    if out.starts_with('/') {
        out
    } else {
        format!("{}/{}", spec.work_dir.trim_end_matches('/'), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand() {
        let spec = JobSpec {
            name: "train".into(),
            user: "ana".into(),
            work_dir: "/home/ana/".into(),
            ..Default::default()
        };
        let cases = [
            ("", "/home/ana/slurm-42.out"),
            ("%x-%j.log", "/home/ana/train-42.log"),
            ("/scratch/%u/%N/%A.out", "/scratch/ana/node7/42.out"),
            ("100%%-%q", "/home/ana/100%-%q"),
            ("trail%", "/home/ana/trail%"),
        ];
        for (i, (pattern, want)) in cases.iter().enumerate() {
            let got = resolve(&spec, 42, "node7", pattern, "slurm-%j.out");
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
