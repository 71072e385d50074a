//! Putting a simulated node on disk. `berth dev` runs many simulated nodes in one process,
//! but `dlopen` of one path (or one inode) twice returns the same handle and so the same
//! global NVML state. Each node therefore gets its own *copy* of the library — a hard link
//! would share the inode and with it the state — in its own directory, beside its own
//! `machine.json`, which the library finds through its own path at `nvmlInit`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, MachineDescription};

/// File name cargo gives the built cdylib on Linux.
pub const LIB_FILE_NAME: &str = "libberth_simnvml.so";
/// Environment variable that overrides where [`find_library`] looks.
pub const LIB_ENV: &str = "BERTH_SIMNVML_LIB";
/// Name of the library copy in a node directory: the soname the real driver ships.
pub const INSTALLED_LIB_NAME: &str = "libnvidia-ml.so.1";
/// Name of the description the library reads from its own directory.
pub const MACHINE_FILE_NAME: &str = "machine.json";

/// The built simulated-NVML cdylib: `$BERTH_SIMNVML_LIB` if set, else the most recently
/// modified `libberth_simnvml.so` in the running executable's directory, its `deps/`, or
/// its parent (test binaries run from `target/<profile>/deps/`). Newest wins because
/// `cargo test` and dependent builds refresh only `deps/`, while `cargo build -p
/// berth-simnvml` also copies the library up to `target/<profile>/`, so either may be stale.
///
/// # Errors
/// [`Error::LibraryNotFound`] listing every path tried, with how to build the library;
/// [`Error::Io`] if the executable's own path is unknown.
pub fn find_library() -> Result<PathBuf, Error> {
    let candidates = match std::env::var_os(LIB_ENV).filter(|v| !v.is_empty()) {
        Some(path) => vec![PathBuf::from(path)],
        None => {
            let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
            let dir = exe.parent().unwrap_or(Path::new("."));
            let mut dirs = vec![dir.to_owned(), dir.join("deps")];
            dirs.extend(dir.parent().map(Path::to_owned));
            dirs.into_iter().map(|d| d.join(LIB_FILE_NAME)).collect()
        }
    };
    let newest = candidates
        .iter()
        .filter_map(|path| {
            let metadata = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
            Some((metadata.modified().ok(), path))
        })
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, found)) => Ok(found.clone()),
        None => Err(Error::LibraryNotFound {
            searched: candidates,
        }),
    }
}

/// Makes `dir` a simulated node called `node_name`: copies `lib` to
/// `dir/libnvidia-ml.so.1` and writes `dir/machine.json` — `machine` with `uuid_seed` set to
/// `node_name`, explicit GPU uuids kept. Returns the absolute library path to hand to
/// `nvml_wrapper::Nvml::builder().lib_path(..)`.
///
/// Idempotent: a re-run with the same arguments leaves identical files, so the node keeps
/// its UUIDs across restarts. Files are replaced by rename, never rewritten in place, so a
/// copy already loaded by this or another process is not corrupted under it.
///
/// # Errors
/// [`Error::Invalid`] if `node_name` is empty or the seeded description is invalid;
/// [`Error::Io`] naming the path if a directory or file cannot be created or written.
pub fn install_node(
    dir: &Path,
    lib: &Path,
    machine: &MachineDescription,
    node_name: &str,
) -> Result<PathBuf, Error> {
    if node_name.trim().is_empty() {
        return Err(Error::Invalid("node name must not be empty".into()));
    }
    let mut seeded = machine.clone();
    seeded.uuid_seed = Some(node_name.to_owned());
    seeded.validate()?;

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let lib_bytes = std::fs::read(lib).map_err(|e| Error::io(lib, e))?;
    let lib_target = dir.join(INSTALLED_LIB_NAME);
    replace_if_different(&lib_target, &lib_bytes)?;
    replace_if_different(&dir.join(MACHINE_FILE_NAME), seeded.to_json().as_bytes())?;
    Ok(lib_target)
}

