//! What an account coordinator may change with `berth admin accounts set` (Slurm's
//! coordinators manage the users, sub-accounts and limits under their accounts).
//!
//! The new file is compared with the one in force, account by account (by name, so
//! reordering is no change). A coordinator of account X may:
//! - change the `users` list of X itself (who may submit there);
//! - add, remove or change accounts strictly below X (their shares, quotas, users).
//!
//! Anything else needs the admin role: the shares and quota of X itself (they set X's
//! weight against its siblings, which X's own coordinator must not raise), any
//! `coordinators` list (a coordinator does not appoint coordinators), moving an account
//! out from under X, and every setting outside `[[account]]` (QOS classes, weights,
//! packing, defaults).

use crate::account_access::Access;
use std::collections::BTreeMap;

/// Why `user`, a non-admin, may not install `new` over `old`; `Ok` when every change is
/// one of theirs to make.
///
/// # Errors
/// A message naming the first change they may not make and who may. The caller has
/// already checked that `new` parses.
pub fn coordinator_may_set(
    old: &str,
    new: &str,
    user: &str,
    access: &Access,
) -> Result<(), String> {
    let old = table(old)?;
    let new = table(new)?;
    let need = |what: String| {
        let mine = access.coordinated(user);
        format!(
            "Access/permission denied: {what} needs role admin (you are {user:?}, \
             coordinator of {mine:?})"
        )
    };
    for key in old.keys().chain(new.keys()) {
        if key != "account" && old.get(key) != new.get(key) {
            return Err(need(format!("changing {key}")));
        }
    }
    let (before, after) = (accounts(&old), accounts(&new));
    for name in before.keys().chain(after.keys()) {
        let (b, a) = (before.get(name).copied(), after.get(name).copied());
        if b == a {
            continue;
        }
        if field(b, "coordinators") != field(a, "coordinators") {
            return Err(need(format!(
                "changing the coordinators of account {name:?}"
            )));
        }
        // Only the users list of a coordinated account itself.
        let only_users = b.is_some() && a.is_some() && without(b, "users") == without(a, "users");
        if only_users && access.coordinates(user, name) {
            continue;
        }
        // Otherwise the account must sit strictly below one the user coordinates, where it
        // was and where it goes.
        for parent in [b, a]
            .into_iter()
            .flatten()
            .map(|t| field(Some(t), "parent"))
        {
            let below = parent
                .and_then(toml::Value::as_str)
                .is_some_and(|p| access.coordinates(user, p));
            if !below {
                return Err(need(format!(
                    "changing account {name:?} (a coordinator changes only the accounts below \
                     theirs, and the users of their own)"
                )));
            }
        }
    }
    Ok(())
}

fn table(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>()
        .map_err(|e| format!("accounts config is not valid TOML: {e}"))
}

/// `[[account]]` entries by name (unnamed ones, refused by the parser anyway, skipped).
fn accounts(t: &toml::Table) -> BTreeMap<String, &toml::Table> {
    t.get("account")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table)
        .filter_map(|a| Some((a.get("name")?.as_str()?.to_string(), a)))
        .collect()
}

fn field<'a>(t: Option<&'a toml::Table>, key: &str) -> Option<&'a toml::Value> {
    t.and_then(|t| t.get(key))
}

fn without(t: Option<&toml::Table>, key: &str) -> Option<toml::Table> {
    t.map(|t| {
        let mut t = t.clone();
        t.remove(key);
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"
default_account = "default"
[[account]]
name = "default"
[[account]]
name = "physics"
shares = 2
coordinators = ["dana"]
users = ["bob"]
[[account]]
name = "theory"
parent = "physics"
shares = 1
[[account]]
name = "chem"
"#;

    #[test]
    fn coordinators_change_only_what_is_below_them() {
        let access = crate::accounts::parse(OLD).unwrap().access;
        let edit = |from: &str, to: &str| OLD.replacen(from, to, 1);
        let table: Vec<(String, &str, Option<&str>)> = vec![
            (OLD.to_string(), "dana", None),
            // The users of their own account.
            (
                edit("users = [\"bob\"]", "users = [\"bob\", \"eve\"]"),
                "dana",
                None,
            ),
            // A sub-account's shares, and a new sub-account.
            (edit("shares = 1", "shares = 5"), "dana", None),
            (
                format!("{OLD}[[account]]\nname = \"new\"\nparent = \"theory\"\n"),
                "dana",
                None,
            ),
            // Their own account's shares: admin only.
            (
                edit("shares = 2", "shares = 9"),
                "dana",
                Some("account \"physics\""),
            ),
            // Someone else's account.
            (
                edit("name = \"chem\"", "name = \"chem\"\nshares = 4"),
                "dana",
                Some("\"chem\""),
            ),
            // Moving a sub-account away.
            (
                edit("parent = \"physics\"", "parent = \"chem\""),
                "dana",
                Some("\"theory\""),
            ),
            // Coordinators and global settings.
            (
                edit("[\"dana\"]", "[\"dana\", \"bob\"]"),
                "dana",
                Some("coordinators"),
            ),
            (
                edit(
                    "default_account = \"default\"",
                    "default_account = \"chem\"",
                ),
                "dana",
                Some("changing default_account"),
            ),
            // A non-coordinator changes nothing.
            (edit("shares = 1", "shares = 5"), "bob", Some("role admin")),
        ];
        for (i, (new, user, want)) in table.into_iter().enumerate() {
            match (coordinator_may_set(OLD, &new, user, &access), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) if e.contains(w) && e.contains("needs role admin") => {}
                (got, w) => panic!("#{i}: want {w:?}, got {got:?}"),
            }
        }
    }
}
