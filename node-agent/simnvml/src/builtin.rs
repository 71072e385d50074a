//! Machines shipped with berth, compiled in so that `berth dev` and tests need no files
//! beside the binary. The JSON lives in `machines/` where people can read and copy it.

use crate::MachineDescription;

/// Names accepted by [`builtin`], in the order `berth dev` offers them.
const NAMES: &[&str] = &["dgx-h100", "a100-pcie-4"];

fn source(name: &str) -> Option<&'static str> {
    match name {
        "dgx-h100" => Some(include_str!("../machines/dgx-h100.json")),
        "a100-pcie-4" => Some(include_str!("../machines/a100-pcie-4.json")),
        _ => None,
    }
}

/// Names of the shipped machines: `["dgx-h100", "a100-pcie-4"]`.
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