/// Writes `content` to `target` through a temporary file and a rename, unless `target`
/// already holds exactly `content` (keeping its inode keeps an identical loaded copy the
/// one `dlopen` finds again).
fn replace_if_different(target: &Path, content: &[u8]) -> Result<(), Error> {
    if std::fs::read(target).is_ok_and(|existing| existing == content) {
        return Ok(());
    }
    // Unique per process and call, so concurrent installs into one directory cannot
    // rename each other's half-written files.
    static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
    let serial = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let temp = target.with_file_name(format!(".{name}.{}.{serial}.tmp", std::process::id()));
    let written = write_executable(&temp, content)
        .and_then(|()| std::fs::rename(&temp, target).map_err(|e| Error::io(target, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Mode 0755 like an installed driver library; `dlopen` itself needs only read access,
/// and a 0755 `machine.json` harms nothing.
fn write_executable(path: &Path, content: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).map_err(|e| Error::io(path, e))?;
    let permissions = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(path, permissions).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_lib(dir: &Path) -> PathBuf {
        let path = dir.join("libfake.so");
        std::fs::write(&path, b"not really a library").expect("write fake lib");
        path
    }

    #[test]
    fn install_writes_seeded_description_and_library_copy() {
        let temp = tempfile::tempdir().expect("tempdir");
        let lib = fake_lib(temp.path());
        let machine = crate::builtin("a100-pcie-4").expect("shipped");
        let node_dir = temp.path().join("nodes/n1");
        let installed = install_node(&node_dir, &lib, &machine, "n1").expect("install");

        assert_eq!(installed, node_dir.join(INSTALLED_LIB_NAME));
        assert!(
            installed.is_absolute(),
            "{} is relative",
            installed.display()
        );
        let copied = std::fs::read(&installed).expect("read copy");
        assert_eq!(copied, b"not really a library");
        let written = MachineDescription::load(node_dir.join(MACHINE_FILE_NAME)).expect("load");
        assert_eq!(written.uuid_seed.as_deref(), Some("n1"));
        assert_eq!(written.gpus, machine.gpus);
    }

    #[test]
    fn reinstall_is_identical_and_keeps_explicit_uuids() {
        let temp = tempfile::tempdir().expect("tempdir");
        let lib = fake_lib(temp.path());
        let mut machine = crate::builtin("a100-pcie-4").expect("shipped");
        let fixed = "GPU-00000000-1111-2222-3333-444444444444";
        machine.gpus[2].uuid = Some(fixed.into());
        let dir = temp.path().join("n");
        install_node(&dir, &lib, &machine, "n").expect("first install");
        let first = std::fs::read(dir.join(MACHINE_FILE_NAME)).expect("read");
        install_node(&dir, &lib, &machine, "n").expect("second install");
        let second = std::fs::read(dir.join(MACHINE_FILE_NAME)).expect("read");
        assert_eq!(first, second);

        let written = MachineDescription::load(dir.join(MACHINE_FILE_NAME)).expect("load");
        assert_eq!(written.gpu_uuid(2).as_deref(), Some(fixed));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn install_refuses_empty_node_name_and_missing_library() {
        let temp = tempfile::tempdir().expect("tempdir");
        let machine = crate::builtin("dgx-h100").expect("shipped");
        let lib = fake_lib(temp.path());
        let err = install_node(temp.path(), &lib, &machine, " ").expect_err("empty name");
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        let missing = temp.path().join("nope.so");
        let err = install_node(temp.path(), &missing, &machine, "n").expect_err("no lib");
        assert!(err.to_string().contains("nope.so"), "{err}");
    }

    #[test]
    fn library_not_found_says_how_to_build_it() {
        let err = Error::LibraryNotFound {
            searched: vec![PathBuf::from("/x/libberth_simnvml.so")],
        };
        let text = err.to_string();
        assert!(text.contains("cargo build -p berth-simnvml"), "{text}");
        assert!(text.contains("/x/libberth_simnvml.so"), "{text}");
    }
}
