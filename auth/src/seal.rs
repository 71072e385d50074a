//! Launch seals: at submit, berthd binds the identity it proved to what will run (script,
//! arguments, environment, directories, container) with one HMAC under the cluster key;
//! the agent recomputes it before starting anything and refuses a launch whose identity
//! is missing or whose seal does not verify. A forged launch (another uid, another
//! script, a changed `--export`) therefore never runs, even if it reaches the agent.
//!
//! Every kind of launch builds its [`LaunchParts`] (a tagged, length-prefixed list of the
//! fields that decide who runs what) and calls the one [`verify_launch`]. Batch jobs use
//! [`LaunchParts::batch`]; a step launch adds its own parts under its own kind.

use crate::key::{ClusterKey, DOMAIN_LAUNCH};
use crate::AuthError;
use berth_proto::v1 as pb;

/// The fields of one launch that the seal covers, in a canonical encoding.
#[derive(Debug, Clone)]
pub struct LaunchParts {
    buf: Vec<u8>,
}

impl LaunchParts {
    /// Empty parts of a launch of `kind` ("batch", "step"…): kinds never verify for each
    /// other.
    pub fn new(kind: &str) -> LaunchParts {
        let mut p = LaunchParts { buf: Vec::new() };
        p.push("kind", kind.as_bytes());
        p
    }

    /// Adds one named field.
    pub fn part(mut self, name: &str, value: &[u8]) -> LaunchParts {
        self.push(name, value);
        self
    }

    fn push(&mut self, name: &str, value: &[u8]) {
        for piece in [name.as_bytes(), value] {
            self.buf
                .extend_from_slice(&(piece.len() as u64).to_be_bytes());
            self.buf.extend_from_slice(piece);
        }
    }

    fn list(self, name: &str, values: &[String]) -> LaunchParts {
        let mut p = self.part(name, &(values.len() as u64).to_be_bytes());
        for v in values {
            p.push(name, v.as_bytes());
        }
        p
    }

    /// The parts of a batch job: its spec's identity fields, script, arguments,
    /// environment (sorted: the map is a BTreeMap), directories, output files and
    /// container request.
    pub fn batch(spec: &pb::JobSpec) -> LaunchParts {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let parts = LaunchParts::new("batch")
            .part("user", spec.user.as_bytes())
            .part("uid", &spec.uid.to_be_bytes())
            .part("gid", &spec.gid.to_be_bytes())
            .part("script", spec.script.as_bytes())
            .list("args", &spec.args)
            .list("env", &env)
            .part("export_all", &[spec.export_all as u8])
            .part("work_dir", spec.work_dir.as_bytes())
            .part("stdout", spec.stdout.as_bytes())
            .part("stderr", spec.stderr.as_bytes())
            .part("container_image", spec.container_image.as_bytes())
            .list("container_mounts", &spec.container_mounts)
            .part("container_workdir", spec.container_workdir.as_bytes())
            .list("container_env", &spec.container_env);
        // The bytes the agent runs when the script is not UTF-8 (sealed only then, so the
        // seals of every other job stay as they were).
        let parts = if spec.script_bytes.is_empty() {
            parts
        } else {
            parts.part("script_bytes", &spec.script_bytes)
        };
        // An allocation runs the agent's holder, not its (empty) script: sealed only then.
        if spec.allocation {
            parts.part("allocation", &[1])
        } else {
            parts
        }
    }

    fn with_identity(self, id: &pb::Identity) -> LaunchParts {
        let gids: Vec<String> = id.gids.iter().map(u32::to_string).collect();
        self.part("id.user", id.user.as_bytes())
            .part("id.uid", &id.uid.to_be_bytes())
            .part("id.gid", &id.gid.to_be_bytes())
            .list("id.gids", &gids)
            .part("id.method", id.method.as_bytes())
    }
}

/// The seal of `parts` run by `identity`.
pub fn seal(key: &ClusterKey, identity: &pb::Identity, parts: LaunchParts) -> Vec<u8> {
    key.sign(DOMAIN_LAUNCH, &parts.with_identity(identity).buf)
}

/// Who a verified launch runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User name (for logs and the environment).
    pub user: String,
    /// User id.
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub gids: Vec<u32>,
}

