//! The global state of one loaded copy of the library. NVML is a process-wide singleton
//! with a reference-counted init, and each copy of this library (one per simulated node) is
//! one such singleton, because its statics are its own. Everything the exported functions
//! read sits behind one mutex: queries are rare and small, and one lock keeps the mutable
//! state later work adds (MIG instances, ECC counters, pending XID events) consistent with
//! the description for free.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::events::EventSets;
use crate::machine::ResolvedGpu;
use crate::persist::DeviceState;
use crate::{Error, MachineDescription};

/// The machine as loaded at the first `nvmlInit`, with every default applied, plus what
/// changes while it runs: MIG instances, ECC counters, lost GPUs (persisted, see
/// `persist`) and event sets (not persisted: real event sets die with their process).
#[derive(Debug)]
pub(crate) struct SimMachine {
    pub(crate) description: MachineDescription,
    pub(crate) gpus: Vec<ResolvedGpu>,
    /// One per GPU, index order.
    pub(crate) devices: Vec<DeviceState>,
    /// Directory of `machine.json`: where the state file, telemetry and injected events
    /// live. `None` for machines built in memory (unit tests): nothing is persisted.
    pub(crate) dir: Option<PathBuf>,
    pub(crate) event_sets: EventSets,
}

impl SimMachine {
    /// A machine with no MIG instances and nothing persisted.
    ///
    /// # Errors
    /// Those of [`MachineDescription::validate`].
    pub(crate) fn new(description: MachineDescription) -> Result<Self, Error> {
        let gpus = description.resolve()?;
        let devices = vec![DeviceState::default(); gpus.len()];
        Ok(SimMachine {
            description,
            gpus,
            devices,
            dir: None,
            event_sets: EventSets::default(),
        })
    }

    /// The machine whose files are in `dir`, with the device state saved there by an
    /// earlier process (the real driver keeps MIG instances across process restarts).
    ///
    /// # Errors
    /// Those of [`MachineDescription::validate`]; [`Error::Invalid`] or [`Error::Io`] if the
    /// state file exists but cannot be read or does not fit the machine.
    pub(crate) fn load(description: MachineDescription, dir: PathBuf) -> Result<Self, Error> {
        let mut machine = SimMachine::new(description)?;
        if let Some(devices) = crate::persist::load(&dir, &machine.gpus)? {
            machine.devices = devices;
        }
        machine.dir = Some(dir);
        Ok(machine)
    }

    /// Applies `change` to GPU `index`'s state and saves it; if saving fails the change is
    /// undone, so memory never claims what the file does not hold.
    ///
    /// # Errors
    /// `change`'s error, or `Err(None)` if the state could not be saved.
    pub(crate) fn mutate<T, E>(
        &mut self,
        index: usize,
        change: impl FnOnce(&mut DeviceState, &ResolvedGpu) -> Result<T, E>,
    ) -> Result<T, Option<E>> {
        let before = self.devices[index].clone();
        let value = change(&mut self.devices[index], &self.gpus[index]).map_err(Some)?;
        if let Some(dir) = &self.dir {
            if let Err(e) = crate::persist::save(dir, &self.devices) {
                crate::ffi::log(&format!("cannot save device state: {e}"));
                self.devices[index] = before;
                return Err(None);
            }
        }
        Ok(value)
    }
}

/// Init reference count plus the machine, which exists exactly while the count is
/// positive: a full shutdown drops it and the next init reads the description afresh,
/// as real NVML re-probes the driver.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

struct Inner {
    init_count: u32,
    machine: Option<SimMachine>,
}

/// The one registry of this library copy.
pub(crate) static REGISTRY: Registry = Registry::new();

impl Registry {
    pub(crate) const fn new() -> Self {
        Registry {
            inner: Mutex::new(Inner {
                init_count: 0,
                machine: None,
            }),
        }
    }

    /// Counts one init; the first calls `load`. The lock is held while loading so that a
    /// concurrent init waits for the machine instead of seeing a count without one.
    ///
    /// # Errors
    /// `load`'s message, leaving the count unchanged; or a message if the count would
    /// overflow.
    pub(crate) fn init(
        &self,
        load: impl FnOnce() -> Result<SimMachine, String>,
    ) -> Result<(), String> {
        let mut inner = self.lock();
        if inner.init_count == 0 {
            inner.machine = Some(load()?);
        }
        inner.init_count = inner
            .init_count
            .checked_add(1)
            .ok_or("nvmlInit called 2^32 times without nvmlShutdown")?;
        Ok(())
    }

    /// Counts one shutdown; the last drops the machine. Returns `false` (and changes
    /// nothing) if the library was not initialised.
    pub(crate) fn shutdown(&self) -> bool {
        let mut inner = self.lock();
        if inner.init_count == 0 {
            return false;
        }
        inner.init_count -= 1;
        if inner.init_count == 0 {
            inner.machine = None;
        }
        true
    }

    /// Runs `f` on the machine under the lock; `None` if the library is not initialised.
    pub(crate) fn with_machine<R>(&self, f: impl FnOnce(&mut SimMachine) -> R) -> Option<R> {
        self.lock().machine.as_mut().map(f)
    }

    /// A panic while the lock was held cannot have left `Inner` half-updated (every
    /// update is a single assignment after the fallible work), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Result<SimMachine, String> {
        let description = crate::builtin("a100-pcie-4").expect("shipped");
        SimMachine::new(description).map_err(|e| e.to_string())
    }

    #[test]
    fn init_is_reference_counted_and_loads_once() {
        let registry = Registry::new();
        assert_eq!(registry.with_machine(|_| ()), None, "before init");
        registry.init(machine).expect("first init");
        registry
            .init(|| panic!("a second init must not reload"))
            .expect("second init");
        assert!(registry.shutdown());
        assert_eq!(
            registry.with_machine(|m| m.gpus.len()),
            Some(4),
            "one init left"
        );
        assert!(registry.shutdown());
        assert_eq!(registry.with_machine(|_| ()), None, "after last shutdown");
        assert!(!registry.shutdown(), "shutdown without init");
    }

    #[test]
    fn failed_load_leaves_the_registry_uninitialised() {
        let registry = Registry::new();
        let err = registry
            .init(|| Err("no file".into()))
            .expect_err("must fail");
        assert_eq!(err, "no file");
        assert_eq!(registry.with_machine(|_| ()), None);
        assert!(!registry.shutdown());
        registry.init(machine).expect("init after a failure");
        assert_eq!(registry.with_machine(|m| m.gpus.len()), Some(4));
    }
}
