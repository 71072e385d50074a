//! This host's user database (users, their groups, group names), looked up for every
//! proven caller and kept for [`TTL`]: a secure call resolves its caller's groups (local
//! credentials) or the whole user (tokens, certificates), and reading `/etc/passwd` and
//! `/etc/group` (or NSS) on every call was a large part of the cost of authentication on
//! the submit path. A user or group changed on the host is seen within [`TTL`].

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an answer (found or not) is kept.
pub const TTL: Duration = Duration::from_secs(30);
/// Entries kept before the cache starts over (bounds memory against many names).
const ENTRIES_MAX: usize = 10_000;

/// A user as the host knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids (the primary one left out).
    pub gids: Vec<u32>,
}

#[derive(Default)]
struct Cache {
    users: HashMap<String, (Instant, Option<HostUser>)>,
    groups: HashMap<u32, (Instant, Option<String>)>,
}

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn fresh<T: Clone>(entry: Option<&(Instant, T)>) -> Option<T> {
    entry
        .filter(|(at, _)| at.elapsed() < TTL)
        .map(|(_, v)| v.clone())
}

/// User `name`, or `None` when the host has no such user.
pub fn user(name: &str) -> Option<HostUser> {
    if let Some(hit) = fresh(cache().users.get(name)) {
        return hit;
    }
    // Looked up without the lock held: NSS may be slow (LDAP), other callers need not wait.
    let found = nix::unistd::User::from_name(name).ok().flatten().map(|u| {
        let gids = std::ffi::CString::new(name)
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, u.gid).ok())
            .map(|g| {
                g.into_iter()
                    .map(|g| g.as_raw())
                    .filter(|g| *g != u.gid.as_raw())
                    .collect()
            })
            .unwrap_or_default();
        HostUser {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            gids,
        }
    });
    let mut c = cache();
    if c.users.len() >= ENTRIES_MAX {
        c.users.clear();
    }
    c.users
        .insert(name.to_string(), (Instant::now(), found.clone()));
    found
}

/// The name of group `gid`, or `None` when the host has no such group.
pub fn group_name(gid: u32) -> Option<String> {
    if let Some(hit) = fresh(cache().groups.get(&gid)) {
        return hit;
    }
    let found = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let mut c = cache();
    if c.groups.len() >= ENTRIES_MAX {
        c.groups.clear();
    }
    c.groups.insert(gid, (Instant::now(), found.clone()));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_the_host_database_and_unknown_names_are_none() {
        // root exists on every host berthd runs on; uid 0, gid 0.
        for _ in 0..2 {
            let root = user("root").expect("root");
            assert_eq!((root.uid, root.gid), (0, 0));
            assert!(!root.gids.contains(&0), "the primary gid is left out");
            assert_eq!(group_name(0).as_deref(), Some("root"));
        }
        assert_eq!(user("no-such-user-berth-test"), None);
        assert_eq!(user("no-such-user-berth-test"), None);
        assert_eq!(group_name(4_000_000_000), None);
    }
}
