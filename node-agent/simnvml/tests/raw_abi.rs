//! NVML's C contract, checked through the raw bindings where nvml-wrapper would hide it:
//! calls before init, reference-counted init, null pointers, short buffers, bad handles,
//! struct versions and the lookup functions' error codes.

mod common;

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::ptr::null_mut;

use common::Node;
use nvml_wrapper_sys::bindings::{nvmlDevice_t, nvmlMemory_t, nvmlMemory_v2_t, NvmlLib};

const SUCCESS: u32 = 0;
const UNINITIALIZED: u32 = 1;
const INVALID_ARGUMENT: u32 = 2;
const NOT_FOUND: u32 = 6;
const INSUFFICIENT_SIZE: u32 = 7;
const ARGUMENT_VERSION_MISMATCH: u32 = 25;

fn open(node: &Node) -> NvmlLib {
    // SAFETY: the file is this crate's cdylib, whose initialisers only set up Rust's
    // runtime.
    unsafe { NvmlLib::new(&node.lib) }.expect("dlopen the installed copy")
}

fn count(lib: &NvmlLib) -> (u32, c_uint) {
    let mut count = 0;
    // SAFETY: `count` is a live c_uint.
    let code = unsafe { lib.nvmlDeviceGetCount_v2(&mut count) };
    (code, count)
}

fn handle(lib: &NvmlLib, index: c_uint) -> nvmlDevice_t {
    let mut device = null_mut();
    // SAFETY: `device` is a live handle slot.
    let code = unsafe { lib.nvmlDeviceGetHandleByIndex_v2(index, &mut device) };
    assert_eq!(code, SUCCESS, "handle {index}");
    device
}

#[test]
fn init_is_reference_counted() {
    let node = Node::builtin("a100-pcie-4", "refcount");
    let lib = open(&node);
    // SAFETY (this block and below): every call gets live pointers or none.
    unsafe {
        assert_eq!(count(&lib).0, UNINITIALIZED, "before init");
        assert_eq!(lib.nvmlShutdown(), UNINITIALIZED, "shutdown before init");
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        assert_eq!(lib.nvmlInitWithFlags(0), SUCCESS);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(count(&lib), (SUCCESS, 4), "one init left");
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(count(&lib).0, UNINITIALIZED, "after the last shutdown");
        assert_eq!(lib.nvmlShutdown(), UNINITIALIZED);
        let mut version = [0 as c_char; 80];
        let code = lib.nvmlSystemGetDriverVersion(version.as_mut_ptr(), 80);
        assert_eq!(code, UNINITIALIZED);
    }
}

#[test]
fn error_string_works_before_init() {
    let node = Node::builtin("a100-pcie-4", "errors");
    let lib = open(&node);
    // SAFETY: nvmlErrorString returns static NUL-terminated strings.
    let text = |code| unsafe { CStr::from_ptr(lib.nvmlErrorString(code)) };
    assert_eq!(text(INVALID_ARGUMENT).to_str(), Ok("Invalid Argument"));
    assert_eq!(text(UNINITIALIZED).to_str(), Ok("Uninitialized"));
    assert_eq!(text(12345).to_str(), Ok("Unknown Error"));
}

#[test]
fn bad_arguments_get_nvml_error_codes() {
    let node = Node::builtin("a100-pcie-4", "arguments");
    let lib = open(&node);
    // SAFETY (whole block): every pointer is null or to a live local of the right size;
    // lengths never exceed the buffers.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        let device = handle(&lib, 0);
        let mut buffer = [0 as c_char; 96];
        let mut value: c_uint = 0;
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        let mut found = null_mut();

        assert_eq!(lib.nvmlDeviceGetCount_v2(null_mut()), INVALID_ARGUMENT);
        assert_eq!(
            lib.nvmlDeviceGetHandleByIndex_v2(4, &mut found),
            INVALID_ARGUMENT
        );
        assert_eq!(
            lib.nvmlDeviceGetHandleByIndex_v2(0, null_mut()),
            INVALID_ARGUMENT
        );
        assert_eq!(lib.nvmlDeviceGetIndex(device, null_mut()), INVALID_ARGUMENT);
        assert_eq!(
            lib.nvmlDeviceGetName(device, null_mut(), 96),
            INVALID_ARGUMENT
        );
        let minor_ptr: *mut c_int = null_mut();
        let code = lib.nvmlDeviceGetCudaComputeCapability(device, &mut major, minor_ptr);
        assert_eq!(
            (code, major),
            (INVALID_ARGUMENT, 0),
            "no half-written output"
        );

        // "NVIDIA A100-PCIE-40GB" is 21 bytes: 21 is too small, 22 fits.
        let name = buffer.as_mut_ptr();
        assert_eq!(lib.nvmlDeviceGetName(device, name, 21), INSUFFICIENT_SIZE);
        assert_eq!(lib.nvmlDeviceGetName(device, name, 22), SUCCESS);
        assert_eq!(CStr::from_ptr(name).to_str(), Ok("NVIDIA A100-PCIE-40GB"));
        assert_eq!(lib.nvmlDeviceGetUUID(device, name, 40), INSUFFICIENT_SIZE);
        assert_eq!(lib.nvmlSystemGetDriverVersion(name, 3), INSUFFICIENT_SIZE);

        for bad in [null_mut(), 8 as nvmlDevice_t, device.wrapping_byte_add(1)] {
            assert_eq!(
                lib.nvmlDeviceGetIndex(bad, &mut value),
                INVALID_ARGUMENT,
                "{bad:?}"
            );
            let code = lib.nvmlDeviceGetCudaComputeCapability(bad, &mut major, &mut minor);
            assert_eq!(code, INVALID_ARGUMENT, "{bad:?}");
        }
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
        assert_eq!(
            lib.nvmlDeviceGetIndex(device, &mut value),
            UNINITIALIZED,
            "stale handle"
        );
    }
}

