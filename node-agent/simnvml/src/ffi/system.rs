//! Library lifetime and system-wide queries: `nvmlInit*` / `nvmlShutdown` (reference
//! counted, the first init reads the machine description), `nvmlErrorString`, and the
//! driver, NVML and CUDA versions from the description.

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::{c_char, c_int, c_uint};
use std::io::Write;

use nvml_wrapper_sys::bindings::nvmlReturn_t;

use super::codes::{self, SUCCESS, UNINITIALIZED, UNKNOWN};
use super::{guard, with_machine, write_c_string, write_value};
use crate::locate;
use crate::state::REGISTRY;

fn init() -> nvmlReturn_t {
    match REGISTRY.init(locate::load_machine) {
        Ok(()) => SUCCESS,
        Err(message) => {
            // eprintln! would panic if stderr is closed; a lost message must not be a crash.
            let _ = writeln!(
                std::io::stderr(),
                "berth-simnvml: nvmlInit failed: {message}"
            );
            UNKNOWN
        }
    }
}

/// Initialises the library; the first of several inits reads the machine description
/// (see the crate docs). `NVML_ERROR_UNKNOWN`, with one line on stderr, if it is missing
/// or invalid.
///
/// # Safety
/// None: takes no arguments. `unsafe` only because every export is.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    guard(init)
}

/// The pre-v2 entry point; identical here, since the simulated machine has no
/// inaccessible devices for v1 to skip.
///
/// # Safety
/// None: takes no arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> nvmlReturn_t {
    guard(init)
}

/// `nvmlInit_v2` with flags. `NO_GPUS` and `NO_ATTACH` change nothing here: a GPU-less
/// description already initialises, and there is nothing to attach.
///
/// # Safety
/// None: takes only an integer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    guard(init)
}

/// Undoes one init; the last drops the machine, invalidating every handle.
/// `NVML_ERROR_UNINITIALIZED` if not initialised.
///
/// # Safety
/// None: takes no arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    guard(|| {
        if REGISTRY.shutdown() {
            SUCCESS
        } else {
            UNINITIALIZED
        }
    })
}

/// NVML's message for `result`, as a static NUL-terminated string. Works before init.
///
/// # Safety
/// None: the returned pointer is to static data and must not be freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    codes::error_string(result).as_ptr()
}

/// Copies the description's `driver_version` into `version` (`length` bytes).
///
/// # Safety
/// `version` must be null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let text = &machine.description.driver_version;
            // SAFETY: forwarded caller contract.
            unsafe { write_c_string(version, length, text) }
        })
    })
}

/// Copies the description's `nvml_version` into `version` (`length` bytes).
///
/// # Safety
/// `version` must be null or valid for writing `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let text = &machine.description.nvml_version;
            // SAFETY: forwarded caller contract.
            unsafe { write_c_string(version, length, text) }
        })
    })
}

/// Stores the description's `cuda_driver_version` at `version`.
///
/// # Safety
/// `version` must be null or valid for writing one `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            // SAFETY: forwarded caller contract.
            unsafe { write_value(version, machine.description.cuda_driver_version) }
        })
    })
}

/// Same as `nvmlSystemGetCudaDriverVersion`: the simulated machine has no libcuda whose
/// version could differ from the driver's.
///
/// # Safety
/// `version` must be null or valid for writing one `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    // SAFETY: same contract.
    unsafe { nvmlSystemGetCudaDriverVersion(version) }
}
