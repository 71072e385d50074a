//! `--dependency=TYPE:ID[:ID...][,TYPE:ID...]`: conditions on other jobs that must hold
//! before a job may start. An id may name one task of an array (`afterok:12_3`); an
//! array's id names all of its tasks.

use berth_proto::v1::DependencyCondition;

/// Dependency types berth evaluates (Slurm's meanings): `after` (each job started or was
/// cancelled), `afterany` (ended), `afterok` (completed, exit code 0), `afternotok` (ended
/// any other way), `aftercorr` (each task of this array after the task with the same
/// index of the named array completed with exit code 0). `singleton` takes no ids.
pub const DEPENDENCY_KINDS: [&str; 5] = ["after", "afterany", "afterok", "afternotok", "aftercorr"];

/// Most conditions one `--dependency` may carry.
pub const DEPENDENCIES_MAX: usize = 64;

/// Parses `--dependency`'s value: `TYPE:ID[:ID...][,TYPE:ID...]`, every condition
/// required (Slurm's `,`), or `singleton` (no earlier job of the same name and user
/// pending or running). Slurm's `?` (any of), `+TIME` delays and `afterburstbuffer` are
/// refused by name rather than misread.
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
            if part == "singleton" {
                out.push(DependencyCondition {
                    kind: part.to_string(),
                    job_id: 0,
                    array_task_id: None,
                });
                continue;
            }
            return Err(format!("{part:?} is not TYPE:JOBID[:JOBID...]"));
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
            let (job, task) = match id.split_once('_') {
                Some((job, task)) => (job, Some(task)),
                None => (id, None),
            };
            let job_id = job
                .parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{id:?} is not a job id"))?;
            let array_task_id = match task {
                None => None,
                Some(t) => Some(
                    t.parse::<u32>()
                        .ok()
                        .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("{id:?}: the task must be one index (ID_N)"))?,
                ),
            };
            if kind == "aftercorr" && array_task_id.is_some() {
                return Err(format!("{id:?}: aftercorr names a whole array, not a task"));
            }
            out.push(DependencyCondition {
                kind: kind.to_string(),
                job_id,
                array_task_id,
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
