//! `--dependency=TYPE:ID[:ID...][,TYPE:ID...]`: conditions on other jobs that must hold
//! before a job may start.

use berth_proto::v1::DependencyCondition;

/// Dependency types berth evaluates (Slurm's meanings): `after` (each job started or was
/// cancelled), `afterany` (ended), `afterok` (completed, exit code 0), `afternotok` (ended
/// any other way).
pub const DEPENDENCY_KINDS: [&str; 4] = ["after", "afterany", "afterok", "afternotok"];

/// Most conditions one `--dependency` may carry.
pub const DEPENDENCIES_MAX: usize = 64;

/// Parses `--dependency`'s value: `TYPE:ID[:ID...][,TYPE:ID...]`, every condition
/// required (Slurm's `,`). Slurm's `?` (any of), `+TIME` delays, `singleton`,
/// `aftercorr` and `afterburstbuffer` are refused by name rather than misread.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_dependency(value: &str) -> Result<Vec<DependencyCondition>, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.contains('?') {
        return Err("'?' (any of the conditions) is not supported; use ',' (all)".into());
    }
    let mut out = Vec::new();
    for part in value.split(',') {
        let Some((kind, ids)) = part.split_once(':') else {
            return match part {
                "singleton" => Err("singleton is not supported by berth yet".into()),
                _ => Err(format!("{part:?} is not TYPE:JOBID[:JOBID...]")),
            };
        };
        if !DEPENDENCY_KINDS.contains(&kind) {
            return Err(format!(
                "dependency type {kind:?} is not supported (use {})",
                DEPENDENCY_KINDS.join(", ")
            ));
        }
        for id in ids.split(':') {
            if id.contains('+') {
                return Err(format!("{id:?}: +TIME delays are not supported"));
            }
            let job_id = id
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{id:?} is not a job id"))?;
            out.push(DependencyCondition {
                kind: kind.to_string(),
                job_id,
                array_task_id: None,
            });
        }
    }
    if out.len() > DEPENDENCIES_MAX {
        return Err(format!(
            "{} conditions, at most {DEPENDENCIES_MAX}",
            out.len()
        ));
    }
    Ok(out)
}
