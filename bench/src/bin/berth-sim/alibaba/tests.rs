//! Trace parsing (good and bad rows), the arrival protocol, the allocation-rate
//! measurement, and determinism of whole runs per seed.

use super::run::{arrivals, rate_at, run, Packer, Setup, Ties};
use super::trace::{parse_nodes, parse_pods, TraceNode, TracePod};
use berth_policies::fragmentation::Workload;
use berth_policies::packing::{NodeFree, TaskShape};

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model
n0,32000,262144,0,
n1,96000,786432,8,G2
n2,104000,786432,2,T4
";

#[test]
fn nodes_parse_and_gpu_only_drops_cpu_nodes() {
    let all = parse_nodes(NODES, false).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].idle, NodeFree::idle(96_000, 786_432, 8, "G2"));
    let gpu = parse_nodes(NODES, true).unwrap();
    let names: Vec<&str> = gpu.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["n1", "n2"]);
}

#[test]
fn bad_node_rows_name_their_line() {
    let h = "sn,cpu_milli,memory_mib,gpu,model\n";
    let cases = [
        ("", "line 1"),
        ("sn,cpu_milli,gpu,model\nn1,1,1,G2\n", "memory_mib"),
        (
            &*format!("{h}n1,32000,1,8,G2\nn2,x,1,8,G2\n"),
            "line 3: cpu_milli",
        ),
        (&*format!("{h}n1,32000,1,8,\n"), "line 2: gpu 8 with model"),
        (&*format!("{h}n1,32000,1,0,G2\n"), "line 2"),
        (
            &*format!("{h}n1,32000,1,8,G2\nn1,32000,1,8,G2\n"),
            "line 3: node n1 already on line 2",
        ),
        (&*format!("{h}n1,32000,1,8\n"), "line 2: 4 fields"),
        (&*format!("{h}n1,-5,1,8,G2\n"), "line 2: cpu_milli"),
        (&*format!("{h}n1,32000,1,65,G2\n"), "line 2: 65 GPUs"),
        (h, "no nodes"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        match parse_nodes(text, false) {
            Ok(n) => panic!("#{i}: want error {want:?}, got {} nodes", n.len()),
            Err(e) => {
                let got = format!("{e:#}");
                if !got.contains(want) {
                    panic!("#{i}: want {want:?}, got {got:?}");
                }
            }
        }
    }
}

#[test]
fn pods_parse_by_header_and_sort_by_name() {
    let full = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
p2,6000,12288,1,460,V100M16|V100M32,LS,Running,1,2,1
p1,12000,16384,1,1000,,LS,Running,0,1,0
p3,4000,100,0,0,,BE,Failed,0,1,0
";
    let pods = parse_pods(full).unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["p1", "p2", "p3"]);
    assert_eq!(
        pods[1].shape,
        TaskShape {
            cpu_milli: 6000,
            memory_mib: 12288,
            gpus: 1,
            gpu_milli: 460,
            models: vec!["V100M16".into(), "V100M32".into()],
        }
    );
    // The multigpu lists have five columns only.
    let short = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,88000,327680,8,1000\n";
    let pods = parse_pods(short).unwrap();
    assert_eq!((pods[0].shape.gpus, pods[0].shape.models.len()), (8, 0));
}

