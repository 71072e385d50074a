//! Where a client finds what it needs to reach berthd securely: the CA to trust, an
//! optional certificate of its own, and its proof of identity.
//!
//! In order: the environment (`BERTH_CA`, `BERTH_CERT` + `BERTH_KEY`, `BERTH_TOKEN`,
//! `BERTH_CRED_SOCKET`); then the profile `berth dev` writes for its address
//! (`$HOME/.config/berth/servers/HOST_PORT.toml`); then the cluster host's
//! `/etc/berth/ca.pem` and the credential daemon at `/run/berth/cred.sock`. With none of
//! these the client connects without TLS and without proof, and a secure berthd refuses
//! it, saying so.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A client's security settings for one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// CA certificate to trust; `None`: plain TCP (insecure servers only).
    pub ca: Option<PathBuf>,
    /// Own certificate and key, presented when set.
    pub cert: Option<PathBuf>,
    /// Key of `cert`.
    pub key: Option<PathBuf>,
    /// Credential daemon socket (cluster hosts, `berth dev`).
    pub cred_socket: Option<PathBuf>,
    /// A JWT, used when there is no credential daemon.
    pub token: Option<String>,
}

/// Directory of the per-server profiles `berth dev` writes.
pub fn profiles_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/berth/servers"))
}

/// The profile file of `host_port` (e.g. `127.0.0.1:7700`).
pub fn profile_path(host_port: &str) -> Option<PathBuf> {
    let name: String = host_port
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    profiles_dir().map(|d| d.join(format!("{name}.toml")))
}

/// Writes `profile` for `host_port` (mode 0600: it may hold a token).
///
/// # Errors
/// When the file cannot be written.
pub fn save(host_port: &str, profile: &Profile) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = profile_path(host_port).ok_or_else(|| std::io::Error::other("no HOME"))?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let text = toml_text(profile);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn toml_text(p: &Profile) -> String {
    // A tiny fixed format (quoted strings only), parsed back by `parse`.
    let mut out = String::from("# written by berth dev: how to reach this server\n");
    let mut line = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push_str(&format!("{k} = {}\n", serde_json::Value::String(v.clone())));
        }
    };
    let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    line("ca", &s(&p.ca));
    line("cert", &s(&p.cert));
    line("key", &s(&p.key));
    line("cred_socket", &s(&p.cred_socket));
    line("token", &p.token);
    out
}

/// Parses a profile file's text (`key = "value"` lines, `#` comments).
///
/// # Errors
/// A message naming the bad line.
pub fn parse(text: &str) -> Result<Profile, String> {
    let mut p = Profile::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = \"value\"", n + 1))?;
        let v: String = serde_json::from_str(v.trim())
            .map_err(|_| format!("line {}: value must be a quoted string", n + 1))?;
        match k.trim() {
            "ca" => p.ca = Some(v.into()),
            "cert" => p.cert = Some(v.into()),
            "key" => p.key = Some(v.into()),
            "cred_socket" => p.cred_socket = Some(v.into()),
            "token" => p.token = Some(v),
            other => return Err(format!("line {}: unknown key {other:?}", n + 1)),
        }
    }
    Ok(p)
}

/// The profile for `host_port`, from the sources in the module's order.
pub fn discover(host_port: &str) -> Profile {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut p = profile_path(host_port)
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|t| parse(&t).ok())
        // A profile whose CA file is gone was left by a `berth dev` that is gone with its
        // state directory; whatever listens on that port now is not it.
        .filter(|p| p.ca.as_ref().is_none_or(|ca| ca.exists()))
        .unwrap_or_default();
    if p == Profile::default() {
        let ca = Path::new("/etc/berth/ca.pem");
        if ca.exists() {
            p.ca = Some(ca.into());
        }
        let sock = Path::new(crate::credd::SOCKET_DEFAULT);
        if sock.exists() {
            p.cred_socket = Some(sock.into());
        }
    }
    if let Some(v) = env("BERTH_CA") {
        p.ca = Some(v.into());
    }
    if let (Some(c), Some(k)) = (env("BERTH_CERT"), env("BERTH_KEY")) {
        p.cert = Some(c.into());
        p.key = Some(k.into());
    }
    if let Some(v) = env("BERTH_CRED_SOCKET") {
        p.cred_socket = Some(v.into());
    }
    if let Some(v) = env("BERTH_TOKEN") {
        p.token = Some(v.to_string_lossy().into_owned());
        // An explicit token wins over a local daemon.
        if env("BERTH_CRED_SOCKET").is_none() {
            p.cred_socket = None;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test of this crate that reads HOME (it sets it for the process).
    #[test]
    fn a_profile_whose_ca_is_gone_is_ignored() {
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("HOME", home.path());
        let ca = home.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let p = Profile {
            ca: Some(ca.clone()),
            ..Default::default()
        };
        save("127.0.0.1:7999", &p).unwrap();
        assert_eq!(discover("127.0.0.1:7999").ca, Some(ca.clone()));
        std::fs::remove_file(&ca).unwrap();
        assert_eq!(discover("127.0.0.1:7999").ca, None);
    }

    #[test]
    fn profiles_round_trip_and_bad_lines_are_refused() {
        let p = Profile {
            ca: Some("/s/ca.pem".into()),
            cred_socket: Some("/s/cred \"x\".sock".into()),
            token: Some("a.b.c".into()),
            ..Default::default()
        };
        assert_eq!(parse(&toml_text(&p)).unwrap(), p);
        for (text, want) in [
            ("ca", "expected key"),
            ("ca = /x", "quoted string"),
            ("god = \"x\"", "unknown key"),
        ] {
            assert!(parse(text).unwrap_err().contains(want), "{text}");
        }
    }
}
