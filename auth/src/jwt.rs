//! JWTs for callers away from cluster hosts (a laptop, CI, the Kubernetes extender's
//! caller): HS256 tokens berthd issues itself (`berth token`, as Slurm's
//! `scontrol token`), and RS256/ES256 tokens from an identity provider whose public keys
//! come from a JWKS file or an OIDC issuer's discovery document.
//!
//! Claims map to a user and groups: the user from the first present of the configured
//! user claims (default `preferred_username`, then `sun` — Slurm's —, then `sub`), groups
//! from the groups claim (default `groups`: an array of strings, or one space-separated
//! string). `exp` is required; `iss` and `aud` are checked when configured.

use crate::AuthError;
use jsonwebtoken::{jwk::JwkSet, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

/// Longest token text accepted.
pub const TEXT_BYTES_MAX: usize = 16 << 10;
/// Longest lifespan `berth token` issues (Slurm's default limit is a day).
pub const LIFESPAN_SECS_MAX: u64 = 30 * 24 * 3600;
/// Issuer set on berth's own HS256 tokens.
pub const BERTH_ISSUER: &str = "berth";

/// How tokens are checked.
#[derive(Clone, Default)]
pub struct JwtConfig {
    /// HS256 key (berth's own tokens); `None`: HS256 tokens are refused.
    pub hs256: Option<Vec<u8>>,
    /// Public keys for RS256/ES256 (from a JWKS file or an OIDC issuer).
    pub jwks: Option<JwkSet>,
    /// Required `iss` of RS256/ES256 tokens (the OIDC issuer URL).
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Claims naming the user, first present wins; empty: the defaults.
    pub user_claims: Vec<String>,
    /// Claim listing groups; empty: `groups`.
    pub groups_claim: String,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256", &self.hs256.as_ref().map(|_| "<secret>"))
            .field("jwks_keys", &self.jwks.as_ref().map(|s| s.keys.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// User name.
    pub user: String,
    /// Group names.
    pub groups: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires_secs: u64,
    /// "HS256", "RS256", "ES256".
    pub alg: String,
}

/// An HS256 token for `user` valid `lifespan_secs` from `now_secs`.
///
/// # Errors
/// [`AuthError::Token`] for a lifespan of 0 or above [`LIFESPAN_SECS_MAX`].
pub fn issue_hs256(
    key: &[u8],
    user: &str,
    lifespan_secs: u64,
    now_secs: u64,
) -> Result<String, AuthError> {
    if lifespan_secs == 0 || lifespan_secs > LIFESPAN_SECS_MAX {
        return Err(AuthError::Token(format!(
            "lifespan must be 1..{LIFESPAN_SECS_MAX} s, got {lifespan_secs}"
        )));
    }
    let claims = serde_json::json!({
        "iss": BERTH_ISSUER,
        "sun": user,
        "sub": user,
        "iat": now_secs,
        "exp": now_secs + lifespan_secs,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| AuthError::Token(e.to_string()))
}

impl JwtConfig {
    /// Verifies `token` (signature, `exp` with 30 s leeway, `nbf`, issuer and audience).
    ///
    /// # Errors
    /// [`AuthError::Expired`], [`AuthError::BadSignature`], [`AuthError::Malformed`] or
    /// [`AuthError::Token`] naming the reason.
    pub fn verify(&self, token: &str) -> Result<TokenIdentity, AuthError> {
        if token.len() > TEXT_BYTES_MAX {
            return Err(malformed(format!("longer than {TEXT_BYTES_MAX} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(e.to_string()))?;
        let (key, mut validation) = match header.alg {
            Algorithm::HS256 => {
                let secret = self
                    .hs256
                    .as_ref()
                    .ok_or_else(|| AuthError::Token("HS256 tokens are not accepted here".into()))?;
                let mut v = Validation::new(Algorithm::HS256);
                v.set_issuer(&[BERTH_ISSUER]);
                (DecodingKey::from_secret(secret), v)
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let key = self.public_key(header.kid.as_deref())?;
                let mut v = Validation::new(alg);
                if let Some(iss) = &self.issuer {
                    v.set_issuer(&[iss]);
                }
                (key, v)
            }
            other => {
                return Err(AuthError::Token(format!(
                    "algorithm {other:?} not accepted"
                )))
            }
        };
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(token_error)?;
        self.identity(&data.claims, header.alg)
    }

    fn public_key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let set = self.jwks.as_ref().ok_or_else(|| {
            AuthError::Token("no JWKS/OIDC keys configured for RS256/ES256".into())
        })?;
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or_else(|| AuthError::Token(format!("no key with kid {kid:?} in the JWKS")))?;
        DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Token(format!("JWKS key: {e}")))
    }

    fn identity(
        &self,
        claims: &serde_json::Map<String, Value>,
        alg: Algorithm,
    ) -> Result<TokenIdentity, AuthError> {
        let defaults = ["preferred_username", "sun", "sub"].map(String::from);
        let names = if self.user_claims.is_empty() {
            &defaults[..]
        } else {
            &self.user_claims[..]
        };
        let user = names
            .iter()
            .find_map(|c| claims.get(c).and_then(Value::as_str))
            .filter(|u| valid_user(u))
            .ok_or_else(|| AuthError::Token(format!("no valid user name in claims {names:?}")))?
            .to_string();
        let gclaim = if self.groups_claim.is_empty() {
            "groups"
        } else {
            &self.groups_claim
        };
        let groups = match claims.get(gclaim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        };
        Ok(TokenIdentity {
            user,
            groups,
            expires_secs: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            alg: format!("{alg:?}"),
        })
    }
}

/// A user name berth accepts from a token: what a POSIX user database could hold.
fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

fn malformed(detail: String) -> AuthError {
    AuthError::Malformed {
        what: "token",
        detail,
    }
}

fn token_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired {
            what: "token",
            ago_secs: 0,
        },
        K::ImmatureSignature => AuthError::NotYetValid("token"),
        K::InvalidSignature => AuthError::BadSignature("token"),
        K::InvalidIssuer => AuthError::Token("wrong issuer".into()),
        K::InvalidAudience => AuthError::Token("wrong audience".into()),
        K::MissingRequiredClaim(c) => AuthError::Token(format!("missing claim {c}")),
        _ => malformed(e.to_string()),
    }
}

/// Reads a JWKS file.
///
/// # Errors
/// [`AuthError::File`] when unreadable or not a JWKS.
pub fn load_jwks(path: &std::path::Path) -> Result<JwkSet, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::file_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| crate::file_err(path, format!("not a JWKS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JwtConfig {
        JwtConfig {
            hs256: Some(vec![4; 32]),
            ..Default::default()
        }
    }

    #[test]
    fn an_issued_token_verifies_with_its_user() {
        let now = crate::now_ms() / 1000;
        let t = issue_hs256(&[4; 32], "alice", 600, now).unwrap();
        let id = cfg().verify(&t).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires_secs, now + 600);
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let now = crate::now_ms() / 1000;
        let other = issue_hs256(&[5; 32], "alice", 600, now).unwrap();
        let expired = issue_hs256(&[4; 32], "alice", 10, now - 3600).unwrap();
        let mut tampered = issue_hs256(&[4; 32], "alice", 600, now).unwrap();
        let mid = tampered.find('.').unwrap() + 3;
        tampered.replace_range(
            mid..mid + 1,
            if &tampered[mid..mid + 1] == "A" {
                "B"
            } else {
                "A"
            },
        );
        let bad_user = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "berth", "sub": "a b;rm", "exp": now + 60}),
            &EncodingKey::from_secret(&[4; 32]),
        )
        .unwrap();
        let foreign_iss = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "evil", "sub": "root", "exp": now + 60}),
            &EncodingKey::from_secret(&[4; 32]),
        )
        .unwrap();
        let cases = [
            (other, "does not verify"),
            (expired, "expired"),
            (tampered, ""),
            (bad_user, "no valid user name"),
            (foreign_iss, "wrong issuer"),
            ("abc".to_string(), "malformed token"),
            ("x".repeat(TEXT_BYTES_MAX + 1), "longer than"),
        ];
        for (i, (t, want)) in cases.into_iter().enumerate() {
            match cfg().verify(&t) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
        assert!(issue_hs256(&[4; 32], "a", 0, now).is_err());
        assert!(issue_hs256(&[4; 32], "a", LIFESPAN_SECS_MAX + 1, now).is_err());
        let no_hs = JwtConfig::default();
        let t = issue_hs256(&[4; 32], "alice", 600, now).unwrap();
        assert!(no_hs
            .verify(&t)
            .unwrap_err()
            .to_string()
            .contains("not accepted"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            proptest::prop_assert!(cfg().verify(&s).is_err());
        }
    }
}
