//! The cluster key: 32 random bytes shared by berth's daemons (berthd replicas, agents,
//! credential daemons), like munge's key. It signs local credentials and launch seals
//! (HMAC-SHA256, one domain string per use so a signature made for one purpose never
//! verifies for another).
//!
//! The file holds the key as 64 hex digits. It must be readable by its owner only: a key
//! any local user can read lets that user forge any uid, so a looser file is refused.

use crate::{file_err, AuthError};
use ring::hmac;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Domain of local credentials.
pub(crate) const DOMAIN_CREDENTIAL: &[u8] = b"berth-credential-v1\0";
/// Domain of launch seals.
pub(crate) const DOMAIN_LAUNCH: &[u8] = b"berth-launch-v1\0";

/// The shared daemon key. Its `Debug` never shows the key.
pub struct ClusterKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

impl ClusterKey {
    /// A key from raw bytes (tests, `berth dev`).
    pub fn from_bytes(bytes: &[u8]) -> ClusterKey {
        ClusterKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Reads the key file at `path`.
    ///
    /// # Errors
    /// [`AuthError::File`] when it cannot be read, is not 64 hex digits, or is readable by
    /// group or others.
    pub fn load(path: &Path) -> Result<ClusterKey, AuthError> {
        let bytes = read_secret(path)?;
        Ok(ClusterKey::from_bytes(&bytes))
    }

    /// Writes a new random key to `path` (mode 0600, never overwriting).
    ///
    /// # Errors
    /// [`AuthError::File`] when the file exists or cannot be written.
    pub fn write_new(path: &Path) -> Result<(), AuthError> {
        write_new_secret(path, &random_bytes::<32>())
    }

    pub(crate) fn sign(&self, domain: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain);
        ctx.update(msg);
        ctx.sign().as_ref().to_vec()
    }

    /// Constant-time check of `tag` over `domain || msg`.
    pub(crate) fn verify(&self, domain: &[u8], msg: &[u8], tag: &[u8]) -> bool {
        let mut data = Vec::with_capacity(domain.len() + msg.len());
        data.extend_from_slice(domain);
        data.extend_from_slice(msg);
        hmac::verify(&self.key, &data, tag).is_ok()
    }
}

/// `N` bytes from the system's CSPRNG.
///
/// # Panics
/// If the operating system has no randomness to give (nothing secure can run then).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system CSPRNG failed");
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads a hex secret file (cluster key, JWT key), refusing one group or others can read.
///
/// # Errors
/// [`AuthError::File`] naming what is wrong.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_err(
            path,
            format!(
                "mode {:o} lets other users read the key; chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let bytes = unhex(text.trim()).ok_or_else(|| file_err(path, "not a hex key"))?;
    if bytes.len() < 32 {
        return Err(file_err(
            path,
            format!("key is {} bytes; at least 32 are needed", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` as hex to a new file `path`, mode 0600.
///
/// # Errors
/// [`AuthError::File`] when it exists or cannot be written.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    writeln!(f, "{}", hex(bytes)).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("cluster.key");
        ClusterKey::write_new(&good).unwrap();
        let k = ClusterKey::load(&good).unwrap();
        assert_eq!(format!("{k:?}"), "ClusterKey(<secret>)");
        assert!(ClusterKey::write_new(&good).is_err(), "never overwrites");
        let cases = [
            ("0123", 0o600, "at least 32"),
            ("zz", 0o600, "not a hex key"),
            (&"ab".repeat(32)[..], 0o644, "chmod 600"),
        ];
        for (i, (text, mode, want)) in cases.into_iter().enumerate() {
            let p = dir.path().join(format!("k{i}"));
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            match ClusterKey::load(&p) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn signatures_are_domain_separated() {
        let k = ClusterKey::from_bytes(&[7; 32]);
        let tag = k.sign(DOMAIN_CREDENTIAL, b"x");
        assert!(k.verify(DOMAIN_CREDENTIAL, b"x", &tag));
        assert!(!k.verify(DOMAIN_LAUNCH, b"x", &tag));
        assert!(!ClusterKey::from_bytes(&[8; 32]).verify(DOMAIN_CREDENTIAL, b"x", &tag));
    }
}
