//! The simulated library seen through nvml-wrapper 0.13, exactly as the agent sees it:
//! every inventory field of both shipped machines, several nodes in one process, bad
//! descriptions, and init/shutdown from several threads.

mod common;

use std::collections::HashSet;

use berth_simnvml::{builtin_names, MachineDescription};
use common::{uuids, Node};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

/// Every field the agent's inventory reads, for every GPU, against the description.
fn check_inventory(node: &Node) {
    let nvml = node.init();
    let machine = &node.machine;
    assert_eq!(
        nvml.sys_driver_version().expect("driver"),
        machine.driver_version
    );
    assert_eq!(
        nvml.sys_nvml_version().expect("nvml version"),
        machine.nvml_version
    );
    let cuda = nvml.sys_cuda_driver_version().expect("cuda version");
    assert_eq!(cuda, machine.cuda_driver_version);
    let count = nvml.device_count().expect("device_count");
    assert_eq!(count as usize, machine.gpus.len(), "{}", machine.name);
    for index in 0..count {
        check_gpu(&nvml, machine, index);
    }
    assert!(matches!(
        nvml.device_by_index(count),
        Err(NvmlError::InvalidArg)
    ));
    nvml.shutdown().expect("shutdown");
}

fn check_gpu(nvml: &Nvml, machine: &MachineDescription, index: u32) {
    let i = index as usize;
    let gpu = &machine.gpus[i];
    let device = nvml.device_by_index(index).expect("device_by_index");
    let uuid = machine.gpu_uuid(i).expect("gpu exists");
    assert_eq!(device.index().expect("index"), index);
    assert_eq!(device.name().expect("name"), gpu.name);
    assert_eq!(device.uuid().expect("uuid"), uuid);
    assert_eq!(device.minor_number().expect("minor"), index);
    let memory = device.memory_info().expect("memory_info (v2)");
    assert_eq!(
        memory.total,
        gpu.memory_mb * 1024 * 1024,
        "#{i} total bytes"
    );
    assert_eq!(
        (memory.free, memory.used),
        (memory.total, 0),
        "#{i} idle GPU"
    );
    let pci = device.pci_info().expect("pci_info");
    assert_eq!(pci.bus_id, gpu.pci_bus_id.to_uppercase(), "#{i} bus id");
    assert_eq!(
        format!("{:02X}", pci.bus),
        gpu.pci_bus_id[9..11],
        "#{i} bus"
    );
    assert_eq!((pci.domain, pci.device), (0, 0), "#{i}");
    let want_device_id = gpu.pci_device_id.as_deref().expect("shipped with an id");
    assert_eq!(format!("0x{:08X}", pci.pci_device_id), want_device_id);
    let capability = device.cuda_compute_capability().expect("capability");
    let want = gpu.compute_capability;
    assert_eq!(
        [capability.major, capability.minor],
        [want[0] as i32, want[1] as i32]
    );

    let by_uuid = nvml.device_by_uuid(uuid.as_str()).expect("device_by_uuid");
    assert_eq!(
        by_uuid.index().expect("index"),
        index,
        "device_by_uuid({uuid})"
    );
    let by_bus = nvml
        .device_by_pci_bus_id(pci.bus_id.as_str())
        .expect("by bus id");
    assert_eq!(
        by_bus.index().expect("index"),
        index,
        "device_by_pci_bus_id"
    );
}

#[test]
fn shipped_machines_report_their_description_through_nvml_wrapper() {
    for name in builtin_names() {
        check_inventory(&Node::builtin(name, &format!("inventory-{name}")));
    }
}

#[test]
fn dgx_h100_looks_like_the_real_box() {
    let node = Node::builtin("dgx-h100", "dgx1");
    let nvml = node.init();
    assert_eq!(nvml.device_count().expect("count"), 8);
    let last = nvml.device_by_index(7).expect("gpu 7");
    assert_eq!(last.name().expect("name"), "NVIDIA H100 80GB HBM3");
    assert_eq!(last.pci_info().expect("pci").bus_id, "00000000:DB:00.0");
    assert_eq!(
        last.memory_info().expect("memory").total,
        81559 * 1024 * 1024
    );
}

