//! Shared setup for the integration tests: each test gets its own node directory with its
//! own copy of the built library, so tests running in parallel threads of one process
//! never share NVML state (the very property `berth dev` relies on).

#![allow(dead_code)] // Each test file uses a different subset.

use std::path::PathBuf;

use berth_simnvml::{find_library, install_node, MachineDescription};
use nvml_wrapper::Nvml;
use tempfile::TempDir;

/// A node directory; the directory lives as long as this value.
pub struct Node {
    pub dir: TempDir,
    pub lib: PathBuf,
    /// The description as installed (seeded with the node name).
    pub machine: MachineDescription,
}

impl Node {
    pub fn install(machine: &MachineDescription, node_name: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let built = find_library().unwrap_or_else(|e| panic!("{e}"));
        let lib = install_node(dir.path(), &built, machine, node_name).expect("install_node");
        let mut seeded = machine.clone();
        seeded.uuid_seed = Some(node_name.to_owned());
        Node {
            dir,
            lib,
            machine: seeded,
        }
    }

    pub fn builtin(name: &str, node_name: &str) -> Node {
        let machine = berth_simnvml::builtin(name).unwrap_or_else(|| panic!("no builtin {name}"));
        Node::install(&machine, node_name)
    }

    pub fn init(&self) -> Nvml {
        self.try_init()
            .unwrap_or_else(|e| panic!("init {}: {e}", self.lib.display()))
    }

    pub fn try_init(&self) -> Result<Nvml, nvml_wrapper::error::NvmlError> {
        Nvml::builder().lib_path(self.lib.as_os_str()).init()
    }

    pub fn machine_json(&self) -> PathBuf {
        self.dir.path().join(berth_simnvml::MACHINE_FILE_NAME)
    }
}

/// Every GPU's UUID, in index order.
pub fn uuids(nvml: &Nvml) -> Vec<String> {
    let count = nvml.device_count().expect("device_count");
    (0..count)
        .map(|i| {
            let device = nvml.device_by_index(i).expect("device_by_index");
            device.uuid().expect("uuid")
        })
        .collect()
}
