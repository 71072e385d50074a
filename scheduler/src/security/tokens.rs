//! `berth token`: HS256 tokens berthd signs with its `jwt.key`, as Slurm's
//! `scontrol token`. A user gets a token for themselves; one for another user needs the
//! admin role. Tokens themselves are never logged.

use super::{Caller, Role, SecurityConfig};
use berth_proto::v1 as pb;
use tonic::Status;

/// Lifespan when the request names none (Slurm's default is 1800 s).
pub const LIFESPAN_SECS_DEFAULT: u64 = 1800;

/// Issues the token `r` asks for.
///
/// # Errors
/// `FAILED_PRECONDITION` without a JWT key, `PERMISSION_DENIED` for another user without
/// the admin role, `INVALID_ARGUMENT` for a bad lifespan or an unknown user.
pub fn issue(
    sec: &SecurityConfig,
    caller: &Caller,
    r: &pb::TokenRequest,
) -> Result<pb::TokenResponse, Status> {
    let key = sec.jwt.hs256.as_ref().ok_or_else(|| {
        Status::failed_precondition("this berthd has no jwt.key: it issues no tokens")
    })?;
    let user = if r.user.is_empty() {
        caller.identity.user.clone()
    } else {
        r.user.clone()
    };
    if user != caller.identity.user {
        caller.require(Role::Admin, &format!("a token for user {user:?}"))?;
        super::resolve_user(&user, "jwt", "")?;
    }
    let lifespan = if r.lifespan_secs == 0 {
        LIFESPAN_SECS_DEFAULT
    } else {
        r.lifespan_secs
    };
    let now = berth_auth::now_ms() / 1000;
    let token = berth_auth::jwt::issue_hs256(key, &user, lifespan, now)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    tracing::info!(user, by = caller.identity.user, lifespan, "token issued");
    Ok(pb::TokenResponse {
        token,
        expires_ms: (now + lifespan) * 1000,
    })
}
