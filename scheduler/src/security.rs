//! Who is calling berthd, proven, and what they may do.
//!
//! Every gRPC request passes [`layer::SecurityLayer`] first. It proves the caller — a
//! certificate from the cluster CA (agents, replicas, services), a local credential from
//! a credential daemon (`authorization: Berth …`), a JWT (`authorization: Bearer …`), or
//! an identity forwarded by another replica — applies the per-client rate limit and the
//! per-method role, hands the handlers a [`Caller`], and writes the audit line.
//! Handlers make the object-level checks (whose job, which account) with [`Caller`]'s
//! methods and seal the proven identity onto submitted jobs ([`stamp_submit`]).
//!
//! Without a [`SecurityConfig`] (`berthd --insecure`) nobody is proven: callers are
//! whoever their requests claim, with every right. Binaries only run that way when told.

pub mod host_users;
pub mod layer;
pub mod tokens;

use crate::rate_limit::RateLimiter;
use berth_auth::credential::ReplayCache;
use berth_auth::jwt::JwtConfig;
use berth_auth::key::ClusterKey;
use berth_auth::profile::Profile;
use berth_auth::tls::ReloadingTls;
use berth_proto::v1 as pb;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use tonic::Status;

/// Roles, lowest first (Slurm's AdminLevel plus the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Acts on their own jobs.
    User,
    /// Also on nodes, GPUs and reservations (and any job).
    Operator,
    /// Also on accounts, configuration and Raft membership.
    Admin,
}

impl Role {
    /// Its name in messages and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// What kind of peer made the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A user (credential, token, or user certificate).
    User,
    /// An agent holding the certificate of this node.
    Node(String),
    /// A berthd replica.
    Replica(u64),
    /// A service certificate (e.g. kube-scheduler).
    Service(String),
    /// Nobody is proven: an insecure berthd.
    Unproven,
}

/// The proven caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub identity: pb::Identity,
    /// As what.
    pub peer: Peer,
    /// With which role.
    pub role: Role,
}

impl Caller {
    /// The caller of an insecure berthd: anyone, with every right.
    pub fn unproven(from: &str) -> Caller {
        Caller {
            identity: pb::Identity {
                method: "insecure".into(),
                from: from.into(),
                ..Default::default()
            },
            peer: Peer::Unproven,
            role: Role::Admin,
        }
    }

    /// The caller recorded by the layer on `req` (an in-process call that bypassed the
    /// layer is unproven: only the insecure daemon and trusted in-process code do that).
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::unproven("in-process"))
    }

    /// Whether security is off for this call.
    pub fn is_unproven(&self) -> bool {
        self.peer == Peer::Unproven
    }

    /// Refuses unless the caller has at least `need`; the message names the role needed.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`.
    pub fn require(&self, need: Role, what: &str) -> Result<(), Status> {
        if self.role >= need {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "Access/permission denied: {what} needs role {} (you are {:?}, role {})",
            need.name(),
            self.identity.user,
            self.role.name()
        )))
    }

    /// Whether the caller may act on `job`: its owner, a coordinator of its account, an
    /// operator or an admin.
    pub fn may_act_on(&self, job: &pb::Job, accounts: &crate::accounts::AccountsConfig) -> bool {
        if self.role >= Role::Operator {
            return true;
        }
        let owner = job.spec.as_ref().map(owner).unwrap_or_default();
        (!self.identity.user.is_empty() && owner == self.identity.user)
            || accounts
                .access
                .coordinates(&self.identity.user, &job.account)
    }

    /// Refuses unless [`Caller::may_act_on`]; the message names who may.
    ///
    /// # Errors
    /// `PERMISSION_DENIED`.
    pub fn require_job(
        &self,
        job: &pb::Job,
        accounts: &crate::accounts::AccountsConfig,
        verb: &str,
    ) -> Result<(), Status> {
        if self.may_act_on(job, accounts) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "Access/permission denied: {verb} job {} needs its owner ({}), a coordinator of \
             account {:?}, or role operator (you are {:?}, role {})",
            job.id,
            job.spec.as_ref().map(owner).unwrap_or_default(),
            job.account,
            self.identity.user,
            self.role.name()
        )))
    }
}

