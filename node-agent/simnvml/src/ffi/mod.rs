//! The C ABI: the NVML functions the agent calls, with NVML's names, signatures and return
//! codes, answering from the machine in `state::REGISTRY`. Every export runs its body
//! through [`guard`], so a bug here becomes `NVML_ERROR_UNKNOWN` rather than an unwind
//! across the C boundary (which would abort the agent). Pointer arguments are checked for
//! null and written unaligned; beyond that the caller's pointers are trusted, as NVML does.
//!
//! One file per NVML concern: `system` (init, versions, error strings), `device`
//! (enumeration and per-device queries), `topology` (NUMA, CPU affinity, NVLink, common
//! ancestors), `telemetry` (utilisation, power, temperature, ECC), `events` (event sets,
//! XIDs) and `mig` (MIG mode, profiles, placements, GPU/compute instances, MIG devices).
//!
//! A lost GPU (see `events`) still answers its identity (name, UUID, PCI, index: the
//! driver keeps those), and `NVML_ERROR_GPU_IS_LOST` to everything that would touch the
//! hardware: memory, telemetry, ECC, topology, MIG. That is what lets an agent tell
//! *which* GPU is lost.

mod codes;
mod device;
mod events;
mod mig;
mod system;
mod telemetry;
mod topology;

use std::ffi::{c_char, c_uint};
use std::panic::{catch_unwind, AssertUnwindSafe};

use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlReturn_t};

use crate::handle::{self, DeviceRef};
use crate::machine::ResolvedGpu;
use crate::state::{SimMachine, REGISTRY};
use codes::{GPU_IS_LOST, INSUFFICIENT_SIZE, INVALID_ARGUMENT, SUCCESS, UNINITIALIZED, UNKNOWN};

/// One line on stderr, prefixed with the library's name: NVML's return codes carry no
/// message, so this is where the simulator says why. A closed stderr is not a crash.
pub(crate) fn log(message: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "berth-simnvml: {message}");
}

/// Runs an export's body, turning a panic into `NVML_ERROR_UNKNOWN`.
fn guard(body: impl FnOnce() -> nvmlReturn_t) -> nvmlReturn_t {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(UNKNOWN)
}

/// Runs `f` on the loaded machine; `NVML_ERROR_UNINITIALIZED` before init, as NVML checks
/// that before any argument.
fn with_machine(f: impl FnOnce(&mut SimMachine) -> nvmlReturn_t) -> nvmlReturn_t {
    REGISTRY.with_machine(f).unwrap_or(UNINITIALIZED)
}

/// Runs `f` on the GPU `device` designates; `NVML_ERROR_INVALID_ARGUMENT` if `device` is
/// not a physical-GPU handle of this library copy or names a GPU this machine lacks.
fn with_gpu(device: nvmlDevice_t, f: impl FnOnce(&ResolvedGpu) -> nvmlReturn_t) -> nvmlReturn_t {
    with_machine(|machine| match handle::resolve(device) {
        Some(DeviceRef::Gpu(index)) => machine.gpus.get(index).map_or(INVALID_ARGUMENT, f),
        _ => INVALID_ARGUMENT,
    })
}

/// Like [`with_gpu`] for queries that touch the hardware: `f` gets the machine and the
/// GPU's index, and a lost GPU answers `NVML_ERROR_GPU_IS_LOST` instead.
fn with_live_gpu(
    device: nvmlDevice_t,
    f: impl FnOnce(&mut SimMachine, usize) -> nvmlReturn_t,
) -> nvmlReturn_t {
    with_machine(|machine| match handle::resolve(device) {
        Some(DeviceRef::Gpu(index)) if index < machine.gpus.len() => {
            if machine.devices[index].lost {
                GPU_IS_LOST
            } else {
                f(machine, index)
            }
        }
        _ => INVALID_ARGUMENT,
    })
}

/// Stores `value` at `out`.
///
/// # Safety
/// `out` must be null or valid for writing one `T` (alignment not required).
unsafe fn write_value<T>(out: *mut T, value: T) -> nvmlReturn_t {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and valid for one T by the caller's contract.
    unsafe { out.write_unaligned(value) };
    SUCCESS
}

/// Copies `text` and a NUL into the caller's buffer of `length` bytes, as NVML's string
/// getters do: `NVML_ERROR_INSUFFICIENT_SIZE` if it does not fit, buffer untouched.
///
/// # Safety
/// `buffer` must be null or valid for writing `length` bytes.
unsafe fn write_c_string(buffer: *mut c_char, length: c_uint, text: &str) -> nvmlReturn_t {
    if buffer.is_null() {
        return INVALID_ARGUMENT;
    }
    let fits = usize::try_from(length).is_ok_and(|length| text.len() < length);
    if !fits {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: text.len() + 1 <= length bytes, all writable by the caller's contract;
    // `text` is a separate Rust allocation, so the ranges cannot overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), text.len());
        buffer.add(text.len()).write(0);
    }
    SUCCESS
}

/// Copies `text` into a fixed C array inside an NVML struct, truncating to leave the NUL.
/// Only used for text validated to fit, so truncation never happens in practice.
fn fill_c_array<const N: usize>(array: &mut [c_char; N], text: &str) {
    array.fill(0);
    for (slot, byte) in array.iter_mut().zip(text.bytes().take(N.saturating_sub(1))) {
        *slot = byte as c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_string_needs_room_for_the_nul() {
        let mut buffer = [b'x' as c_char; 8];
        // SAFETY: `buffer` has 8 writable bytes and each call passes at most 8.
        let (short, exact) = unsafe {
            (
                write_c_string(buffer.as_mut_ptr(), 7, "1234567"),
                write_c_string(buffer.as_mut_ptr(), 8, "1234567"),
            )
        };
        assert_eq!(
            short, INSUFFICIENT_SIZE,
            "7 bytes cannot hold 7 chars + NUL"
        );
        assert_eq!(exact, SUCCESS);
        let bytes: Vec<u8> = buffer.iter().map(|&c| c as u8).collect();
        assert_eq!(bytes, b"1234567\0");
        // SAFETY: a null buffer is refused before any write.
        let null = unsafe { write_c_string(std::ptr::null_mut(), 8, "a") };
        assert_eq!(null, INVALID_ARGUMENT);
    }

    #[test]
    fn c_array_is_nul_terminated_even_when_full() {
        let mut array = [b'x' as c_char; 4];
        fill_c_array(&mut array, "abcdef");
        assert_eq!(array.map(|c| c as u8), *b"abc\0");
    }

    #[test]
    fn guard_turns_a_panic_into_unknown() {
        assert_eq!(guard(|| panic!("bug")), UNKNOWN);
        assert_eq!(guard(|| SUCCESS), SUCCESS);
    }
}