/// Checks a launch: an identity must be there and `seal` must be its seal over `parts`.
/// The one check every launch message calls before anything starts.
///
/// # Errors
/// [`AuthError::Launch`] naming what is missing or that the seal does not verify.
pub fn verify_launch(
    key: &ClusterKey,
    identity: Option<&pb::Identity>,
    parts: LaunchParts,
    seal: &[u8],
) -> Result<RunAs, AuthError> {
    let id = identity.ok_or_else(|| {
        AuthError::Launch("no proven identity on the job (submitted to an insecure berthd?)".into())
    })?;
    if seal.is_empty() {
        return Err(AuthError::Launch("the job carries no launch seal".into()));
    }
    if !key.verify(DOMAIN_LAUNCH, &parts.with_identity(id).buf, seal) {
        return Err(AuthError::Launch(
            "launch seal does not verify (identity or command altered, or another cluster key)"
                .into(),
        ));
    }
    Ok(RunAs {
        user: id.user.clone(),
        uid: id.uid,
        gid: id.gid,
        gids: id.gids.clone(),
    })
}

/// [`verify_launch`] for a batch job, also checking that the spec's uid/gid (what the
/// job's environment reports) are the identity's.
///
/// # Errors
/// As [`verify_launch`].
pub fn verify_batch(key: &ClusterKey, spec: &pb::JobSpec) -> Result<RunAs, AuthError> {
    let run = verify_launch(
        key,
        spec.identity.as_ref(),
        LaunchParts::batch(spec),
        &spec.launch_seal,
    )?;
    if run.uid != spec.uid || run.gid != spec.gid {
        return Err(AuthError::Launch(format!(
            "spec says uid {} gid {}, the proven identity is uid {} gid {}",
            spec.uid, spec.gid, run.uid, run.gid
        )));
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &ClusterKey) -> pb::JobSpec {
        let id = pb::Identity {
            user: "alice".into(),
            uid: 1000,
            gid: 100,
            gids: vec![27],
            method: "local".into(),
            ..Default::default()
        };
        let mut spec = pb::JobSpec {
            script: "#!/bin/sh\nid\n".into(),
            user: "alice".into(),
            uid: 1000,
            gid: 100,
            ..Default::default()
        };
        spec.env.insert("A".into(), "1".into());
        spec.launch_seal = seal(key, &id, LaunchParts::batch(&spec));
        spec.identity = Some(id);
        spec
    }

    #[test]
    fn a_sealed_batch_launch_verifies() {
        let key = ClusterKey::from_bytes(&[9; 32]);
        let run = verify_batch(&key, &sealed(&key)).unwrap();
        assert_eq!((run.uid, run.gid, run.gids), (1000, 100, vec![27]));
    }

    #[test]
    fn forged_launches_are_refused() {
        let key = ClusterKey::from_bytes(&[9; 32]);
        type Forge = fn(&mut pb::JobSpec);
        let forgeries: [(Forge, &str); 8] = [
            (|s| s.uid = 0, "does not verify"),
            (|s| s.identity.as_mut().unwrap().uid = 0, "does not verify"),
            (|s| s.script.push_str("rm -rf /\n"), "does not verify"),
            (
                |s| {
                    s.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
                },
                "does not verify",
            ),
            (
                |s| s.container_mounts.push("/etc:/x".into()),
                "does not verify",
            ),
            (|s| s.identity = None, "no proven identity"),
            (|s| s.launch_seal.clear(), "no launch seal"),
            (|s| s.launch_seal[0] ^= 1, "does not verify"),
        ];
        for (i, (forge, want)) in forgeries.into_iter().enumerate() {
            let mut spec = sealed(&key);
            forge(&mut spec);
            match verify_batch(&key, &spec) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
        let other = ClusterKey::from_bytes(&[10; 32]);
        assert!(verify_batch(&other, &sealed(&key)).is_err());
    }

    #[test]
    fn kinds_and_field_boundaries_never_collide() {
        let key = ClusterKey::from_bytes(&[9; 32]);
        let id = pb::Identity::default();
        let a = seal(&key, &id, LaunchParts::new("batch").part("x", b"ab"));
        let b = seal(&key, &id, LaunchParts::new("step").part("x", b"ab"));
        let c = seal(&key, &id, LaunchParts::new("batch").part("xa", b"b"));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
