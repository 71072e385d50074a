//! What the outside world does to a simulated machine while it runs: telemetry (load,
//! memory used, power, temperature) and faults (XID errors, ECC errors, a GPU falling off
//! the bus). Tests and people drive it with two files in the node directory:
//!
//! - `telemetry.json`, read on every telemetry query:
//!   `{"gpus": [{"index": 0, "utilization_gpu": 87, "utilization_memory": 40,
//!   "memory_used_mb": 30000, "power_w": 612, "temperature_c": 71}]}` (every field but
//!   `index` optional; GPUs not listed are idle);
//! - `inject.jsonl`, one fault per line: `{"gpu": 3, "xid": 79}`, `{"gpu": 3, "ecc":
//!   "double"}` (or `"single"`), `{"gpu": 3, "lost": true}`. The next `nvmlEventSetWait`
//!   of any event set renames the file to `inject.jsonl.consumed` and applies each line:
//!   counters and the lost flag change (and are persisted), and an event goes to every set
//!   registered for that GPU and event type. A lost GPU also raises XID 79, as real ones
//!   do ("GPU has fallen off the bus"). Malformed lines are reported on stderr and skipped.

use std::collections::VecDeque;
use std::path::Path;

use serde::Deserialize;

use crate::handle::EVENT_SETS_MAX;
use crate::state::SimMachine;

/// Telemetry file name in the node directory.
pub const TELEMETRY_FILE_NAME: &str = "telemetry.json";
/// Fault-injection file name in the node directory.
pub const INJECT_FILE_NAME: &str = "inject.jsonl";

/// Injects the faults of `lines` (the `inject.jsonl` format) into the simulated node whose
/// directory is `dir`. The file is written beside and renamed into place: the library may
/// take (rename) `inject.jsonl` at any moment, and a plain write could be taken between
/// creating the file and writing its lines, losing them.
///
/// # Errors
/// The IO error of the write or the rename.
pub fn inject(dir: &std::path::Path, lines: &str) -> std::io::Result<()> {
    let staged = dir.join(format!("{INJECT_FILE_NAME}.writing"));
    std::fs::write(&staged, lines)?;
    std::fs::rename(&staged, dir.join(INJECT_FILE_NAME))
}

/// `nvmlEventType*` bits the simulator can raise.
pub(crate) const EVENT_SINGLE_BIT_ECC: u64 = 0x1;
pub(crate) const EVENT_DOUBLE_BIT_ECC: u64 = 0x2;
pub(crate) const EVENT_XID: u64 = 0x8;
/// XID the driver logs when a GPU falls off the bus.
pub(crate) const XID_FELL_OFF_BUS: u64 = 79;

/// One event waiting in a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SimEvent {
    pub(crate) gpu: usize,
    pub(crate) kind: u64,
    pub(crate) data: u64,
}

/// One event set: which GPUs it listens to, and what it has not delivered yet.
#[derive(Debug, Default)]
pub(crate) struct EventSet {
    pub(crate) registered: Vec<(usize, u64)>,
    pub(crate) queue: VecDeque<SimEvent>,
}

/// Event sets by handle index; `None` is a free slot.
#[derive(Debug, Default)]
pub(crate) struct EventSets {
    pub(crate) sets: Vec<Option<EventSet>>,
}

impl EventSets {
    /// A new set's index, or `None` if [`EVENT_SETS_MAX`] are in use.
    pub(crate) fn create(&mut self) -> Option<usize> {
        if let Some(free) = self.sets.iter().position(Option::is_none) {
            self.sets[free] = Some(EventSet::default());
            return Some(free);
        }
        (self.sets.len() < EVENT_SETS_MAX).then(|| {
            self.sets.push(Some(EventSet::default()));
            self.sets.len() - 1
        })
    }

    /// The live set at `index`.
    pub(crate) fn get(&mut self, index: usize) -> Option<&mut EventSet> {
        self.sets.get_mut(index)?.as_mut()
    }

