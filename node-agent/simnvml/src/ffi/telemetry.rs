//! Live readings: utilisation, power, temperature (from `telemetry.json`, see `events`;
//! idle defaults without it) and ECC mode and counters (counters raised by injected
//! faults). A lost GPU answers `NVML_ERROR_GPU_IS_LOST` to all of them.

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::c_uint;

use nvml_wrapper_sys::bindings::{
    nvmlDevice_t, nvmlEccCounterType_t, nvmlEnableState_t, nvmlMemoryErrorType_t, nvmlReturn_t,
    nvmlTemperatureSensors_t, nvmlUtilization_t,
};

use super::codes::{INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS, UNKNOWN};
use super::{guard, log, with_live_gpu, write_value};
use crate::events::{telemetry, Telemetry};
use crate::state::SimMachine;

/// Temperature of an idle GPU, °C.
const IDLE_TEMPERATURE_C: u32 = 32;

/// Runs `f` on GPU `index`'s telemetry; `NVML_ERROR_UNKNOWN` if `telemetry.json` is bad.
fn with_telemetry(
    machine: &SimMachine,
    index: usize,
    f: impl FnOnce(Telemetry) -> nvmlReturn_t,
) -> nvmlReturn_t {
    match telemetry(machine.dir.as_deref(), index) {
        Ok(t) => f(t),
        Err(e) => {
            log(&e);
            UNKNOWN
        }
    }
}

/// Stores GPU and memory utilisation, percent.
///
/// # Safety
/// `utilization` must be null or valid for writing one `nvmlUtilization_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: nvmlDevice_t,
    utilization: *mut nvmlUtilization_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            with_telemetry(machine, index, |t| {
                let value = nvmlUtilization_t {
                    gpu: t.utilization_gpu.unwrap_or(0).min(100),
                    memory: t.utilization_memory.unwrap_or(0).min(100),
                };
                // SAFETY: forwarded caller contract.
                unsafe { write_value(utilization, value) }
            })
        })
    })
}

/// Stores the power draw in milliwatts.
///
/// # Safety
/// `power` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPowerUsage(
    device: nvmlDevice_t,
    power: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            let idle = machine.gpus[index].power_idle_mw;
            with_telemetry(machine, index, |t| {
                let mw = t.power_w.map_or(idle, |w| w.saturating_mul(1000));
                // SAFETY: forwarded caller contract.
                unsafe { write_value(power, mw) }
            })
        })
    })
}

/// Stores the GPU core temperature, °C; other sensors are not simulated.
///
/// # Safety
/// `temp` must be null or valid for writing one `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTemperature(
    device: nvmlDevice_t,
    sensor: nvmlTemperatureSensors_t,
    temp: *mut c_uint,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if sensor != 0 {
                return INVALID_ARGUMENT;
            }
            with_telemetry(machine, index, |t| {
                let value = t.temperature_c.unwrap_or(IDLE_TEMPERATURE_C);
                // SAFETY: forwarded caller contract.
                unsafe { write_value(temp, value) }
            })
        })
    })
}

/// Stores the ECC mode, current and pending (always equal: nothing changes it).
///
/// # Safety
/// `current` and `pending` must each be null or valid for writing one `nvmlEnableState_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEccMode(
    device: nvmlDevice_t,
    current: *mut nvmlEnableState_t,
    pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if current.is_null() || pending.is_null() {
                return INVALID_ARGUMENT;
            }
            let mode = u32::from(machine.gpus[index].ecc_enabled);
            // SAFETY: both non-null and writable by the caller's contract.
            unsafe {
                write_value(current, mode);
                write_value(pending, mode);
            }
            SUCCESS
        })
    })
}

/// Stores the corrected (0) or uncorrected (1) ECC error count. Volatile and aggregate
/// counters are equal: the simulated machine never reboots. `NOT_SUPPORTED` with ECC off.
///
/// # Safety
/// `count` must be null or valid for writing one `unsigned long long`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTotalEccErrors(
    device: nvmlDevice_t,
    error_type: nvmlMemoryErrorType_t,
    counter_type: nvmlEccCounterType_t,
    count: *mut u64,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if !machine.gpus[index].ecc_enabled {
                return NOT_SUPPORTED;
            }
            let state = &machine.devices[index];
            let value = match (error_type, counter_type) {
                (0, 0 | 1) => state.ecc_corrected,
                (1, 0 | 1) => state.ecc_uncorrected,
                _ => return INVALID_ARGUMENT,
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(count, value) }
        })
    })
}
