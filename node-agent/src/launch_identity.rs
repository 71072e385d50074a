//! Who a launched job runs as. With the cluster key (a secure agent), only the identity
//! berthd proved and sealed onto the job: a launch without one, or whose seal does not
//! verify, is refused before anything is written or carved (see `berth_auth::seal`).
//! Without it (`--insecure`), the uid/gid the job claims, as before security existed.

use berth_auth::key::ClusterKey;
use berth_auth::seal::RunAs;
use berth_proto::v1 as pb;

/// The identity `spec` runs as on this agent.
///
/// # Errors
/// Why the launch is refused (missing identity, seal does not verify).
pub fn check(key: Option<&ClusterKey>, spec: &pb::JobSpec) -> Result<RunAs, String> {
    match key {
        Some(key) => berth_auth::seal::verify_batch(key, spec).map_err(|e| e.to_string()),
        None => Ok(RunAs {
            user: spec.user.clone(),
            uid: spec.uid,
            gid: spec.gid,
            gids: Vec::new(),
        }),
    }
}

/// Drops from `env` what `--export` may not set (berthd refuses those at submit; this is
/// the second line, for a launch that got here anyway).
pub fn scrub(env: &mut std::collections::BTreeMap<String, String>) {
    env.retain(|k, _| {
        let denied = berth_auth::env_policy::denied(k).is_some();
        if denied {
            tracing::warn!(
                var = k,
                "job environment variable dropped: not settable by a job"
            );
        }
        !denied
    });
}