#[test]
fn two_nodes_in_one_process_have_independent_state() {
    let a = Node::builtin("dgx-h100", "node-a");
    let b = Node::builtin("dgx-h100", "node-b");
    let nvml_a = a.init();
    let nvml_b = b.init();
    let (uuids_a, uuids_b) = (uuids(&nvml_a), uuids(&nvml_b));
    let set_a: HashSet<&String> = uuids_a.iter().collect();
    assert_eq!(set_a.len(), 8, "{uuids_a:?}");
    assert!(
        uuids_b.iter().all(|u| !set_a.contains(u)),
        "{uuids_a:?} vs {uuids_b:?}"
    );
    assert!(matches!(
        nvml_b.device_by_uuid(uuids_a[0].as_str()),
        Err(NvmlError::NotFound)
    ));

    // A handle from node a's library copy means nothing to node b's.
    let device_a = nvml_a.device_by_index(3).expect("device");
    let mut index = 0;
    // SAFETY: the handle is only passed to NVML, which must validate it; `index` is a
    // live u32.
    let code = unsafe {
        nvml_b
            .lib()
            .nvmlDeviceGetIndex(device_a.handle(), &mut index)
    };
    assert_eq!(code, 2, "foreign handle: want NVML_ERROR_INVALID_ARGUMENT");

    // Shutting down a leaves b initialised.
    nvml_a.shutdown().expect("shutdown a");
    assert_eq!(uuids(&nvml_b), uuids_b);
}

#[test]
fn reinstalling_a_node_keeps_its_uuids() {
    let node = Node::builtin("a100-pcie-4", "stable");
    let before = uuids(&node.init());
    let built = berth_simnvml::find_library().expect("built library");
    let machine = berth_simnvml::builtin("a100-pcie-4").expect("shipped");
    berth_simnvml::install_node(node.dir.path(), &built, &machine, "stable").expect("again");
    assert_eq!(uuids(&node.init()), before);
    let expected: Vec<String> = (0..4).filter_map(|i| node.machine.gpu_uuid(i)).collect();
    assert_eq!(before, expected);
}

#[test]
fn explicit_uuid_and_minor_number_are_reported() {
    let mut machine = berth_simnvml::builtin("a100-pcie-4").expect("shipped");
    let fixed = "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
    machine.gpus[1].uuid = Some(fixed.into());
    machine.gpus[1].minor_number = Some(9);
    let node = Node::install(&machine, "explicit");
    let nvml = node.init();
    let device = nvml.device_by_uuid(fixed).expect("by explicit uuid");
    assert_eq!(device.index().expect("index"), 1);
    assert_eq!(device.minor_number().expect("minor"), 9);
}

#[test]
fn cpu_only_node_initialises_with_no_devices() {
    let mut machine = berth_simnvml::builtin("a100-pcie-4").expect("shipped");
    machine.gpus.clear();
    let node = Node::install(&machine, "cpu1");
    let nvml = node.init();
    assert_eq!(nvml.device_count().expect("count"), 0);
    assert!(matches!(
        nvml.device_by_index(0),
        Err(NvmlError::InvalidArg)
    ));
}

#[test]
fn missing_or_bad_description_makes_init_fail() {
    let node = Node::builtin("a100-pcie-4", "broken");
    let good = std::fs::read_to_string(node.machine_json()).expect("read");
    let unknown_field = good.replacen("\"cpus\"", "\"sockets\": 2, \"cpus\"", 1);
    let zero_memory = good.replacen("\"memory_mb\": 40960", "\"memory_mb\": 0", 1);
    let cases = [
        ("missing", None),
        ("not json", Some("{ this is not json")),
        ("unknown field", Some(unknown_field.as_str())),
        ("zero GPU memory", Some(zero_memory.as_str())),
    ];
    for (what, content) in cases {
        match content {
            None => std::fs::remove_file(node.machine_json()).expect("remove"),
            Some(text) => std::fs::write(node.machine_json(), text).expect("write"),
        }
        match node.try_init() {
            Err(NvmlError::Unknown) => {}
            Err(other) => panic!("{what}: want NvmlError::Unknown, got {other:?}"),
            Ok(_) => panic!("{what}: init succeeded"),
        }
    }
    // A fixed description is read again at the next init.
    std::fs::write(node.machine_json(), &good).expect("restore");
    assert_eq!(node.init().device_count().expect("count"), 4);
}

#[test]
fn init_and_shutdown_from_many_threads_keep_the_count_right() {
    let node = Node::builtin("dgx-h100", "threads");
    let held = node.init();
    let want = uuids(&held);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let nvml = node.init();
                    assert_eq!(uuids(&nvml), want);
                    nvml.shutdown().expect("shutdown");
                }
            });
        }
    });
    // 100 inits and 100 shutdowns later, `held`'s init is still counted.
    assert_eq!(uuids(&held), want);
    held.shutdown().expect("last shutdown");
}

#[test]
fn installed_description_is_the_seeded_one() {
    let node = Node::builtin("dgx-h100", "seeded");
    let on_disk = MachineDescription::load(node.machine_json()).expect("load");
    assert_eq!(on_disk, node.machine);
    assert_eq!(on_disk.uuid_seed(), "seeded");
}
