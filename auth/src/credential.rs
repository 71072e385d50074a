//! The local credential: who a process on a cluster host is, signed by that host's
//! credential daemon with the cluster key (see [`crate::credd`]).
//!
//! Text form: `berth1.<payload>.<mac>`, both parts base64url without padding; the payload
//! is JSON ([`LocalCredential`]) and the MAC is HMAC-SHA256 with the cluster key over the
//! credential domain and the payload bytes. A credential lives [`TTL_MS_MAX`] at most and
//! is single-use: berthd remembers every nonce until its credential expires
//! ([`ReplayCache`]), so a credential copied out of a log or a core dump is worth nothing.

use crate::key::{ClusterKey, DOMAIN_CREDENTIAL};
use crate::AuthError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// Prefix of a local credential.
pub const PREFIX: &str = "berth1.";
/// Longest credential text accepted (a user in many groups fits easily).
pub const TEXT_BYTES_MAX: usize = 8192;
/// Longest lifetime a credential may claim.
pub const TTL_MS_MAX: u64 = 300_000;
/// Lifetime the credential daemon gives (munge's default is 300 s; calls are immediate).
pub const TTL_MS_DEFAULT: u64 = 60_000;
/// Clock difference tolerated between the issuing host and berthd.
pub const SKEW_MS: u64 = 30_000;

/// What a credential says: the caller's ids as the kernel reported them to the issuing
/// daemon, resolved to names on that host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalCredential {
    /// Format version, 1.
    pub v: u32,
    /// User id and name.
    pub uid: u32,
    /// User name on the issuing host (empty when it has none).
    pub user: String,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups (from the user database of the issuing host).
    pub gids: Vec<u32>,
    /// Host of the issuing daemon.
    pub host: String,
    /// Issue and expiry times, ms since the epoch.
    pub issued_ms: u64,
    /// Expiry.
    pub expires_ms: u64,
    /// 16 random bytes, hex: what makes each credential single-use.
    pub nonce: String,
}

impl LocalCredential {
    /// Signs `self` into its text form.
    pub fn sign(&self, key: &ClusterKey) -> String {
        let payload = serde_json::to_vec(self).expect("credential serializes");
        let mac = key.sign(DOMAIN_CREDENTIAL, &payload);
        format!("{PREFIX}{}.{}", B64.encode(&payload), B64.encode(mac))
    }
}

/// Parses and verifies `text` at `now_ms` (signature, then times). The nonce is *not*
/// consumed here: call [`ReplayCache::consume`] next.
///
/// # Errors
/// [`AuthError::Malformed`], [`AuthError::BadSignature`], [`AuthError::Expired`] or
/// [`AuthError::NotYetValid`].
pub fn verify(text: &str, key: &ClusterKey, now_ms: u64) -> Result<LocalCredential, AuthError> {
    let bad = |detail: &str| AuthError::Malformed {
        what: "credential",
        detail: detail.to_string(),
    };
    if text.len() > TEXT_BYTES_MAX {
        return Err(bad(&format!("longer than {TEXT_BYTES_MAX} bytes")));
    }
    let rest = text
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("not a berth credential (no berth1. prefix)"))?;
    let (payload, mac) = rest
        .split_once('.')
        .ok_or_else(|| bad("no signature part"))?;
    let payload = B64
        .decode(payload)
        .map_err(|e| bad(&format!("payload: {e}")))?;
    let mac = B64
        .decode(mac)
        .map_err(|e| bad(&format!("signature: {e}")))?;
    // The signature first: nothing in an unsigned payload is looked at.
    if !key.verify(DOMAIN_CREDENTIAL, &payload, &mac) {
        return Err(AuthError::BadSignature("credential"));
    }
    let cred: LocalCredential =
        serde_json::from_slice(&payload).map_err(|e| bad(&format!("payload: {e}")))?;
    check_fields(&cred).map_err(|d| bad(&d))?;
    if now_ms > cred.expires_ms {
        return Err(AuthError::Expired {
            what: "credential",
            ago_secs: (now_ms - cred.expires_ms) / 1000,
        });
    }
    if cred.issued_ms > now_ms + SKEW_MS {
        return Err(AuthError::NotYetValid("credential"));
    }
    Ok(cred)
}

fn check_fields(c: &LocalCredential) -> Result<(), String> {
    if c.v != 1 {
        return Err(format!("version {} (this berth reads 1)", c.v));
    }
    if c.expires_ms < c.issued_ms || c.expires_ms - c.issued_ms > TTL_MS_MAX {
        return Err(format!("lifetime must be 0..{} s", TTL_MS_MAX / 1000));
    }
    if c.nonce.len() != 32 || !c.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("nonce is not 16 hex bytes".into());
    }
    if c.gids.len() > 1024 {
        return Err("more than 1024 groups".into());
    }
    Ok(())
}

