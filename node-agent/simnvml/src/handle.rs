//! Device handles. NVML's `nvmlDevice_t` is an opaque pointer the caller hands back on
//! every call, and a caller may hand back anything: a handle from before a shutdown, one
//! from another node's copy of this library, garbage. So a handle is the address of a slot
//! in a static table owned by this copy of the library, and it is turned back into an
//! index by arithmetic on addresses only — never dereferenced — which makes every bad
//! value detectable and no value dangerous.
//!
//! Slots `[0, MAX_GPUS)` are the physical GPUs. MIG devices, which NVML also names with an
//! `nvmlDevice_t`, will get a second range of slots and a second [`DeviceRef`] variant.

use nvml_wrapper_sys::bindings::nvmlDevice_t;

use crate::machine::MAX_GPUS;

/// One slot. Its content is never read; only its address matters. The alignment makes
/// handles look like real heap pointers and lets misaligned values be refused outright.
#[repr(C, align(8))]
struct Slot {
    _unused: u8,
}

static SLOTS: [Slot; MAX_GPUS] = [const { Slot { _unused: 0 } }; MAX_GPUS];

/// What a valid handle designates. Whether that GPU exists on the loaded machine is the
/// caller's check: the table is sized for the largest machine, not the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeviceRef {
    /// Physical GPU at this NVML index.
    Gpu(usize),
}

/// The handle of GPU `index`, or `None` if `index` is not below [`MAX_GPUS`].
pub(crate) fn gpu_handle(index: usize) -> Option<nvmlDevice_t> {
    SLOTS
        .get(index)
        .map(|slot| std::ptr::from_ref(slot).cast_mut().cast())
}

/// What `handle` designates, or `None` if it is not a handle of this library copy.
pub(crate) fn resolve(handle: nvmlDevice_t) -> Option<DeviceRef> {
    let offset = handle.addr().checked_sub(SLOTS.as_ptr().addr())?;
    let size = std::mem::size_of::<Slot>();
    let index = offset / size;
    (offset % size == 0 && index < SLOTS.len()).then_some(DeviceRef::Gpu(index))
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