    /// Queues `event` on every set registered for its GPU and kind.
    fn deliver(&mut self, event: SimEvent) {
        for set in self.sets.iter_mut().flatten() {
            let wants = set
                .registered
                .iter()
                .any(|&(gpu, mask)| gpu == event.gpu && mask & event.kind != 0);
            if wants {
                set.queue.push_back(event);
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EccKind {
    Single,
    Double,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Injection {
    gpu: usize,
    #[serde(default)]
    xid: Option<u64>,
    #[serde(default)]
    ecc: Option<EccKind>,
    #[serde(default)]
    lost: bool,
}

/// Takes `inject.jsonl` (if any) and applies its faults; see the module docs.
pub(crate) fn drain_injections(machine: &mut SimMachine) {
    let Some(dir) = machine.dir.clone() else {
        return;
    };
    let path = dir.join(INJECT_FILE_NAME);
    let taken = dir.join(format!("{INJECT_FILE_NAME}.consumed"));
    // Rename first: a writer appending meanwhile keeps its lines for the next drain.
    if std::fs::rename(&path, &taken).is_err() {
        return;
    }
    let text = std::fs::read_to_string(&taken).unwrap_or_default();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Injection>(line) {
            Ok(injection) if injection.gpu < machine.gpus.len() => apply(machine, &injection),
            Ok(injection) => crate::ffi::log(&format!(
                "{}:{}: no GPU {}",
                path.display(),
                n + 1,
                injection.gpu
            )),
            Err(e) => crate::ffi::log(&format!("{}:{}: {e}", path.display(), n + 1)),
        }
    }
}

fn apply(machine: &mut SimMachine, injection: &Injection) {
    let gpu = injection.gpu;
    let mut events = Vec::new();
    if let Some(xid) = injection.xid {
        events.push((EVENT_XID, xid));
    }
    let changed = machine.mutate(gpu, |state, _| -> Result<(), ()> {
        match injection.ecc {
            Some(EccKind::Single) => state.ecc_corrected += 1,
            Some(EccKind::Double) => state.ecc_uncorrected += 1,
            None => {}
        }
        state.lost |= injection.lost;
        Ok(())
    });
    if changed.is_ok() {
        match injection.ecc {
            Some(EccKind::Single) => events.push((EVENT_SINGLE_BIT_ECC, 0)),
            Some(EccKind::Double) => events.push((EVENT_DOUBLE_BIT_ECC, 0)),
            None => {}
        }
        if injection.lost {
            events.push((EVENT_XID, XID_FELL_OFF_BUS));
        }
    }
    for (kind, data) in events {
        machine.event_sets.deliver(SimEvent { gpu, kind, data });
    }
}

/// Telemetry of one GPU; `None` fields mean idle.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Telemetry {
    pub(crate) index: usize,
    #[serde(default)]
    pub(crate) utilization_gpu: Option<u32>,
    #[serde(default)]
    pub(crate) utilization_memory: Option<u32>,
    #[serde(default)]
    pub(crate) memory_used_mb: Option<u64>,
    #[serde(default)]
    pub(crate) power_w: Option<u32>,
    #[serde(default)]
    pub(crate) temperature_c: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryFile {
    gpus: Vec<Telemetry>,
}

/// GPU `index`'s telemetry from `dir/telemetry.json`: idle if there is no file or no entry.
///
/// # Errors
/// A message naming the file if it exists but is malformed (the query then fails with
/// `NVML_ERROR_UNKNOWN` rather than report made-up numbers).
pub(crate) fn telemetry(dir: Option<&Path>, index: usize) -> Result<Telemetry, String> {
    let idle = Telemetry {
        index,
        ..Telemetry::default()
    };
    let Some(dir) = dir else { return Ok(idle) };
    let path = dir.join(TELEMETRY_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(idle),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: TelemetryFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file
        .gpus
        .into_iter()
        .find(|t| t.index == index)
        .unwrap_or(idle))
}