#[test]
fn bad_pod_rows_name_their_line() {
    let h = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n";
    let cases = [
        (format!("{h}a,1,1,1,500\nb,1,1,2,500\n"), "line 3"),
        (format!("{h}a,1,1,1,0\n"), "line 2"),
        (format!("{h}a,1,1,0,300\n"), "line 2"),
        (format!("{h}a,1,1,1,1001\n"), "line 2"),
        (format!("{h}a,1,1,1,1.5\n"), "line 2: gpu_milli"),
        (format!("{h}a,1,1,x,1\n"), "line 2: num_gpu"),
        (format!("{h}a,1,1,99,1000\n"), "line 2: num_gpu 99"),
        (format!("{h},1,1,1,1000\n"), "line 2: empty name"),
        (
            format!("{h}a,1,1,1,1000\na,1,1,1,1000\n"),
            "line 3: pod a already on line 2",
        ),
        (
            "name,cpu_milli,num_gpu,gpu_milli\na,1,1,1000\n".to_string(),
            "memory_mib",
        ),
        (h.to_string(), "no pods"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        match parse_pods(text) {
            Ok(p) => panic!("#{i}: want error {want:?}, got {} pods", p.len()),
            Err(e) => {
                let got = format!("{e:#}");
                if !got.contains(want) {
                    panic!("#{i}: want {want:?}, got {got:?}");
                }
            }
        }
    }
}

fn pod(name: &str, cpu: u64, gpus: u32, milli: u32) -> TracePod {
    TracePod {
        name: name.into(),
        shape: TaskShape {
            cpu_milli: cpu,
            memory_mib: 1024,
            gpus,
            gpu_milli: milli,
            models: Vec::new(),
        },
    }
}

/// 20 pods: shared halves and quarters, whole GPUs, a 2-GPU task and CPU-only ones.
fn small_pods() -> Vec<TracePod> {
    (0..20)
        .map(|i| {
            let (g, m) = [(1, 500), (1, 250), (1, 1000), (2, 1000), (0, 0)][i % 5];
            pod(&format!("p{i:02}"), 2000 + 1000 * (i as u64 % 3), g, m)
        })
        .collect()
}

fn small_nodes() -> Vec<TraceNode> {
    (0..6)
        .map(|i| TraceNode {
            name: format!("n{i}"),
            idle: NodeFree::idle(16_000, 1 << 20, if i % 2 == 0 { 4 } else { 2 }, "G2"),
        })
        .collect()
}

#[test]
fn arrivals_fill_to_the_target_and_depend_on_the_seed() {
    let pods = small_pods();
    let capacity = 18_000; // 3·4 + 3·2 GPUs
    let demand = |seq: &[usize]| {
        seq.iter()
            .map(|&i| pods[i].shape.gpu_milli_total())
            .sum::<u64>()
    };
    let a = arrivals(&pods, capacity, 130, 42);
    assert_eq!(
        a,
        arrivals(&pods, capacity, 130, 42),
        "same seed, same sequence"
    );
    assert_ne!(a, arrivals(&pods, capacity, 130, 43));
    // The list's own demand (4·500 + 4·250 + 4·1000 + 4·2000 = 15000) is under 23400, so
    // the whole list is in it and clones were appended up to the target.
    assert!(a.len() > pods.len());
    assert!(
        demand(&a) <= 23_400 && demand(&a) > 23_400 - 2000,
        "{}",
        demand(&a)
    );
    // Over the target (8000 milli = 44 %), random pods are removed until under it.
    let down = arrivals(&pods, capacity, 44, 7);
    assert!(demand(&down) <= capacity * 44 / 100);
    assert!(down.len() < pods.len());
}

#[test]
fn allocation_rate_follows_the_artifact_analysis() {
    // 10 GPUs. Arrived (percent): 95, 100.4, 99.6, 101.5 → rounded 95, 100, 100, 102.
    let events = [(9500, 9000), (10_040, 9400), (9960, 9500), (10_150, 9600)];
    // At 100: mean of 94.00 and 95.00 = 94.5.
    assert_eq!(rate_at(&events, 10, 100), 94.5);
    // At 101: no exact row; rows within ±1 (100, 100, 102 are not all: 100 and 102
    // are) → mean(94, 95, 96) = 95.
    assert_eq!(rate_at(&events, 10, 101), 95.0);
    assert!(rate_at(&events, 10, 130).is_nan());
}

#[test]
fn runs_are_deterministic_per_seed_and_never_overcommit() {
    let nodes = small_nodes();
    let pods = small_pods();
    let workload = Workload::typical(pods.iter().map(|p| &p.shape), 95).unwrap();
    let mut setup = Setup {
        nodes: &nodes,
        pods: &pods,
        workload: &workload,
        ratio_pct: 130,
        ties: Ties::Order,
    };
    for (packer, ties) in [
        (Packer::Random, Ties::Order),
        (Packer::BestFit, Ties::Order),
        (Packer::BestFit, Ties::Uniform),
        (Packer::Fgd, Ties::Order),
        (Packer::Fgd, Ties::Uniform),
        (Packer::Berth, Ties::Order),
    ] {
        setup.ties = ties;
        let a = run(&setup, packer, 42);
        let b = run(&setup, packer, 42);
        assert_eq!(a, b, "{packer:?}: same seed, same run");
        let capacity = 18_000;
        let (arrived, used) = *a.events.last().unwrap();
        assert!(
            used <= capacity && used <= arrived,
            "{packer:?}: {used} of {capacity}"
        );
        assert!(
            arrived > capacity,
            "{packer:?}: the protocol overloads the cluster"
        );
        assert!(a.failed > 0, "{packer:?}: at 130 % some task must fail");
        let placed_milli: Vec<u64> = a.events.windows(2).map(|w| w[1].1 - w[0].1).collect();
        assert!(placed_milli.iter().all(|&d| d <= 2000));
    }
    let c = run(&setup, Packer::Fgd, 43);
    assert_ne!(c.events, run(&setup, Packer::Fgd, 42).events);
}

#[test]
fn real_node_list_has_the_published_size() {
    let path = super::trace::default_dir().join("openb_node_list_all_node.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "SKIP real_node_list_has_the_published_size: {} not found",
            path.display()
        );
        return;
    };
    let all = parse_nodes(&text, false).unwrap();
    let gpu = parse_nodes(&text, true).unwrap();
    let gpus: usize = all.iter().map(|n| n.idle.gpu_milli.len()).sum();
    assert_eq!((all.len(), gpu.len(), gpus), (1523, 1213, 6212));
}
