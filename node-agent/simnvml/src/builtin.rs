//! Machines shipped with berth, compiled in so that `berth dev` and tests need no files
//! beside the binary. The JSON lives in `machines/` where people can read and copy it.

use crate::MachineDescription;
#[cfg(test)]
use crate::MigSku;

/// Names accepted by [`builtin`], in the order `berth dev` offers them.
const NAMES: &[&str] = &[
    "dgx-h100",
    "dgx-a100",
    "a100-mig",
    "pcie-l40s-4",
    "a100-pcie-4",
];

fn source(name: &str) -> Option<&'static str> {
    match name {
        "dgx-h100" => Some(include_str!("../machines/dgx-h100.json")),
        "a100-pcie-4" => Some(include_str!("../machines/a100-pcie-4.json")),
        "dgx-a100" => Some(include_str!("../machines/dgx-a100.json")),
        "a100-mig" => Some(include_str!("../machines/a100-mig.json")),
        "pcie-l40s-4" => Some(include_str!("../machines/pcie-l40s-4.json")),
        _ => None,
    }
}

/// Names of the shipped machines: `dgx-h100` (8×H100 80GB, NVSwitch, 2 NUMA nodes, MIG
/// capable, off), `dgx-a100` (8×A100 80GB, NVSwitch), `a100-mig` (4×A100 40GB with MIG
/// mode on), `pcie-l40s-4` (4×L40S in PCIe-switch pairs, no NVLink, no MIG) and
/// `a100-pcie-4` (4×A100 PCIe 40GB, MIG capable, off).
pub fn builtin_names() -> &'static [&'static str] {
    NAMES
}

/// The shipped machine called `name`, or `None` if there is none (see [`builtin_names`]).
///
/// # Panics
/// If a shipped JSON file is invalid: that is a bug of this crate, caught by its tests.
pub fn builtin(name: &str) -> Option<MachineDescription> {
    let text = source(name)?;
    match MachineDescription::from_json(text) {
        Ok(description) => Some(description),
        Err(e) => panic!("shipped machine {name} is invalid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_valid_file_named_like_it() {
        for name in builtin_names() {
            let description = builtin(name).unwrap_or_else(|| panic!("{name}: no source"));
            assert_eq!(
                description.name, *name,
                "name field of machines/{name}.json"
            );
        }
        assert!(builtin("dgx-a100-typo").is_none());
    }

    #[test]
    fn shipped_machines_have_their_topology_and_mig() {
        // (name, GPUs, NUMA nodes, NVLinks per GPU, MIG table, MIG on)
        let table = [
            ("dgx-h100", 8, 2, 18, Some(MigSku::H100_80gb), false),
            ("dgx-a100", 8, 2, 12, Some(MigSku::A100_80gb), false),
            ("a100-mig", 4, 2, 12, Some(MigSku::A100_40gb), true),
            ("pcie-l40s-4", 4, 2, 0, None, false),
            ("a100-pcie-4", 4, 2, 0, Some(MigSku::A100_40gb), false),
        ];
        for (i, (name, gpus, numa, links, mig, on)) in table.into_iter().enumerate() {
            let m = builtin(name).expect("shipped");
            let resolved = m.resolve().expect("valid");
            assert_eq!(
                (resolved.len(), m.numa_nodes()),
                (gpus, numa),
                "#{i} {name}"
            );
            for g in &resolved {
                let got = (g.links.len(), g.mig, g.mig_enabled);
                assert_eq!(got, (links, mig, on), "#{i} {name} gpu {}", g.index);
            }
            let halves: Vec<u32> = resolved.iter().map(|g| g.numa_node).collect();
            assert!(
                halves.contains(&0) && halves.contains(&1),
                "#{i} {name}: {halves:?}"
            );
        }
        let l40s = builtin("pcie-l40s-4")
            .expect("shipped")
            .resolve()
            .expect("valid");
        let switches: Vec<u32> = l40s.iter().map(|g| g.pcie_switch).collect();
        assert_eq!(switches, [0, 0, 1, 1], "PCIe pairs");
    }

    #[test]
    fn dgx_h100_matches_the_real_box() {
        let dgx = builtin("dgx-h100").expect("shipped");
        assert_eq!(dgx.gpus.len(), 8);
        assert_eq!(dgx.cpus, 224);
        let buses: Vec<&str> = dgx.gpus.iter().map(|g| &g.pci_bus_id[9..11]).collect();
        assert_eq!(buses, ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]);
        for gpu in &dgx.gpus {
            assert_eq!(gpu.name, "NVIDIA H100 80GB HBM3");
            assert_eq!(gpu.memory_mb, 81559);
            assert_eq!(gpu.compute_capability, [9, 0]);
        }
    }

    #[test]
    fn a100_pcie_4_matches_the_spec() {
        let node = builtin("a100-pcie-4").expect("shipped");
        assert_eq!(
            (node.gpus.len(), node.cpus, node.memory_mb),
            (4, 64, 512 * 1024)
        );
        for gpu in &node.gpus {
            assert_eq!(gpu.name, "NVIDIA A100-PCIE-40GB");
            assert_eq!(gpu.memory_mb, 40960);
            assert_eq!(gpu.compute_capability, [8, 0]);
        }
    }
}
