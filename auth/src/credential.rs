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
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
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
///
/// Expired nonces leave in expiry order on every call (a heap keyed by expiry), so a call
/// costs O(log n) however full the cache is: a full cache under a flood of credentials
/// must not make each refusal scan a million entries under the lock.
pub struct ReplayCache {
    seen: Mutex<Seen>,
    cap: usize,
}

#[derive(Default)]
struct Seen {
    /// Live nonces (the 16 random bytes the hex names).
    live: HashSet<u128>,
    /// The same nonces, soonest expiry first.
    by_expiry: BinaryHeap<Reverse<(u64, u128)>>,
}

impl Seen {
    /// Forgets every nonce whose credential expired before `now_ms`.
    fn prune(&mut self, now_ms: u64) {
        while let Some(Reverse((exp, nonce))) = self.by_expiry.peek().copied() {
            if exp >= now_ms {
                break;
            }
            self.by_expiry.pop();
            self.live.remove(&nonce);
        }
    }
}

impl ReplayCache {
    /// A cache holding at most `cap` live nonces.
    pub fn new(cap: usize) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(Seen::default()),
            cap,
        }
    }

    /// Accepts `cred`'s nonce once.
    ///
    /// # Errors
    /// [`AuthError::Replayed`] when it was seen before; [`AuthError::Malformed`] when the
    /// nonce is not 16 hex bytes or the cache is full of live nonces.
    pub fn consume(&self, cred: &LocalCredential, now_ms: u64) -> Result<(), AuthError> {
        let nonce = u128::from_str_radix(&cred.nonce, 16)
            .ok()
            .filter(|_| cred.nonce.len() == 32)
            .ok_or_else(|| AuthError::Malformed {
                what: "credential",
                detail: "nonce is not 16 hex bytes".into(),
            })?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.prune(now_ms);
        if seen.live.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if seen.live.len() >= self.cap {
            return Err(AuthError::Malformed {
                what: "credential",
                detail: format!("replay cache full ({} live credentials); retry", self.cap),
            });
        }
        seen.live.insert(nonce);
        seen.by_expiry.push(Reverse((cred.expires_ms, nonce)));
        Ok(())
    }

    /// Live nonces held (as of the last call).
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .len()
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

    #[test]
    fn expired_nonces_leave_in_expiry_order_and_live_ones_stay_refused() {
        let cache = ReplayCache::new(100);
        // Expiries 1 s apart, inserted out of order.
        let creds: Vec<LocalCredential> = [5u64, 1, 4, 2, 3]
            .iter()
            .map(|s| {
                let mut c = cred(0);
                c.expires_ms = s * 1000;
                c
            })
            .collect();
        for c in &creds {
            cache.consume(c, 0).unwrap();
        }
        // At 2.5 s the credentials expiring at 1 s and 2 s are forgotten, the rest kept.
        let probe = cred(0);
        cache.consume(&probe, 2_500).unwrap();
        assert_eq!(cache.len(), 4, "3 s, 4 s, 5 s and the probe");
        for c in &creds[..] {
            if c.expires_ms >= 2_500 {
                assert!(matches!(cache.consume(c, 2_500), Err(AuthError::Replayed)));
            }
        }
        // A nonce spelled in capitals is the same nonce.
        let mut upper = probe.clone();
        upper.nonce = probe.nonce.to_uppercase();
        assert!(matches!(
            cache.consume(&upper, 2_600),
            Err(AuthError::Replayed)
        ));
        let mut bad = cred(0);
        bad.nonce = "zz".repeat(16);
        assert!(cache.consume(&bad, 2_600).is_err());
    }

    #[test]
    fn a_full_cache_refuses_without_rescanning_it() {
        // Full of live nonces: each refusal must not walk the whole cache (it used to run
        // a retain over every entry per call). 200,000 refusals against 200,000 entries
        // would be 4e10 steps that way; with expiry-ordered pruning they are immediate.
        let n = 200_000;
        let cache = ReplayCache::new(n);
        let mut c = cred(0);
        for i in 0..n as u128 {
            c.nonce = format!("{i:032x}");
            cache.consume(&c, 0).unwrap();
        }
        for i in 0..n as u128 {
            c.nonce = format!("{:032x}", i + n as u128);
            assert!(cache.consume(&c, 1).is_err());
        }
        assert_eq!(cache.len(), n);
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
