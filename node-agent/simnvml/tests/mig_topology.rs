//! The new simulated NVML surface seen through nvml-wrapper (and its raw bindings, for the
//! MIG calls it does not wrap), exactly as the agent sees it: topology, MIG rules,
//! persistence across processes, telemetry and injected faults.

mod common;

use common::Node;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::TopologyLevel;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings as sys;

fn raw_placements(nvml: &Nvml, device: &Device, profile_id: u32) -> Result<Vec<(u32, u32)>, u32> {
    let lib = nvml.lib();
    let mut count = 0u32;
    // SAFETY: a live handle; a null buffer asks for the count only.
    let rc = unsafe {
        lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            device.handle(),
            profile_id,
            std::ptr::null_mut(),
            &mut count,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: `out` holds `count` placements.
    let rc = unsafe {
        lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(
            device.handle(),
            profile_id,
            out.as_mut_ptr(),
            &mut count,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    Ok(out.iter().map(|p| (p.start, p.size)).collect())
}

fn create_gi(
    nvml: &Nvml,
    device: &Device,
    profile_id: u32,
    start: u32,
    size: u32,
) -> Result<sys::nvmlGpuInstance_t, u32> {
    let placement = sys::nvmlGpuInstancePlacement_t { start, size };
    let mut gi: sys::nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: valid pointers to locals and a live handle.
    let rc = unsafe {
        nvml.lib().nvmlDeviceCreateGpuInstanceWithPlacement(
            device.handle(),
            profile_id,
            &placement,
            &mut gi,
        )
    };
    if rc == 0 {
        Ok(gi)
    } else {
        Err(rc)
    }
}

fn create_ci(
    nvml: &Nvml,
    gi: sys::nvmlGpuInstance_t,
    profile: u32,
) -> Result<sys::nvmlComputeInstance_t, u32> {
    let mut ci: sys::nvmlComputeInstance_t = std::ptr::null_mut();
    // SAFETY: a live GI handle and a local out pointer.
    let rc = unsafe {
        nvml.lib()
            .nvmlGpuInstanceCreateComputeInstance(gi, profile, &mut ci)
    };
    if rc == 0 {
        Ok(ci)
    } else {
        Err(rc)
    }
}

const INVALID_ARGUMENT: u32 = 2;
const NOT_SUPPORTED: u32 = 3;
const IN_USE: u32 = 19;
const INSUFFICIENT_RESOURCES: u32 = 23;

#[test]
fn dgx_h100_topology_numa_and_nvswitch() {
    let node = Node::builtin("dgx-h100", "t1");
    let nvml = node.init();
    let d0 = nvml.device_by_index(0).expect("gpu 0");
    let d1 = nvml.device_by_index(1).expect("gpu 1");
    let d7 = nvml.device_by_index(7).expect("gpu 7");
    assert_eq!(d0.numa_node_id().expect("numa"), 0);
    assert_eq!(d7.numa_node_id().expect("numa"), 1);
    // 224 CPUs over 2 nodes: GPU 7 is near CPUs 112..224: bits 48.. of word 1 to bit 31 of word 3.
    let mask = d7.cpu_affinity(4).expect("affinity");
    assert_eq!(mask, [0, 0xFFFF_0000_0000_0000, u64::MAX, 0xFFFF_FFFF]);
    let links: Vec<bool> = (0..18)
        .map(|l| d0.link_wrapper_for(l).is_active().expect("state"))
        .collect();
    assert_eq!(links, vec![true; 18]);
    let remote = d0.link_wrapper_for(3).remote_pci_info().expect("remote");
    assert!(
        remote.bus_id.starts_with("00000001:"),
        "an NVSwitch: {}",
        remote.bus_id
    );
    assert_eq!(
        d0.topology_common_ancestor(d1).expect("topo"),
        TopologyLevel::Node
    );
    let d7 = nvml.device_by_index(7).expect("gpu 7");
    assert_eq!(
        d0.topology_common_ancestor(d7).expect("topo"),
        TopologyLevel::System
    );
    assert_eq!(d0.cuda_compute_capability().expect("cc").major, 9);
}

#[test]
fn l40s_pairs_share_a_pcie_switch_and_have_no_nvlink_or_mig() {
    let node = Node::builtin("pcie-l40s-4", "t2");
    let nvml = node.init();
    let d = |i| nvml.device_by_index(i).expect("gpu");
    assert_eq!(
        d(0).topology_common_ancestor(d(1)).expect("topo"),
        TopologyLevel::Single
    );
    assert_eq!(
        d(1).topology_common_ancestor(d(2)).expect("topo"),
        TopologyLevel::System
    );
    assert!(matches!(
        d(0).link_wrapper_for(0).is_active(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(d(0).mig_mode(), Err(NvmlError::NotSupported)));
    assert!(matches!(d(0).profile_info(0), Err(NvmlError::NotSupported)));
}

#[test]
fn profiles_are_the_cards_own_ids_and_placements_need_mig_on() {
    let node = Node::builtin("dgx-h100", "t3");
    let nvml = node.init();
    let d0 = nvml.device_by_index(0).expect("gpu 0");
    let mode = d0.mig_mode().expect("mig mode");
    assert_eq!((mode.current, mode.pending), (0, 0), "MIG off on the DGX");
    // Profile index → id on H100 (interfaces.md): 0→19, 1→14, 2→9, 3→5, 4→0, 7→20, 9→15.
    let ids: Vec<(u32, u32, u32)> = [0, 1, 2, 3, 4, 7, 9]
        .iter()
        .map(|&i| {
            let p = d0.profile_info(i).expect("profile");
            (i, p.id, p.instance_count)
        })
        .collect();
    assert_eq!(
        ids,
        [
            (0, 19, 7),
            (1, 14, 3),
            (2, 9, 2),
            (3, 5, 1),
            (4, 0, 1),
            (7, 20, 1),
            (9, 15, 4)
        ]
    );
    assert!(
        matches!(d0.profile_info(5), Err(NvmlError::NotSupported)),
        "8-slice is not on H100"
    );
    assert!(matches!(d0.profile_info(17), Err(NvmlError::InvalidArg)));
    assert_eq!(raw_placements(&nvml, &d0, 9), Err(NOT_SUPPORTED), "MIG off");
    assert_eq!(
        create_gi(&nvml, &d0, 9, 0, 4).err(),
        Some(NOT_SUPPORTED),
        "MIG off: never created"
    );
    assert_eq!(d0.mig_device_count().expect("max"), 0);

    let a100 = Node::builtin("a100-mig", "t3b");
    let nvml = a100.init();
    let d = nvml.device_by_index(0).expect("gpu 0");
    // A100-40GB: 1g.10gb is profile 15, with 2 memory slices at 0, 2, 4, 6.
    assert_eq!(d.profile_info(9).expect("1g.10gb").id, 15);
    assert_eq!(
        raw_placements(&nvml, &d, 15),
        Ok(vec![(0, 2), (2, 2), (4, 2), (6, 2)])
    );
    assert_eq!(raw_placements(&nvml, &d, 9), Ok(vec![(0, 4), (4, 4)]));
    assert_eq!(raw_placements(&nvml, &d, 42), Err(INVALID_ARGUMENT));
}

#[test]
fn mig_sequences_through_the_c_interface() {
    let node = Node::builtin("a100-mig", "t4");
    let nvml = node.init();
    let d = nvml.device_by_index(1).expect("gpu 1");
    assert_eq!(
        create_gi(&nvml, &d, 9, 2, 4).err(),
        Some(INVALID_ARGUMENT),
        "3g cannot start at 2"
    );
    let gi = create_gi(&nvml, &d, 9, 4, 4).expect("3g.20gb at 4");
    assert_eq!(
        create_gi(&nvml, &d, 14, 4, 2).err(),
        Some(INSUFFICIENT_RESOURCES),
        "overlap"
    );
    let ci = create_ci(&nvml, gi, 2).expect("3c compute instance");
    // SAFETY: a live GI handle.
    assert_eq!(unsafe { nvml.lib().nvmlGpuInstanceDestroy(gi) }, IN_USE);
    let mig = d.mig_device_by_index(0).expect("one MIG device");
    assert!(mig.mig_is_mig_device_handle().expect("is mig"));
    let uuid = mig.uuid().expect("MIG uuid");
    assert!(uuid.starts_with("MIG-") && uuid.len() == 40, "{uuid}");
    assert!(matches!(d.mig_device_by_index(1), Err(NvmlError::NotFound)));
    assert_eq!(d.mig_device_count().expect("max"), 7);
    // SAFETY: live handles, destroyed in the order NVML requires.
    unsafe {
        assert_eq!(nvml.lib().nvmlComputeInstanceDestroy(ci), 0);
        assert_eq!(nvml.lib().nvmlGpuInstanceDestroy(gi), 0);
        assert_eq!(
            nvml.lib().nvmlGpuInstanceDestroy(gi),
            INVALID_ARGUMENT,
            "gone"
        );
    }
    assert!(mig.uuid().is_err(), "a destroyed MIG device has no UUID");
}

fn gpu_instances(nvml: &Nvml, device: &Device, profile_id: u32) -> Vec<(u32, u32, u32)> {
    let mut gis = [std::ptr::null_mut(); 7];
    let mut count = 0u32;
    // SAFETY: 7 slots is every profile's instanceCount or more.
    let rc = unsafe {
        nvml.lib().nvmlDeviceGetGpuInstances(
            device.handle(),
            profile_id,
            gis.as_mut_ptr(),
            &mut count,
        )
    };
    assert_eq!(rc, 0);
    gis[..count as usize]
        .iter()
        .map(|&gi| {
            // SAFETY: all-zero is a valid info struct (pointers and integers).
            let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a handle NVML just returned.
            assert_eq!(
                unsafe { nvml.lib().nvmlGpuInstanceGetInfo(gi, &mut info) },
                0
            );
            (info.id, info.placement.start, info.placement.size)
        })
        .collect()
}

#[test]
fn mig_instances_survive_a_restart_and_a_bad_state_file_fails_init() {
    let node = Node::builtin("a100-mig", "t5");
    let uuid = {
        let nvml = node.init();
        let d = nvml.device_by_index(2).expect("gpu 2");
        let gi = create_gi(&nvml, &d, 14, 2, 2).expect("2g at 2");
        create_ci(&nvml, gi, 1).expect("ci");
        d.mig_device_by_index(0).expect("mig").uuid().expect("uuid")
    }; // nvmlShutdown: the process's view is gone, the driver's state is not.
    let nvml = node.init();
    let d = nvml.device_by_index(2).expect("gpu 2");
    assert_eq!(gpu_instances(&nvml, &d, 14), [(1, 2, 2)]);
    assert_eq!(
        d.mig_device_by_index(0).expect("mig").uuid().expect("uuid"),
        uuid,
        "stable UUID"
    );
    drop(nvml);

    let state = node.dir.path().join(berth_simnvml::STATE_FILE_NAME);
    let text = std::fs::read_to_string(&state).expect("state saved");
    let bad = text.replacen("\"start\": 2", "\"start\": 3", 1);
    std::fs::write(&state, &bad).expect("write");
    assert!(
        matches!(node.try_init(), Err(NvmlError::Unknown)),
        "2g at 3 is impossible"
    );
    assert_eq!(
        std::fs::read_to_string(&state).expect("read"),
        bad,
        "left for a person to see"
    );
}

#[test]
fn telemetry_and_injected_faults() {
    let node = Node::builtin("dgx-h100", "t6");
    let nvml = node.init();
    let d3 = nvml.device_by_index(3).expect("gpu 3");
    assert_eq!(
        d3.utilization_rates().expect("util").gpu,
        0,
        "idle without telemetry"
    );
    assert_eq!(d3.power_usage().expect("power"), 72_000);
    std::fs::write(
        node.dir.path().join(berth_simnvml::TELEMETRY_FILE_NAME),
        r#"{"gpus": [{"index": 3, "utilization_gpu": 87, "memory_used_mb": 1024, "power_w": 612, "temperature_c": 71}]}"#,
    )
    .expect("telemetry");
    assert_eq!(d3.utilization_rates().expect("util").gpu, 87);
    assert_eq!(d3.memory_info().expect("mem").used, 1024 << 20);
    assert_eq!(d3.power_usage().expect("power"), 612_000);
    assert_eq!(d3.temperature(TemperatureSensor::Gpu).expect("temp"), 71);
    assert!(d3.is_ecc_enabled().expect("ecc").currently_enabled);

    let set = nvml.create_event_set().expect("set");
    let types = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
    let set = d3.register_events(types, set).expect("register");
    assert!(matches!(set.wait(20), Err(NvmlError::Timeout)));
    berth_simnvml::inject(
        node.dir.path(),
        "{\"gpu\": 3, \"xid\": 48}\nnot json\n{\"gpu\": 3, \"ecc\": \"double\"}\n{\"gpu\": 3, \"lost\": true}\n",
    )
    .expect("inject");
    let got: Vec<(u32, Option<u64>)> = (0..3)
        .map(|_| {
            let e = set.wait(1000).expect("event");
            let xid = match e.event_data {
                Some(XidError::Value(v)) => Some(v),
                _ => None,
            };
            (e.device.index().expect("index"), xid)
        })
        .collect();
    assert_eq!(got, [(3, Some(48)), (3, None), (3, Some(79))]);
    assert!(matches!(d3.memory_info(), Err(NvmlError::GpuLost)));
    assert!(
        d3.uuid().is_ok(),
        "identity survives, so the agent can say which GPU is lost"
    );
    let d2 = nvml.device_by_index(2).expect("gpu 2");
    assert_eq!(
        d2.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .expect("ecc"),
        0
    );
    drop(set);
    drop(nvml);
    let nvml = node.init();
    let d3 = nvml.device_by_index(3).expect("gpu 3");
    assert!(
        matches!(d3.power_usage(), Err(NvmlError::GpuLost)),
        "lost stays lost"
    );
}

#[test]
fn malformed_telemetry_is_an_error_not_made_up_numbers() {
    let node = Node::builtin("pcie-l40s-4", "t7");
    let nvml = node.init();
    let d = nvml.device_by_index(0).expect("gpu 0");
    let path = node.dir.path().join(berth_simnvml::TELEMETRY_FILE_NAME);
    std::fs::write(&path, r#"{"gpus": [{"index": 0, "utilisation": 5}]}"#).expect("write");
    assert!(matches!(d.utilization_rates(), Err(NvmlError::Unknown)));
    assert!(matches!(d.memory_info(), Err(NvmlError::Unknown)));
    std::fs::write(&path, r#"{"gpus": [{"index": 0, "utilization_gpu": 5}]}"#).expect("write");
    assert_eq!(d.utilization_rates().expect("fixed").gpu, 5);
}