/// The user a job belongs to: its proven identity, else (insecure) its claimed user.
pub fn owner(spec: &pb::JobSpec) -> String {
    match &spec.identity {
        Some(id) => id.user.clone(),
        None => spec.user.clone(),
    }
}

/// `auth.toml` in the security directory: roles, tokens, limits. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    /// Admins: user names, or `@group`. Root (uid 0, proven locally) always is one.
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    operators: Vec<String>,
    /// Slurm's `PrivateData`: `jobs` (other users' jobs hidden from listings and sacct),
    /// `usage` (from sreport and `berth report usage`).
    #[serde(default)]
    private_data: Vec<String>,
    #[serde(default)]
    requests_per_sec: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    jwt: JwtFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    /// JWKS file with the identity provider's public keys (RS256/ES256).
    jwks: Option<std::path::PathBuf>,
    /// Required `iss` of RS256/ES256 tokens.
    issuer: Option<String>,
    /// An OIDC issuer whose keys are fetched (its discovery document's `jwks_uri`);
    /// also the required `iss`. Not with `jwks`.
    oidc_issuer: Option<String>,
    /// CA certificate(s) to trust for the OIDC issuer's HTTPS (default: the system's).
    oidc_ca: Option<std::path::PathBuf>,
    /// Shortest time between two fetches of the issuer's keys (default 10).
    oidc_refetch_secs: Option<u64>,
    audience: Option<String>,
    #[serde(default)]
    user_claims: Vec<String>,
    #[serde(default)]
    groups_claim: String,
}

/// Requests per second per client unless `auth.toml` says otherwise.
pub const RATE_PER_SEC_DEFAULT: u32 = 2000;

/// Why the security configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file is missing or bad.
    #[error(transparent)]
    Auth(#[from] berth_auth::AuthError),
    /// `auth.toml` does not parse.
    #[error("{path}: {detail}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
}

/// A secure replica's keys, certificates and policy.
pub struct SecurityConfig {
    /// Signs launch seals and verifies local credentials.
    pub key: Arc<ClusterKey>,
    /// The server certificate (reloaded when its files change).
    pub tls: Arc<ReloadingTls>,
    /// How this replica connects to its peers (CA + its own certificate).
    pub peer_profile: Profile,
    /// How tokens are checked (and the HS256 key `berth token` signs with).
    pub jwt: JwtConfig,
    /// The OIDC issuer's cached keys (`jwt.oidc_issuer`), fetched as tokens need them.
    pub oidc: Option<Arc<berth_auth::oidc::OidcKeys>>,
    admins: Vec<String>,
    operators: Vec<String>,
    /// Single-use local credentials seen.
    pub replay: ReplayCache,
    /// Per-client request rate.
    pub limits: RateLimiter,
    /// What users see of others (`private_data` in `auth.toml`).
    pub private: PrivateData,
}

/// Slurm's `PrivateData` for the two kinds berth keeps: a user (not an operator or admin)
/// sees only their own jobs and records, and those of accounts they coordinate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivateData {
    /// `jobs`: squeue, scontrol show job, watches and sacct.
    pub jobs: bool,
    /// `usage`: sreport and `berth report usage`.
    pub usage: bool,
}

