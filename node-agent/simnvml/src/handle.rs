//! Device handles. NVML's `nvmlDevice_t` is an opaque pointer the caller hands back on
//! every call, and a caller may hand back anything: a handle from before a shutdown, one
//! from another node's copy of this library, garbage. So a handle is the address of a slot
//! in a static table owned by this copy of the library, and it is turned back into an
//! index by arithmetic on addresses only — never dereferenced — which makes every bad
//! value detectable and no value dangerous.
//!
//! One table per kind of handle: physical GPUs, MIG devices (both `nvmlDevice_t`), GPU
//! instances, compute instances and event sets. A MIG-side handle names a *slot* (GPU,
//! GPU-instance id, compute-instance id); whether that instance exists now is the caller's
//! check, so a handle to a destroyed instance is refused, never misread.

use nvml_wrapper_sys::bindings::{
    nvmlComputeInstance_t, nvmlDevice_t, nvmlEventSet_t, nvmlGpuInstance_t,
};

use crate::machine::MAX_GPUS;
use crate::mig::{COMPUTE_INSTANCES_MAX, GPU_INSTANCES_MAX};

/// One slot. Its content is never read; only its address matters. The alignment makes
/// handles look like real heap pointers and lets misaligned values be refused outright.
#[repr(C, align(8))]
struct Slot {
    _unused: u8,
}

/// GPU-instance ids are `[1, 8)`; slot 0 of each GPU stays unused so that id = offset.
const GI_SLOTS_PER_GPU: usize = GPU_INSTANCES_MAX + 1;
const GI_SLOTS: usize = MAX_GPUS * GI_SLOTS_PER_GPU;
const CI_SLOTS: usize = GI_SLOTS * COMPUTE_INSTANCES_MAX;
/// Event sets one library copy hands out at once; an agent needs one.
pub(crate) const EVENT_SETS_MAX: usize = 16;

static GPUS: [Slot; MAX_GPUS] = [const { Slot { _unused: 0 } }; MAX_GPUS];
static MIG_DEVICES: [Slot; CI_SLOTS] = [const { Slot { _unused: 0 } }; CI_SLOTS];
static GPU_INSTANCES: [Slot; GI_SLOTS] = [const { Slot { _unused: 0 } }; GI_SLOTS];
static COMPUTE_INSTANCES: [Slot; CI_SLOTS] = [const { Slot { _unused: 0 } }; CI_SLOTS];
static EVENT_SETS: [Slot; EVENT_SETS_MAX] = [const { Slot { _unused: 0 } }; EVENT_SETS_MAX];

/// What a valid device handle designates. Whether that GPU or instance exists on the
/// loaded machine is the caller's check: the tables are sized for the largest machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRef {
    /// Physical GPU at this NVML index.
    Gpu(usize),
    /// MIG device: compute instance `ci` of GPU instance `gi` on GPU `gpu`.
    Mig(MigRef),
}

/// A compute instance (or its MIG device) by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigRef {
    pub(crate) gpu: usize,
    pub(crate) gi: u32,
    pub(crate) ci: u32,
}

fn address<T>(table: &'static [Slot], index: usize) -> Option<*mut T> {
    table
        .get(index)
        .map(|slot| std::ptr::from_ref(slot).cast_mut().cast())
}

fn index_in<T>(table: &'static [Slot], handle: *mut T) -> Option<usize> {
    let offset = handle.addr().checked_sub(table.as_ptr().addr())?;
    let size = std::mem::size_of::<Slot>();
    let index = offset / size;
    (offset % size == 0 && index < table.len()).then_some(index)
}

fn gi_slot(gpu: usize, gi: u32) -> Option<usize> {
    let gi = gi as usize;
    (gpu < MAX_GPUS && (1..GI_SLOTS_PER_GPU).contains(&gi)).then_some(gpu * GI_SLOTS_PER_GPU + gi)
}

fn ci_slot(at: MigRef) -> Option<usize> {
    let ci = at.ci as usize;
    let gi = gi_slot(at.gpu, at.gi)?;
    (ci < COMPUTE_INSTANCES_MAX).then_some(gi * COMPUTE_INSTANCES_MAX + ci)
}

fn mig_ref(slot: usize) -> MigRef {
    let gi = slot / COMPUTE_INSTANCES_MAX;
    MigRef {
        gpu: gi / GI_SLOTS_PER_GPU,
        gi: (gi % GI_SLOTS_PER_GPU) as u32,
        ci: (slot % COMPUTE_INSTANCES_MAX) as u32,
    }
}

