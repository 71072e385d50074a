//! Constructed machines (the simulated dgx-h100 and pcie-l40s-4) and a small network tree.

use super::*;

/// 8 GPUs on NVSwitch (NV18 every pair), GPUs 0-3 on NUMA 0 and 4-7 on NUMA 1.
pub fn dgx_h100(name: &str) -> NodeLinks {
    let mut pairs = Vec::new();
    for a in 0..8 {
        for b in a + 1..8 {
            pairs.push((a, b, GpuLink::parse("NV18", true).unwrap()));
        }
    }
    NodeLinks {
        name: name.into(),
        gpus: (0..8).map(|i| (i, i / 4)).collect(),
        pairs,
    }
}

/// 4 PCIe GPUs: (0,1) behind one PCIe switch on NUMA 0, (2,3) on NUMA 1.
fn pcie_4(name: &str) -> NodeLinks {
    let level = |a: u32, b: u32| if a / 2 == b / 2 { "PIX" } else { "SYS" };
    let mut pairs = Vec::new();
    for a in 0..4 {
        for b in a + 1..4 {
            pairs.push((a, b, GpuLink::parse(level(a, b), false).unwrap()));
        }
    }
    NodeLinks {
        name: name.into(),
        gpus: (0..4).map(|i| (i, i / 2)).collect(),
        pairs,
    }
}

#[test]
fn link_levels_parse_and_order() {
    let cases = [
        ("NV18", true, GpuLink::NvSwitch),
        ("NV4", false, GpuLink::NvLink(4)),
        ("PIX", false, GpuLink::PcieSwitch),
        ("PXB", false, GpuLink::PcieMulti),
        ("PHB", false, GpuLink::HostBridge),
        ("NODE", false, GpuLink::SameNuma),
        ("SYS", false, GpuLink::CrossSocket),
        ("UNKNOWN", false, GpuLink::CrossSocket),
    ];
    for (i, (level, sw, want)) in cases.into_iter().enumerate() {
        let got = GpuLink::parse(level, sw).unwrap();
        assert_eq!(got, want, "#{i}: want {want:?}, got {got:?}");
    }
    let order: Vec<u8> = cases.iter().map(|c| c.2.cost()).collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "costs must rise: {order:?}"
    );
    assert!(GpuLink::NvLink(12).cost() < GpuLink::NvLink(2).cost());
    for bad in ["NV0", "NV", "nv4", "X", "PCI", "", "NV-1"] {
        assert!(
            GpuLink::parse(bad, false).is_err(),
            "{bad} should be refused"
        );
    }
}

#[test]
fn four_gpus_on_a_dgx_h100_stay_on_one_numa_island() {
    let m = GpuMatrix::new(&dgx_h100("n"));
    // (free GPUs, k, want)
    let cases: Vec<(Vec<u32>, usize, Vec<u32>)> = vec![
        ((0..8).collect(), 4, vec![0, 1, 2, 3]),
        // 0 and 1 held: lowest-index would be 2,3,4,5 across sockets; NUMA 1 is whole.
        (vec![2, 3, 4, 5, 6, 7], 4, vec![4, 5, 6, 7]),
        // One GPU goes where it fills a partly used island, keeping NUMA 1's four whole.
        (vec![3, 4, 5, 6, 7], 1, vec![3]),
        // A pair packs into the partly used NUMA 0 (one GPU left there), not NUMA 1.
        (vec![1, 2, 3, 4, 5, 6, 7], 2, vec![1, 2]),
        (vec![0, 1, 2, 4, 5, 6, 7], 3, vec![0, 1, 2]),
    ];
    for (i, (free, k, want)) in cases.into_iter().enumerate() {
        let (got, q) = m.best_set(&free, k);
        assert_eq!(got, want, "#{i}: want {want:?}, got {got:?} ({q:?})");
        assert_eq!(q.numa_spanned, 1, "#{i}");
    }
}

#[test]
fn pairs_on_a_pcie_node_share_a_switch() {
    let m = GpuMatrix::new(&pcie_4("n"));
    let (set, q) = m.best_set(&[1, 2, 3], 2);
    assert_eq!(set, vec![2, 3]);
    assert_eq!(q.worst_link, GpuLink::PcieSwitch.cost());
    // PIX pair: 1 - 20/30 = 0.333…
    assert!((q.score() - (1.0 - 20.0 / 30.0)).abs() < 1e-9, "{q:?}");
    let (set, q) = m.best_set(&[0, 1, 2, 3], 3);
    assert_eq!(set, vec![0, 1, 2]);
    assert_eq!((q.worst_link, q.numa_spanned), (60, 2));
}

#[test]
fn greedy_search_on_large_nodes_keeps_islands() {
    // 16 GPUs, NUMA islands of 4 with NV links inside and SYS across; 16 choose 8 = 12870
    // sets is past the exhaustive bound, so the greedy growth runs.
    let mut pairs = Vec::new();
    for a in 0..16u32 {
        for b in a + 1..16 {
            let link = if a / 4 == b / 4 {
                GpuLink::NvLink(6)
            } else {
                GpuLink::CrossSocket
            };
            pairs.push((a, b, link));
        }
    }
    let m = GpuMatrix::new(&NodeLinks {
        name: "big".into(),
        gpus: (0..16).map(|i| (i, i / 4)).collect(),
        pairs,
    });
    let free: Vec<u32> = (0..16).collect();
    let (set, q) = m.best_set(&free, 8);
    assert_eq!(set, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(q.numa_spanned, 2);
    let (set, _) = m.best_set(&[1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], 4);
    assert_eq!(set, vec![8, 9, 10, 11]);
}

#[test]
fn the_graph_knows_switches_domains_and_gpus() {
    let conf = NetworkConf::parse(
        "SwitchName=leaf0 Nodes=n[1-2]\nSwitchName=leaf1 Nodes=n[3-4]\n\
         SwitchName=spine Switches=leaf[0-1]\nBlockName=nvl0 Nodes=n[2-3]",
    )
    .unwrap();
    let topo = Topology::build(&conf, &[dgx_h100("n1"), pcie_4("n9")]);
    assert_eq!(topo.place("n1").unwrap().switches, vec![0, 2]);
    assert_eq!(topo.place("n3").unwrap().domain, Some(0));
    assert!(topo.place("n1").unwrap().gpus.is_some());
    assert!(
        topo.place("n2").unwrap().gpus.is_none(),
        "n2 never reported"
    );
    assert_eq!(topo.place("n9").unwrap().switches, Vec::<u32>::new());
    assert_eq!((topo.level(0), topo.level(2)), (0, 1));
    let name = |s: Option<u32>| s.map(|s| topo.conf().switches[s as usize].name.clone());
    assert_eq!(name(topo.common_switch("n1", "n2")), Some("leaf0".into()));
    assert_eq!(name(topo.common_switch("n1", "n4")), Some("spine".into()));
    assert_eq!(topo.common_switch("n1", "n9"), None);
    // 3 switches + 1 domain + 5 node vertices + n1: 8 GPUs, 2 NUMA; n9: 4 GPUs, 2 NUMA.
    assert_eq!(topo.graph().node_count(), 3 + 1 + 5 + 10 + 6);
    let rows = topo.switch_rows();
    assert_eq!(rows[2].name, "spine");
    assert_eq!(rows[2].nodes, vec!["n1", "n2", "n3", "n4"]);
}
