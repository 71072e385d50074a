//! JWTs for callers away from cluster hosts (a laptop, CI, the Kubernetes extender's
//! caller): HS256 tokens berthd issues itself (`berth token`, as Slurm's
//! `scontrol token`), and RS256/ES256 tokens from an identity provider whose public keys
//! come from a JWKS file or an OIDC issuer's discovery document.
//!
//! Claims map to a user and groups: the user from the first present of the configured
//! user claims (default `preferred_username`, then `sun` — Slurm's —, then `sub`), groups
//! from the groups claim (default `groups`: an array of strings, or one space-separated
//! string; a dotted name such as `realm_access.roles` reaches into objects). `exp` is required; `iss` and `aud` are checked when configured.

use crate::AuthError;
use jsonwebtoken::{
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde_json::Value;

/// The algorithms of [`TokenIdentity::alg`] and of forged headers in tests.
pub use jsonwebtoken::Algorithm as TokenAlgorithm;
use std::sync::{Arc, RwLock};

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
    pub jwks: Option<SharedJwks>,
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
            .field("jwks_keys", &self.jwks.as_ref().map(|s| s.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A JWKS that an OIDC refresher replaces while requests read it. Cheap to clone.
#[derive(Clone)]
pub struct SharedJwks(Arc<RwLock<JwkSet>>);

impl Default for SharedJwks {
    /// Holding no key yet (an OIDC issuer before its first fetch).
    fn default() -> SharedJwks {
        SharedJwks::new(JwkSet { keys: Vec::new() })
    }
}

impl SharedJwks {
    /// Holding `set`.
    pub fn new(set: JwkSet) -> SharedJwks {
        SharedJwks(Arc::new(RwLock::new(set)))
    }

    /// Takes `set` for the next verification (key rotation at the issuer).
    pub fn replace(&self, set: JwkSet) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).keys.len()
    }

    /// Whether it holds none (an OIDC issuer not fetched yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key named `kid`, or the only key when the token names none.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<Jwk> {
        let set = self.0.read().unwrap_or_else(|e| e.into_inner());
        match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        }
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
        if set.is_empty() {
            return Err(AuthError::Token(
                "the OIDC issuer's keys are not fetched yet (berthd retries; see its log)".into(),
            ));
        }
        let jwk = set.find(kid).ok_or_else(|| {
            AuthError::Token(format!(
                "no key with kid {kid:?} in the JWKS (signed with a key the issuer no longer publishes?)"
            ))
        })?;
        DecodingKey::from_jwk(&jwk).map_err(|e| AuthError::Token(format!("JWKS key: {e}")))
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
        // A dotted name walks into objects (Keycloak's `realm_access.roles`); Keycloak's
        // full-path groups (`/gpu-users`) lose their leading slash so `@gpu-users` matches.
        let mut at = gclaim.split('.');
        let first = at.next().and_then(|k| claims.get(k));
        let found = at.fold(first, |v, k| v.and_then(|v| v.get(k)));
        let groups = match found {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .map(|g| g.trim_start_matches('/').to_string())
        .filter(|g| !g.is_empty())
        .collect();
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
pub(crate) mod tests {
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

    use crate::test_idp::{unsigned, TestKey};

    const ISS: &str = "https://sso.example/realms/hpc";

    fn idp(keys: &[&TestKey]) -> JwtConfig {
        let set: JwkSet = serde_json::from_str(&crate::test_idp::jwks(keys)).unwrap();
        JwtConfig {
            jwks: Some(SharedJwks::new(set)),
            issuer: Some(ISS.into()),
            audience: Some("berth".into()),
            groups_claim: "groups".into(),
            ..Default::default()
        }
    }

    /// What a Keycloak access token carries (with a group-membership mapper).
    fn keycloak(secs: i64) -> Value {
        let now = (crate::now_ms() / 1000) as i64;
        serde_json::json!({
            "iss": ISS,
            "aud": ["berth", "account"],
            "sub": "f3a1c2d4-0000-4000-8000-000000000001",
            "preferred_username": "alice",
            "groups": ["/gpu-users", "/org/ml"],
            "realm_access": {"roles": ["offline_access", "hpc-operator"]},
            "exp": now + secs,
        })
    }

    #[test]
    fn rs256_and_es256_tokens_map_keycloak_claims_to_a_user_and_groups() {
        let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
        let cfg = idp(&[&rsa, &ec]);
        for k in [&rsa, &ec] {
            let id = cfg.verify(&k.sign(&keycloak(300))).unwrap();
            assert_eq!(id.user, "alice", "{:?}", k.alg);
            assert_eq!(id.groups, vec!["gpu-users", "org/ml"], "{:?}", k.alg);
            assert_eq!(id.alg, format!("{:?}", k.alg));
        }
        // Roles from a nested claim, the user from the first present configured claim.
        let cfg = JwtConfig {
            groups_claim: "realm_access.roles".into(),
            user_claims: vec!["email".into(), "sub".into()],
            ..cfg
        };
        let id = cfg.verify(&ec.sign(&keycloak(300))).unwrap();
        assert_eq!(id.groups, vec!["offline_access", "hpc-operator"]);
        assert_eq!(id.user, "f3a1c2d4-0000-4000-8000-000000000001");
        // Groups as one space-separated string; none when the claim is absent.
        let mut c = keycloak(300);
        c["groups"] = "a b".into();
        assert_eq!(
            idp(&[&rsa]).verify(&rsa.sign(&c)).unwrap().groups,
            vec!["a", "b"]
        );
        c.as_object_mut().unwrap().remove("groups");
        assert!(idp(&[&rsa])
            .verify(&rsa.sign(&c))
            .unwrap()
            .groups
            .is_empty());
    }

    #[test]
    fn bad_identity_provider_tokens_are_refused_with_the_reason() {
        let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
        // A key the issuer no longer publishes (rotated out), signing under its own kid and
        // under a published one.
        let retired = TestKey::rsa("rsa-old");
        let cfg = idp(&[&rsa, &ec]);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = keycloak(300);
            f(&mut c);
            c
        };
        let good = keycloak(300);
        let mut parts: Vec<String> = rsa.sign(&good).split('.').map(String::from).collect();
        parts[1] = parts[1].chars().rev().collect(); // tampered payload, signature kept
        let tampered = parts.join(".");
        let cases = [
            (rsa.sign(&keycloak(-3600)), "expired"),
            (
                rsa.sign(&with(&|c| c["aud"] = "other-client".into())),
                "wrong audience",
            ),
            (
                rsa.sign(&with(&|c| c["iss"] = "https://evil.example".into())),
                "wrong issuer",
            ),
            (
                rsa.sign(&with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                })),
                "missing claim exp",
            ),
            (retired.sign(&good), "no key with kid Some(\"rsa-old\")"),
            (
                retired.sign_as(Some("rsa-1"), Algorithm::RS256, &good),
                "does not verify",
            ),
            // An EC signature presented under the RSA key's kid (algorithm confusion).
            (ec.sign_as(Some("rsa-1"), Algorithm::ES256, &good), "token"),
            // An algorithm berth does not accept (only HS256, RS256, ES256 are).
            (
                rsa.sign_as(Some("rsa-1"), Algorithm::RS384, &good),
                "not accepted",
            ),
            // Two keys and no kid: which one is not guessed.
            (
                rsa.sign_as(None, Algorithm::RS256, &good),
                "no key with kid None",
            ),
            (unsigned(&good), "malformed"),
            (tampered, "token"),
            ("not.a.token".to_string(), "malformed"),
            (String::new(), "malformed"),
        ];
        for (i, (t, want)) in cases.into_iter().enumerate() {
            match cfg.verify(&t) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
        // The same tokens without an issuer or audience configured: only those checks go.
        let lax = JwtConfig {
            issuer: None,
            audience: None,
            ..idp(&[&rsa])
        };
        assert!(lax
            .verify(&rsa.sign(&with(&|c| c["iss"] = "https://evil.example".into())))
            .is_ok());
        assert!(lax.verify(&rsa.sign(&keycloak(-3600))).is_err());
        // No keys configured, and keys not fetched yet.
        let t = rsa.sign(&good);
        let none = JwtConfig::default().verify(&t).unwrap_err().to_string();
        assert!(none.contains("no JWKS/OIDC keys configured"), "{none}");
        let empty = JwtConfig {
            jwks: Some(SharedJwks::default()),
            ..idp(&[])
        };
        let e = empty.verify(&t).unwrap_err().to_string();
        assert!(e.contains("not fetched yet"), "{e}");
        // After a refresh that brings the key, the same token verifies.
        let set: JwkSet = serde_json::from_str(&crate::test_idp::jwks(&[&rsa])).unwrap();
        empty.jwks.as_ref().unwrap().replace(set);
        assert_eq!(empty.verify(&t).unwrap().user, "alice");
    }

    #[test]
    fn malformed_jwks_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (text, want)) in [
            ("", "not a JWKS"),
            ("{\"keys\": 3}", "not a JWKS"),
            ("{\"keys\": [{\"kty\": \"RSA\"}]}", "not a JWKS"),
            ("{\"keys\": []}", "no RSA or EC key"),
            (
                "{\"keys\": [{\"kty\": \"oct\", \"k\": \"AAAA\"}]}",
                "no RSA or EC key",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let p = dir.path().join(format!("{i}.json"));
            std::fs::write(&p, text).unwrap();
            match crate::oidc::load_jwks_file(&p) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
        assert!(crate::oidc::load_jwks_file(&dir.path().join("missing")).is_err());
        // A good file loads, and verifies what its key signed.
        let k = TestKey::ec("ec-1");
        let p = dir.path().join("good.json");
        std::fs::write(&p, crate::test_idp::jwks(&[&k])).unwrap();
        let cfg = JwtConfig {
            jwks: Some(SharedJwks::new(crate::oidc::load_jwks_file(&p).unwrap())),
            ..Default::default()
        };
        assert_eq!(cfg.verify(&k.sign(&keycloak(60))).unwrap().user, "alice");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            proptest::prop_assert!(cfg().verify(&s).is_err());
        }
    }
}
