//! Event sets: create, register a GPU's event types, wait, free. Events come from the
//! fault-injection file (see `crate::events`), which each wait drains first. A wait
//! releases the library lock between checks, so other threads' queries go on meanwhile.

#![allow(non_snake_case)] // NVML's exported names.

use std::ffi::c_uint;
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlEventData_t, nvmlEventSet_t, nvmlReturn_t};

use super::codes::{INVALID_ARGUMENT, NOT_SUPPORTED, SUCCESS, TIMEOUT, UNINITIALIZED, UNKNOWN};
use super::{guard, with_live_gpu, with_machine, write_value};
use crate::events::{drain_injections, EVENT_DOUBLE_BIT_ECC, EVENT_SINGLE_BIT_ECC, EVENT_XID};
use crate::handle;
use crate::state::REGISTRY;

/// Event types the simulator raises: ECC single/double bit and critical XIDs.
const SUPPORTED: u64 = EVENT_SINGLE_BIT_ECC | EVENT_DOUBLE_BIT_ECC | EVENT_XID;
/// How often a waiting call looks for new events.
const POLL: Duration = Duration::from_millis(10);
/// `gpuInstanceId`/`computeInstanceId` of an event not tied to a MIG instance.
const NO_INSTANCE: c_uint = c_uint::MAX;

/// Creates an empty event set; `NVML_ERROR_UNKNOWN` if all 16 slots are in use.
///
/// # Safety
/// `set` must be null or valid for writing one `nvmlEventSet_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            if set.is_null() {
                return INVALID_ARGUMENT;
            }
            let Some(handle) = machine
                .event_sets
                .create()
                .and_then(handle::event_set_handle)
            else {
                return UNKNOWN;
            };
            // SAFETY: forwarded caller contract.
            unsafe { write_value(set, handle) }
        })
    })
}

/// Stores the event types this GPU can raise.
///
/// # Safety
/// `types` must be null or valid for writing one `unsigned long long`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    types: *mut u64,
) -> nvmlReturn_t {
    // SAFETY: forwarded caller contract.
    guard(|| with_live_gpu(device, |_, _| unsafe { write_value(types, SUPPORTED) }))
}

/// Adds `types` of `device` to `set`; `NOT_SUPPORTED` if any type is not simulated, as
/// real NVML refuses unsupported types.
///
/// # Safety
/// None beyond passing handles from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    types: u64,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    guard(|| {
        with_live_gpu(device, |machine, index| {
            if types & !SUPPORTED != 0 {
                return NOT_SUPPORTED;
            }
            let Some(live) = handle::resolve_event_set(set).and_then(|i| machine.event_sets.get(i))
            else {
                return INVALID_ARGUMENT;
            };
            live.registered.push((index, types));
            SUCCESS
        })
    })
}

/// Waits up to `timeout_ms` for an event of `set`; `NVML_ERROR_TIMEOUT` if none came.
///
/// # Safety
/// `data` must be null or valid for writing one `nvmlEventData_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    guard(|| {
        if data.is_null() {
            return INVALID_ARGUMENT;
        }
        let Some(index) = handle::resolve_event_set(set) else {
            return INVALID_ARGUMENT;
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
        loop {
            let next = REGISTRY.with_machine(|machine| {
                drain_injections(machine);
                let live = machine.event_sets.get(index).ok_or(INVALID_ARGUMENT)?;
                Ok(live.queue.pop_front())
            });
            match next {
                None => return UNINITIALIZED,
                Some(Err(code)) => return code,
                Some(Ok(Some(event))) => {
                    let Some(device) = handle::gpu_handle(event.gpu) else {
                        return UNKNOWN;
                    };
                    let value = nvmlEventData_t {
                        device,
                        eventType: event.kind,
                        eventData: event.data,
                        gpuInstanceId: NO_INSTANCE,
                        computeInstanceId: NO_INSTANCE,
                    };
                    // SAFETY: non-null, writable by the caller's contract.
                    return unsafe { write_value(data, value) };
                }
                Some(Ok(None)) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return TIMEOUT;
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    })
}

/// Frees `set`; its pending events are dropped.
///
/// # Safety
/// None beyond passing a handle from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    guard(|| {
        with_machine(|machine| {
            let slot =
                handle::resolve_event_set(set).and_then(|i| machine.event_sets.sets.get_mut(i));
            match slot {
                Some(slot @ Some(_)) => {
                    *slot = None;
                    SUCCESS
                }
                _ => INVALID_ARGUMENT,
            }
        })
    })
}