impl PrivateData {
    /// Reads `private_data = ["jobs", "usage"]`.
    ///
    /// # Errors
    /// A kind berth does not keep, named.
    pub fn parse(kinds: &[String]) -> Result<PrivateData, String> {
        let mut p = PrivateData::default();
        for k in kinds {
            match k.to_ascii_lowercase().as_str() {
                "jobs" => p.jobs = true,
                "usage" => p.usage = true,
                other => {
                    return Err(format!(
                        "private_data {other:?}: berth keeps \"jobs\" and \"usage\" private"
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Whether `caller` sees a record of `user` in `account` under this setting for kind
    /// `private` (one of this struct's fields).
    pub fn shows(
        private: bool,
        caller: &Caller,
        user: &str,
        account: &str,
        accounts: &crate::accounts::AccountsConfig,
    ) -> bool {
        !private
            || caller.role >= Role::Operator
            || (!caller.identity.user.is_empty() && caller.identity.user == user)
            || accounts.access.coordinates(&caller.identity.user, account)
    }
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("jwt", &self.jwt)
            .field("admins", &self.admins)
            .field("operators", &self.operators)
            .finish_non_exhaustive()
    }
}

impl SecurityConfig {
    /// Loads a replica's directory as `berth admin ca issue --replica` writes it
    /// (`ca.pem`, `tls.pem`, `tls.key`, `cluster.key`, optional `jwt.key`, `auth.toml`).
    ///
    /// # Errors
    /// [`SecurityError`] naming the file.
    pub fn load(dir: &Path) -> Result<SecurityConfig, SecurityError> {
        use berth_auth::ca;
        let key = Arc::new(ClusterKey::load(&dir.join(ca::CLUSTER_KEY))?);
        let files = berth_auth::tls::TlsFiles::in_dir(dir);
        let tls = ReloadingTls::new(files.clone())?;
        let path = dir.join("auth.toml");
        let file: AuthFile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| SecurityError::Config {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?,
            Err(_) => AuthFile::default(),
        };
        let jwt_key = dir.join(ca::JWT_KEY);
        let mut jwt = JwtConfig {
            hs256: match jwt_key.exists() {
                true => Some(berth_auth::key::read_secret(&jwt_key)?),
                false => None,
            },
            issuer: file.jwt.issuer,
            audience: file.jwt.audience,
            user_claims: file.jwt.user_claims,
            groups_claim: file.jwt.groups_claim,
            ..Default::default()
        };
        let config_err = |detail: String| SecurityError::Config {
            path: path.display().to_string(),
            detail,
        };
        let mut oidc = None;
        if file.jwt.oidc_ca.is_some() && file.jwt.oidc_issuer.is_none() {
            return Err(config_err("jwt.oidc_ca without jwt.oidc_issuer".into()));
        }
        match (&file.jwt.jwks, file.jwt.oidc_issuer) {
            (Some(_), Some(_)) => {
                return Err(config_err(
                    "jwt.jwks and jwt.oidc_issuer both set: keys come from one of them".into(),
                ))
            }
            (Some(p), None) => {
                jwt.jwks = Some(berth_auth::jwt::SharedJwks::new(
                    berth_auth::oidc::load_jwks_file(p)?,
                ));
            }
            (None, Some(issuer)) => {
                if !issuer.starts_with("https://") && !issuer.starts_with("http://") {
                    return Err(config_err(format!(
                        "jwt.oidc_issuer {issuer:?} is not an https:// URL"
                    )));
                }
                match &jwt.issuer {
                    Some(iss) if *iss != issuer => {
                        return Err(config_err(format!(
                            "jwt.issuer {iss:?} differs from jwt.oidc_issuer {issuer:?} \
                             (tokens carry the OIDC issuer in iss; leave jwt.issuer out)"
                        )))
                    }
                    _ => jwt.issuer = Some(issuer.clone()),
                }
                let mut keys = berth_auth::oidc::OidcKeys::new(berth_auth::oidc::OidcIssuer {
                    issuer,
                    ca: file.jwt.oidc_ca,
                });
                if let Some(s) = file.jwt.oidc_refetch_secs {
                    keys.refetch_min = std::time::Duration::from_secs(s);
                }
                jwt.jwks = Some(keys.jwks());
                oidc = Some(Arc::new(keys));
            }
            (None, None) => {}
        }
        let rate = file.requests_per_sec.unwrap_or(RATE_PER_SEC_DEFAULT);
        let private = PrivateData::parse(&file.private_data).map_err(config_err)?;
        Ok(SecurityConfig {
            private,
            key,
            tls,
            peer_profile: Profile {
                ca: Some(files.ca),
                cert: Some(files.cert),
                key: Some(files.key),
                ..Default::default()
            },
            jwt,
            oidc,
            admins: file.admins,
            operators: file.operators,
            replay: ReplayCache::new(1 << 20),
            limits: RateLimiter::new(rate, file.burst.unwrap_or(rate.saturating_mul(2))),
        })
    }

    /// The role of a proven user.
    pub fn role_of(&self, id: &pb::Identity) -> Role {
        if id.uid == 0 && id.method == "local" {
            return Role::Admin; // root on a cluster host, as Slurm's root
        }
        let listed = |list: &[String]| {
            list.iter().any(|e| match e.strip_prefix('@') {
                Some(g) => id.groups.iter().any(|n| n == g),
                None => *e == id.user,
            })
        };
        if listed(&self.admins) {
            Role::Admin
        } else if listed(&self.operators) {
            Role::Operator
        } else {
            Role::User
        }
    }
}

/// Group names of `gids` on this host (for `@group` role entries).
pub fn group_names(gid: u32, gids: &[u32]) -> Vec<String> {
    std::iter::once(gid)
        .chain(gids.iter().copied())
        .filter_map(host_users::group_name)
        .collect()
}

/// Stamps a submit with the caller's proven identity and seals it. The spec's claimed
/// user, if any, must be the caller, unless the caller is an admin submitting on behalf
/// of that user (Slurm's `sbatch --uid`, root only there); the account must be one the
/// user may submit to. Without an accounts file (`enforced` false) an account berth does
/// not know is taken as named, as the state machine takes it (Slurm without accounting
/// enforcement).
///
/// # Errors
/// `PERMISSION_DENIED` naming the rule; `INVALID_ARGUMENT` for an unknown user.
pub fn stamp_submit(
    sec: &SecurityConfig,
    caller: &Caller,
    accounts: &crate::accounts::AccountsConfig,
    enforced: bool,
    spec: &mut pb::JobSpec,
) -> Result<(), Status> {
    if caller.peer != Peer::User && caller.role < Role::Admin {
        return Err(Status::permission_denied(
            "Access/permission denied: only users submit jobs",
        ));
    }
    // The claimed user only matters for an admin submitting on behalf of someone (the CLI
    // claims the local user, which a credential proves anyway); anyone else's claim is
    // replaced by what was proven.
    let mut id = caller.identity.clone();
    if !spec.user.is_empty() && spec.user != id.user && caller.role >= Role::Admin {
        id = resolve_user(&spec.user, &format!("as-admin:{}", id.user), &id.from)?;
    }
    let account = match accounts.resolve_account(&spec.account, &id.user) {
        Ok(a) => a,
        Err(_) if !enforced && !spec.account.is_empty() => spec.account.clone(),
        Err(why) => return Err(Status::invalid_argument(why)),
    };
    if caller.role < Role::Admin && !accounts.access.may_submit(&id.user, &account) {
        let mine = accounts.access.memberships(&id.user);
        return Err(Status::permission_denied(format!(
            "Invalid account or account/partition combination specified: user {:?} may not \
             submit to account {account:?}: it needs membership of it or role admin (member of: \
             {mine:?}; coordinators and admins add members)",
            id.user
        )));
    }
    spec.user = id.user.clone();
    spec.uid = id.uid;
    spec.gid = id.gid;
    spec.launch_seal =
        berth_auth::seal::seal(&sec.key, &id, berth_auth::seal::LaunchParts::batch(spec));
    spec.identity = Some(id);
    Ok(())
}

/// Refuses a submit whose environment sets a variable `--export` may not set (secure or
/// not: it protects the node, not the caller).
///
/// # Errors
/// `INVALID_ARGUMENT` naming the variable and why.
pub fn check_env(spec: &pb::JobSpec) -> Result<(), Status> {
    match berth_auth::env_policy::first_denied(spec.env.keys()) {
        Some((name, why)) => Err(Status::invalid_argument(format!(
            "--export: {name} may not be set: {why}"
        ))),
        None => Ok(()),
    }
}

/// The identity of user `name` from this host's user database.
///
/// # Errors
/// `INVALID_ARGUMENT` when there is no such user.
pub fn resolve_user(name: &str, method: &str, from: &str) -> Result<pb::Identity, Status> {
    let u = host_users::user(name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "user {name:?} has no account on this berthd host (getpwnam); \
             jobs run under a uid, so the user must exist"
        ))
    })?;
    Ok(pb::Identity {
        user: name.into(),
        uid: u.uid,
        gid: u.gid,
        groups: group_names(u.gid, &u.gids),
        gids: u.gids,
        method: method.into(),
        from: from.into(),
    })
}

/// What a caller who may not see `job`'s secrets gets: no script, arguments,
/// environment or seal (Slurm shows other users' jobs but not their scripts or env).
pub fn redact(job: &mut pb::Job) {
    if let Some(s) = job.spec.as_mut() {
        s.script.clear();
        s.script_bytes.clear();
        s.args.clear();
        s.env.clear();
        s.container_env.clear();
        s.launch_seal.clear();
    }
    // A step's I/O key lets whoever holds it stream into (and end) that srun.
    for step in &mut job.steps {
        if let Some(s) = step.spec.as_mut() {
            s.env.clear();
            s.io_key.clear();
        }
    }
}

/// Notes what a request was about, for its audit line.
pub fn note<T>(req: &tonic::Request<T>, what: impl Into<String>) {
    if let Some(slot) = req.extensions().get::<layer::AuditNote>() {
        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = what.into();
    }
}

/// The security a daemon starts with: `dir`'s configuration, or none when `insecure`
/// (with a loud warning). A daemon with neither refuses to start: insecure is never
/// the default.
///
/// # Errors
/// A message naming the missing files and both ways out.
pub fn startup(dir: &Path, insecure: bool) -> anyhow::Result<Option<Arc<SecurityConfig>>> {
    if insecure {
        for _ in 0..3 {
            tracing::warn!(
                "INSECURE: --insecure given: no TLS, no proof of identity; anyone who can \
                 reach this port can run jobs as any user, root included"
            );
        }
        return Ok(None);
    }
    if !dir.join(berth_auth::ca::CERT).exists() {
        anyhow::bail!(
            "no security configuration in {}: create one with `berth admin ca init CA_DIR` \
             and `berth admin ca issue --ca CA_DIR --replica ID --out {}` (or pass \
             --security-dir DIR), or run with --insecure for a throwaway test",
            dir.display(),
            dir.display()
        );
    }
    let sec = SecurityConfig::load(dir)
        .map_err(|e| anyhow::anyhow!("security configuration {}: {e}", dir.display()))?;
    tracing::info!("security on: TLS and proven callers ({})", dir.display());
    Ok(Some(Arc::new(sec)))
}

#[cfg(test)]
mod tests {
    use super::PrivateData;

    #[test]
    fn private_data_takes_slurms_jobs_and_usage_and_names_anything_else() {
        let kinds = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            PrivateData::parse(&kinds(&["jobs", "Usage"])),
            Ok(PrivateData {
                jobs: true,
                usage: true
            })
        );
        assert_eq!(PrivateData::parse(&[]), Ok(PrivateData::default()));
        let err = PrivateData::parse(&kinds(&["jobs", "nodes"])).unwrap_err();
        assert!(err.contains("\"nodes\""), "{err}");
    }
}