/// The handle of GPU `index`, or `None` if `index` is not below [`MAX_GPUS`].
pub(crate) fn gpu_handle(index: usize) -> Option<nvmlDevice_t> {
    address(&GPUS, index)
}

/// The device handle of MIG device `at`, or `None` if out of the table's range.
pub(crate) fn mig_handle(at: MigRef) -> Option<nvmlDevice_t> {
    address(&MIG_DEVICES, ci_slot(at)?)
}

/// What device `handle` designates, or `None` if it is not a handle of this library copy.
pub(crate) fn resolve(handle: nvmlDevice_t) -> Option<DeviceRef> {
    if let Some(index) = index_in(&GPUS, handle) {
        return Some(DeviceRef::Gpu(index));
    }
    let slot = index_in(&MIG_DEVICES, handle)?;
    let at = mig_ref(slot);
    (at.gi != 0).then_some(DeviceRef::Mig(at))
}

/// The handle of GPU instance `gi` of GPU `gpu`.
pub(crate) fn gi_handle(gpu: usize, gi: u32) -> Option<nvmlGpuInstance_t> {
    address(&GPU_INSTANCES, gi_slot(gpu, gi)?)
}

/// (GPU, GPU-instance id) of a GPU-instance handle of this library copy.
pub(crate) fn resolve_gi(handle: nvmlGpuInstance_t) -> Option<(usize, u32)> {
    let slot = index_in(&GPU_INSTANCES, handle)?;
    let gi = (slot % GI_SLOTS_PER_GPU) as u32;
    (gi != 0).then_some((slot / GI_SLOTS_PER_GPU, gi))
}

/// The handle of compute instance `at`.
pub(crate) fn ci_handle(at: MigRef) -> Option<nvmlComputeInstance_t> {
    address(&COMPUTE_INSTANCES, ci_slot(at)?)
}

/// The compute instance a compute-instance handle of this library copy names.
pub(crate) fn resolve_ci(handle: nvmlComputeInstance_t) -> Option<MigRef> {
    let at = mig_ref(index_in(&COMPUTE_INSTANCES, handle)?);
    (at.gi != 0).then_some(at)
}

/// The handle of event set `index`.
pub(crate) fn event_set_handle(index: usize) -> Option<nvmlEventSet_t> {
    address(&EVENT_SETS, index)
}

/// The index of an event-set handle of this library copy.
pub(crate) fn resolve_event_set(handle: nvmlEventSet_t) -> Option<usize> {
    index_in(&EVENT_SETS, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handle_resolves_to_its_own_index() {
        for index in 0..MAX_GPUS {
            let handle = gpu_handle(index).expect("in range");
            assert_eq!(resolve(handle), Some(DeviceRef::Gpu(index)), "#{index}");
        }
        assert_eq!(gpu_handle(MAX_GPUS), None);
    }

    #[test]
    fn mig_side_handles_round_trip_and_do_not_cross_tables() {
        let at = MigRef {
            gpu: 5,
            gi: 7,
            ci: 3,
        };
        let mig = mig_handle(at).expect("in range");
        assert_eq!(resolve(mig), Some(DeviceRef::Mig(at)));
        let ci = ci_handle(at).expect("in range");
        assert_eq!(resolve_ci(ci), Some(at));
        assert_eq!(resolve(ci.cast()), None, "a CI handle is not a device");
        let gi = gi_handle(5, 7).expect("in range");
        assert_eq!(resolve_gi(gi), Some((5, 7)));
        assert_eq!(gi_handle(5, 0), None, "GPU-instance ids start at 1");
        assert_eq!(gi_handle(5, 8), None);
        assert_eq!(resolve_gi(ci.cast()), None);
        let set = event_set_handle(3).expect("in range");
        assert_eq!(resolve_event_set(set), Some(3));
        assert_eq!(resolve_event_set(gi.cast()), None);
    }

    #[test]
    fn foreign_and_corrupt_handles_are_refused() {
        let first = gpu_handle(0).expect("in range");
        let last = gpu_handle(MAX_GPUS - 1).expect("in range");
        let local = 0u64;
        let table = [
            std::ptr::null_mut(),
            first.wrapping_byte_sub(8),
            first.wrapping_byte_add(1),
            last.wrapping_byte_add(8),
            std::ptr::from_ref(&local).cast_mut().cast(),
            usize::MAX as nvmlDevice_t,
        ];
        for (i, handle) in table.into_iter().enumerate() {
            let got = resolve(handle);
            assert_eq!(
                got, None,
                "#{i}: resolve({handle:?}): want None, got {got:?}"
            );
        }
    }
}
