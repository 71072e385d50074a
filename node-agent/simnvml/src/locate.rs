//! How a loaded copy of the library finds its machine description at `nvmlInit`:
//! `$BERTH_SIM_MACHINE` if set, else `machine.json` beside the library file itself. The
//! second is what makes many nodes in one process work (see `install`); the first is for a
//! single simulated library dropped in as `libnvidia-ml.so.1`. Failure is reported on
//! stderr, in one line naming the file, because NVML's return codes carry no message.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::install::MACHINE_FILE_NAME;
use crate::state::SimMachine;
use crate::{Error, MachineDescription};

/// Environment variable naming a description file for every copy of the library in the
/// process; when set, copies stop reading the `machine.json` beside them.
pub const MACHINE_ENV: &str = "BERTH_SIM_MACHINE";

/// Only its address is used, to ask the dynamic loader which file holds this code.
static ANCHOR: u8 = 0;

/// Finds, reads and validates the description.
///
/// # Errors
/// One line for stderr: the file, how it was chosen, and what is wrong with it.
pub(crate) fn load_machine() -> Result<SimMachine, String> {
    let (path, origin) = description_path()?;
    let fail = |e: Error| {
        let reason = match e {
            Error::Io { source, .. } => source.to_string(),
            // The state file beside the description: name it, it is the one to look at.
            Error::InFile { path: file, source } if file != path => {
                format!("{}: {source}", file.display())
            }
            Error::InFile { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        format!(
            "machine description {} ({origin}): {reason}",
            path.display()
        )
    };
    let description = MachineDescription::load(&path).map_err(fail)?;
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    SimMachine::load(description, dir).map_err(fail)
}

fn description_path() -> Result<(PathBuf, String), String> {
    if let Some(path) = std::env::var_os(MACHINE_ENV).filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(path), format!("from ${MACHINE_ENV}")));
    }
    let lib = own_path().ok_or_else(|| {
        format!("cannot tell which file this library was loaded from; set {MACHINE_ENV}")
    })?;
    let dir = lib.parent().map(PathBuf::from).unwrap_or_default();
    Ok((
        dir.join(MACHINE_FILE_NAME),
        format!("beside {}", lib.display()),
    ))
}

/// The path this library copy was loaded from, as given to `dlopen`.
fn own_path() -> Option<PathBuf> {
    let address = std::ptr::from_ref(&ANCHOR).cast::<libc::c_void>();
    // SAFETY: `Dl_info` is plain pointers and integers, for which all-zero is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only inspects `address` and writes `info`, which outlives the call.
    let found = unsafe { libc::dladdr(address, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: on success `dli_fname` is a NUL-terminated string owned by the loader, alive
    // while this object is loaded, which it is: this code is running from it. It is copied
    // out before returning.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
    (!path.as_os_str().is_empty()).then_some(path)
}
