//! Who may use an account: per-account submit rights and coordinators, from the
//! `users` and `coordinators` lists of `[[account]]` entries in the accounts file.
//!
//! The rights of an account are those of the nearest account on its path to the root
//! that lists any `users` or `coordinators`; an account with no such list above it is
//! open to everyone (the built-in default, so a cluster without lists works as before).
//! A user's own leaf account (named after the user) is always theirs. Coordinators of an
//! account coordinate everything below it, as in Slurm.

use std::collections::BTreeMap;

/// The lists of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountAccess {
    /// Parent account (None: under the root).
    pub parent: Option<String>,
    /// Users allowed to submit.
    pub users: Vec<String>,
    /// Coordinators (also allowed to submit).
    pub coordinators: Vec<String>,
}

/// Every account's lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    accounts: BTreeMap<String, AccountAccess>,
}

/// Longest parent chain followed (the tree is validated acyclic; this bounds the loop).
const DEPTH_MAX: usize = 64;

impl Access {
    /// From (name, lists) pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, AccountAccess)>) -> Access {
        Access {
            accounts: entries.into_iter().collect(),
        }
    }

    /// The account itself, then its ancestors.
    fn chain<'a>(&'a self, account: &'a str) -> impl Iterator<Item = (&'a str, &'a AccountAccess)> {
        let mut next = Some(account);
        std::iter::from_fn(move || {
            let name = next?;
            let (key, entry) = self.accounts.get_key_value(name)?;
            next = entry.parent.as_deref();
            Some((key.as_str(), entry))
        })
        .take(DEPTH_MAX)
    }

    /// Whether `user` may submit to `account`.
    pub fn may_submit(&self, user: &str, account: &str) -> bool {
        if account == user {
            return true;
        }
        let restricting = self
            .chain(account)
            .map(|(_, a)| a)
            .find(|a| !a.users.is_empty() || !a.coordinators.is_empty());
        match restricting {
            None => true,
            Some(a) => a.users.iter().chain(&a.coordinators).any(|u| u == user),
        }
    }

    /// Whether `user` coordinates `account` (or an account above it).
    pub fn coordinates(&self, user: &str, account: &str) -> bool {
        self.chain(account)
            .any(|(_, a)| a.coordinators.iter().any(|c| c == user))
    }

    /// Accounts that list `user` as a coordinator, for error messages.
    pub fn coordinated(&self, user: &str) -> Vec<&str> {
        self.accounts
            .iter()
            .filter(|(_, a)| a.coordinators.iter().any(|c| c == user))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Accounts `user` may submit to that restrict submission, for error messages.
    pub fn memberships(&self, user: &str) -> Vec<&str> {
        self.accounts
            .iter()
            .filter(|(_, a)| a.users.iter().chain(&a.coordinators).any(|u| u == user))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn rights_come_from_the_nearest_listing_account() {
        let text = r#"
[[account]]
name = "science"
coordinators = ["dana"]
[[account]]
name = "physics"
parent = "science"
users = ["bob"]
[[account]]
name = "theory"
parent = "physics"
[[account]]
name = "open"
[[account]]
name = "default"
"#;
        let cfg = crate::accounts::parse(text).unwrap();
        let a = &cfg.access;
        let table = [
            ("bob", "theory", true, false),
            ("bob", "physics", true, false),
            ("carol", "theory", false, false),
            ("dana", "theory", false, true), // physics' list is nearer and omits dana
            ("dana", "science", true, true),
            ("carol", "open", true, false),
            ("carol", "carol", true, false),
        ];
        for (i, (user, account, submit, coord)) in table.into_iter().enumerate() {
            let got = (a.may_submit(user, account), a.coordinates(user, account));
            assert_eq!(got, (submit, coord), "#{i}: {user} on {account}");
        }
        assert_eq!(a.memberships("bob"), vec!["physics"]);
    }
}