#[test]
fn lookups_find_by_uuid_and_any_bus_id_spelling() {
    let node = Node::builtin("dgx-h100", "lookups");
    let lib = open(&node);
    let uuid = node.machine.gpu_uuid(5).expect("gpu 5");
    let uuid = std::ffi::CString::new(uuid).expect("no NUL");
    // SAFETY (whole block): C strings are NUL-terminated literals or CStrings; `found`
    // and `index` are live locals.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        let mut found = null_mut();
        let mut index: c_uint = 99;
        assert_eq!(
            lib.nvmlDeviceGetHandleByUUID(uuid.as_ptr(), &mut found),
            SUCCESS
        );
        assert_eq!(lib.nvmlDeviceGetIndex(found, &mut index), SUCCESS);
        assert_eq!(index, 5);
        let other = c"GPU-00000000-0000-0000-0000-000000000000";
        assert_eq!(
            lib.nvmlDeviceGetHandleByUUID(other.as_ptr(), &mut found),
            NOT_FOUND
        );
        assert_eq!(
            lib.nvmlDeviceGetHandleByUUID(std::ptr::null(), &mut found),
            INVALID_ARGUMENT
        );

        let short_lower = c"0000:ab:00.0";
        assert_eq!(
            lib.nvmlDeviceGetHandleByPciBusId_v2(short_lower.as_ptr(), &mut found),
            SUCCESS
        );
        assert_eq!(lib.nvmlDeviceGetIndex(found, &mut index), SUCCESS);
        assert_eq!(index, 5, "AB is the sixth DGX bus");
        let absent = c"00000000:01:00.0";
        assert_eq!(
            lib.nvmlDeviceGetHandleByPciBusId_v2(absent.as_ptr(), &mut found),
            NOT_FOUND
        );
        let garbage = c"bus one";
        let code = lib.nvmlDeviceGetHandleByPciBusId_v2(garbage.as_ptr(), &mut found);
        assert_eq!(code, INVALID_ARGUMENT);
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }
}

#[test]
fn memory_info_checks_the_struct_version() {
    let node = Node::builtin("dgx-h100", "memory");
    let lib = open(&node);
    let total = 81559u64 << 20;
    // SAFETY (whole block): the structs are live locals of the layouts NVML expects.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        let device = handle(&lib, 0);
        let mut v1 = nvmlMemory_t {
            total: 0,
            free: 0,
            used: 1,
        };
        assert_eq!(lib.nvmlDeviceGetMemoryInfo(device, &mut v1), SUCCESS);
        assert_eq!((v1.total, v1.free, v1.used), (total, total, 0));

        let mut v2 = nvmlMemory_v2_t {
            version: 1,
            total: 0,
            reserved: 0,
            free: 0,
            used: 0,
        };
        let code = lib.nvmlDeviceGetMemoryInfo_v2(device, &mut v2);
        assert_eq!(
            (code, v2.total),
            (ARGUMENT_VERSION_MISMATCH, 0),
            "wrong version"
        );
        v2.version = std::mem::size_of::<nvmlMemory_v2_t>() as u32 | (2 << 24);
        assert_eq!(lib.nvmlDeviceGetMemoryInfo_v2(device, &mut v2), SUCCESS);
        assert_eq!(
            (v2.total, v2.free, v2.used, v2.reserved),
            (total, total, 0, 0)
        );
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }
}

#[test]
fn pci_info_carries_both_bus_id_forms() {
    let node = Node::builtin("dgx-h100", "pci");
    let lib = open(&node);
    // SAFETY (whole block): the struct is a live local; its arrays are NUL-terminated
    // by the callee on success.
    unsafe {
        assert_eq!(lib.nvmlInit_v2(), SUCCESS);
        let device = handle(&lib, 1);
        let mut info = std::mem::zeroed();
        assert_eq!(lib.nvmlDeviceGetPciInfo_v3(device, &mut info), SUCCESS);
        let legacy = CStr::from_ptr(info.busIdLegacy.as_ptr());
        assert_eq!(legacy.to_str(), Ok("0000:2A:00.0"));
        assert_eq!(
            CStr::from_ptr(info.busId.as_ptr()).to_str(),
            Ok("00000000:2A:00.0")
        );
        assert_eq!((info.bus, info.pciDeviceId), (0x2A, 0x2330_10DE));
        assert_eq!(lib.nvmlShutdown(), SUCCESS);
    }
}
