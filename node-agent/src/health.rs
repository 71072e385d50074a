//! GPU health: a thread that waits on NVML events (critical XIDs, double-bit ECC errors)
//! and turns the ones that mean "this GPU is broken" into [`pb::GpuHealth`] reports, which
//! the agent sends to berthd (which records them through the log and stops placing on the
//! GPU). It opens its own NVML handle on the same library: NVML's init is reference
//! counted, and an event set borrows the handle it came from, so the thread owns both.

use berth_proto::v1 as pb;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one wait blocks before the thread looks at its stop flag.
const WAIT_MS: u32 = 200;

/// XIDs that mean the GPU itself is bad, as DCGM and the NVIDIA XID catalogue class them:
/// 48 double-bit ECC, 61/62 internal microcontroller halt, 63/64 row-remapping events,
/// 74 NVLink error, 79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained /
/// uncontained ECC, 119/120 GSP errors. Others (13 graphics engine exception, 31 MMU
/// fault, 43 stopped channel…) are usually the application's fault and only logged.
pub const FATAL_XIDS: &[u64] = &[48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120];

/// The reason berthd records for an event, or `None` if it does not make the GPU
/// unhealthy.
pub fn unhealthy_reason(events: EventTypes, xid: Option<u64>) -> Option<String> {
    if events.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
        return Some("uncorrectable (double-bit) ECC error".into());
    }
    match xid {
        Some(79) => Some("XID 79: GPU has fallen off the bus".into()),
        Some(x) if FATAL_XIDS.contains(&x) => Some(format!("XID {x}")),
        _ => None,
    }
}

/// Starts the watcher on the NVML library `lib`; reports come out of the returned channel
/// until `stop` is set.
///
/// # Errors
/// NVML's, if the library cannot be loaded or no event set can be made.
pub fn watch(
    lib: Option<PathBuf>,
    stop: Arc<AtomicBool>,
) -> Result<mpsc::UnboundedReceiver<pb::GpuHealth>, NvmlError> {
    let nvml = match &lib {
        Some(path) => Nvml::builder().lib_path(path.as_os_str()).init()?,
        None => Nvml::init()?,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("berth-gpu-health".into())
        .spawn(move || {
            if let Err(e) = watch_loop(&nvml, &tx, &stop) {
                tracing::warn!("GPU health watcher stopped: {e}");
            }
        })
        .map_err(|_| NvmlError::Unknown)?;
    Ok(rx)
}

fn watch_loop(
    nvml: &Nvml,
    tx: &mpsc::UnboundedSender<pb::GpuHealth>,
    stop: &AtomicBool,
) -> Result<(), NvmlError> {
    let mut set = nvml.create_event_set()?;
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    for index in 0..nvml.device_count()? {
        let device = nvml.device_by_index(index)?;
        // Registering a lost GPU fails and would free the whole set; the inventory
        // already reports it.
        if matches!(device.memory_info(), Err(NvmlError::GpuLost)) {
            continue;
        }
        let supported = device
            .supported_event_types()
            .unwrap_or(EventTypes::empty());
        set = device
            .register_events(wanted & supported, set)
            .map_err(|e| e.error)?;
    }
    while !stop.load(Ordering::Relaxed) {
        let event = match set.wait(WAIT_MS) {
            Ok(event) => event,
            Err(NvmlError::Timeout) => continue,
            Err(e) => {
                tracing::warn!("NVML event wait failed: {e}");
                std::thread::sleep(Duration::from_millis(u64::from(WAIT_MS)));
                continue;
            }
        };
        let uuid = event.device.uuid().unwrap_or_default();
        let xid = match event.event_data {
            Some(XidError::Value(v)) => Some(v),
            _ => None,
        };
        tracing::warn!(gpu = uuid, ?xid, "NVML event {:?}", event.event_type);
        if let Some(reason) = unhealthy_reason(event.event_type, xid) {
            if tx.send(pb::GpuHealth { uuid, reason }).is_err() {
                return Ok(()); // the agent is gone
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gpu_faults_make_a_gpu_unhealthy() {
        let table = [
            (
                EventTypes::CRITICAL_XID_ERROR,
                Some(79),
                Some("XID 79: GPU has fallen off the bus"),
            ),
            (EventTypes::CRITICAL_XID_ERROR, Some(48), Some("XID 48")),
            (EventTypes::CRITICAL_XID_ERROR, Some(13), None),
            (EventTypes::CRITICAL_XID_ERROR, Some(31), None),
            (
                EventTypes::DOUBLE_BIT_ECC_ERROR,
                None,
                Some("uncorrectable (double-bit) ECC error"),
            ),
            (EventTypes::SINGLE_BIT_ECC_ERROR, None, None),
        ];
        for (i, (events, xid, want)) in table.into_iter().enumerate() {
            let got = unhealthy_reason(events, xid);
            if got.as_deref() != want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