/// Nonces of credentials accepted and not yet expired. Bounded: when full, new
/// credentials are refused (fail closed) until old ones expire.
pub struct ReplayCache {
    seen: Mutex<HashMap<String, u64>>,
    cap: usize,
}

impl ReplayCache {
    /// A cache holding at most `cap` live nonces.
    pub fn new(cap: usize) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Accepts `cred`'s nonce once.
    ///
    /// # Errors
    /// [`AuthError::Replayed`] when it was seen before; [`AuthError::Malformed`] when the
    /// cache is full of live nonces.
    pub fn consume(&self, cred: &LocalCredential, now_ms: u64) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= self.cap {
            seen.retain(|_, exp| *exp >= now_ms);
            if seen.len() >= self.cap {
                return Err(AuthError::Malformed {
                    what: "credential",
                    detail: format!("replay cache full ({} live credentials); retry", self.cap),
                });
            }
        }
        if seen.contains_key(&cred.nonce) {
            return Err(AuthError::Replayed);
        }
        seen.insert(cred.nonce.clone(), cred.expires_ms);
        Ok(())
    }

    /// Live nonces held.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(now: u64) -> LocalCredential {
        LocalCredential {
            v: 1,
            uid: 1000,
            user: "alice".into(),
            gid: 1000,
            gids: vec![1000, 27],
            host: "login1".into(),
            issued_ms: now,
            expires_ms: now + TTL_MS_DEFAULT,
            nonce: crate::key::hex(&crate::key::random_bytes::<16>()),
        }
    }

    #[test]
    fn a_signed_credential_verifies_once() {
        let key = ClusterKey::from_bytes(&[1; 32]);
        let c = cred(1_000_000);
        let text = c.sign(&key);
        let got = verify(&text, &key, 1_000_500).unwrap();
        assert_eq!(got, c);
        let cache = ReplayCache::new(10);
        cache.consume(&got, 1_000_500).unwrap();
        assert!(matches!(
            cache.consume(&got, 1_000_600),
            Err(AuthError::Replayed)
        ));
    }

    #[test]
    fn forged_expired_and_malformed_credentials_are_refused() {
        let key = ClusterKey::from_bytes(&[1; 32]);
        let other = ClusterKey::from_bytes(&[2; 32]);
        let now = 10_000_000;
        let good = cred(now).sign(&key);
        let (head, _) = good.rsplit_once('.').unwrap();
        let mut root = cred(now);
        root.uid = 0;
        let forged_payload = {
            let p = B64.encode(serde_json::to_vec(&root).unwrap());
            let mac = good.rsplit_once('.').unwrap().1;
            format!("{PREFIX}{p}.{mac}")
        };
        let mut long = cred(now);
        long.expires_ms = now + TTL_MS_MAX + 1;
        let cases: Vec<(String, u64, &str)> = vec![
            (cred(now).sign(&other), now, "does not verify"),
            (forged_payload, now, "does not verify"),
            (format!("{head}.AAAA"), now, "does not verify"),
            (
                good.clone(),
                now + TTL_MS_DEFAULT + 5_000,
                "expired 5 s ago",
            ),
            (good.clone(), now - SKEW_MS - 1, "in the future"),
            (long.sign(&key), now, "lifetime"),
            ("munge:abc".into(), now, "no berth1. prefix"),
            (format!("{PREFIX}abc"), now, "no signature part"),
            (format!("{PREFIX}!!.AA"), now, "payload"),
            ("x".repeat(TEXT_BYTES_MAX + 1), now, "longer than"),
        ];
        for (i, (text, at, want)) in cases.into_iter().enumerate() {
            match verify(&text, &key, at) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want an error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_full_cache_fails_closed_then_recovers() {
        let cache = ReplayCache::new(2);
        let a = cred(0);
        let b = cred(0);
        let c = cred(0);
        cache.consume(&a, 0).unwrap();
        cache.consume(&b, 0).unwrap();
        assert!(cache.consume(&c, 1).is_err());
        // Once a and b expire, room is made.
        cache.consume(&c, TTL_MS_DEFAULT + 1).unwrap();
        assert_eq!(cache.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_never_verifies(s in ".{0,300}") {
            let key = ClusterKey::from_bytes(&[3; 32]);
            proptest::prop_assert!(verify(&s, &key, 0).is_err());
            let text = format!("{PREFIX}{s}");
            proptest::prop_assert!(verify(&text, &key, 0).is_err());
        }
    }
}
