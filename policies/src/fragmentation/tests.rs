//! Fragmentation maths with hand-computed values (the arithmetic is in the comments).

use super::*;
use crate::snapshot::GpuView;

fn node(cpu_milli: u64, gpus: &[u32]) -> NodeFree {
    NodeFree {
        cpu_milli,
        memory_mib: 1 << 20,
        gpu_milli: gpus.to_vec(),
        model: "G2".into(),
    }
}

fn shape(cpu_milli: u64, gpus: u32, gpu_milli: u32) -> TaskShape {
    TaskShape {
        cpu_milli,
        memory_mib: 0,
        gpus,
        gpu_milli,
        models: Vec::new(),
    }
}

/// A: half a GPU with 4 CPUs, B: one whole GPU with 8 CPUs, equally popular.
fn workload_ab() -> Workload {
    Workload {
        classes: vec![
            TaskClass {
                shape: shape(4000, 1, 500),
                popularity: 0.5,
            },
            TaskClass {
                shape: shape(8000, 1, 1000),
                popularity: 0.5,
            },
        ],
    }
}

#[test]
fn class_fragmentation_cases() {
    let n = node(16_000, &[1000, 300]);
    // (class, expected fragment milli)
    let cases = [
        // A fits on GPU0; GPU1 (300 < 500) is a fragment to it.
        (shape(4000, 1, 500), 300),
        // B fits on GPU0; GPU1 (300 < 1000) is a fragment.
        (shape(8000, 1, 1000), 300),
        // 2 whole GPUs do not fit: all 1300 free milli are fragments.
        (shape(1000, 2, 1000), 1300),
        // Not enough CPU: all free milli.
        (shape(20_000, 1, 500), 1300),
        // CPU-only classes count all free GPU milli (artifact XL/XR).
        (shape(1000, 0, 0), 1300),
        // Fits everywhere: 200 ≤ 300 and ≤ 1000: no fragment.
        (shape(1000, 1, 200), 0),
    ];
    for (i, (c, want)) in cases.iter().enumerate() {
        let got = class_fragmentation(&n, c);
        if got != *want {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
    // A model the node does not have: no access, all 1300.
    let mut t4 = shape(1000, 1, 200);
    t4.models = vec!["T4".into()];
    assert_eq!(class_fragmentation(&n, &t4), 1300);
}

#[test]
fn node_fragmentation_is_the_popularity_weighted_sum() {
    let w = workload_ab();
    // [1000, 300]: A 300, B 300 → 0.5·300 + 0.5·300 = 300
    assert_eq!(node_fragmentation(&node(16_000, &[1000, 300]), &w), 300.0);
    // [1000, 600]: A 0 (no GPU under 500), B 600 → 0.5·0 + 0.5·600 = 300
    assert_eq!(node_fragmentation(&node(16_000, &[1000, 600]), &w), 300.0);
    // [500, 300] with 12 CPUs: A 300; B does not fit → 800: 0.5·300 + 0.5·800 = 550
    assert_eq!(node_fragmentation(&node(12_000, &[500, 300]), &w), 550.0);
    // No GPU left: nothing is a fragment.
    assert_eq!(node_fragmentation(&node(16_000, &[0, 0]), &w), 0.0);
}

#[test]
fn fgd_options_and_scores() {
    let w = workload_ab();
    let a = shape(4000, 1, 500);
    // Node [1000, 600] (F = 300): a on GPU0 → [500, 600]: A 0, B no idle GPU → 1100:
    // F = 550 (Δ +250); a on GPU1 → [1000, 100]: A 100, B 100: F = 100 (Δ −200).
    let n = node(16_000, &[1000, 600]);
    let opts = fgd_options(&n, &a, &w);
    assert_eq!(opts.len(), 2);
    assert_eq!((opts[0].gpus.clone(), opts[0].frag_after), (vec![0], 550.0));
    assert_eq!((opts[1].gpus.clone(), opts[1].frag_after), (vec![1], 100.0));
    // Artifact: int(100·sigmoid(−0.25)) = int(43.78) = 43; int(100·sigmoid(0.2)) =
    // int(54.98) = 54 → GPU1.
    assert_eq!(fgd_score_artifact(300.0, 550.0), 43);
    assert_eq!(fgd_score_artifact(300.0, 100.0), 54);
    assert_eq!(fgd_choice_artifact(&n, &a, &w, 300.0), Some((54, vec![1])));
    // int(100·sigmoid(0.5)) = int(62.25) = 62; Δ 0 → 50.
    assert_eq!(fgd_score_artifact(1500.0, 1000.0), 62);
    assert_eq!(fgd_score_artifact(1000.0, 1000.0), 50);
    // Whole GPU on [1000, 600]: packed onto GPU0 → [0, 600]: A 0, B 600 → F = 300.
    let b = fgd_options(&n, &shape(8000, 1, 1000), &w);
    assert_eq!(
        b,
        vec![GpuOption {
            gpus: vec![0],
            frag_after: 300.0
        }]
    );
    assert!(fgd_options(&n, &shape(1000, 2, 1000), &w).is_empty());
    // berth's measure B = 0.5·(frag_A + stream_A) + 0.5·2·frag_B on [1000, 600], 16
    // CPUs: frag_A 0; stream_A: CPU room 4, GPU room 2 + 1 = 3 → 1500 of 1600 → 100;
    // frag_B 600 → B = 0.5·100 + 0.5·1200 = 650.
    assert_eq!(berth_fragmentation(&n, &w), 650.0);
    // a on GPU1 → [1000, 100], 12 CPUs: frag_A 100, stream_A 1100 − 2·500 = 100,
    // frag_B 100 → B = 0.5·200 + 0.5·200 = 200 (Δ −450). On GPU0 → [500, 600]: frag_A 0,
    // stream_A 1100 − 2·500 = 100, frag_B 1100 → B = 50 + 1100 = 1150 (Δ +500).
    let berth = BerthPacking { workload: w };
    let (key, gpus) = berth.choose(&n, &a, 650.0).unwrap();
    assert_eq!((key.frag_delta, gpus), (-450.0, vec![1]));
}

#[test]
fn stream_fragmentation_counts_remainders_and_cpu() {
    let class = shape(4000, 1, 470);
    // [700, 1000], 16 CPUs: GPU room 1 + 2 = 3, CPU room 4 → 3·470 = 1410 of 1700 → 290.
    assert_eq!(
        class_fragmentation_stream(&node(16_000, &[700, 1000]), &class),
        290
    );
    // 4 CPUs: CPU room 1 → 1700 − 470 = 1230.
    assert_eq!(
        class_fragmentation_stream(&node(4000, &[700, 1000]), &class),
        1230
    );
    // 2 whole GPUs on 3 idle: one copy → 3000 − 2000 = 1000.
    let two = shape(1000, 2, 1000);
    assert_eq!(
        class_fragmentation_stream(&node(16_000, &[1000; 3]), &two),
        1000
    );
    // CPU-only classes and other models: all free milli.
    assert_eq!(
        class_fragmentation_stream(&node(16_000, &[700]), &shape(1, 0, 0)),
        700
    );
    let mut t4 = class.clone();
    t4.models = vec!["T4".into()];
    assert_eq!(class_fragmentation_stream(&node(16_000, &[700]), &t4), 700);
}

#[test]
fn berth_key_breaks_equal_gradients_by_fit() {
    let tight = PackKey {
        frag_delta: -10.0,
        leftover: 0.1,
    };
    let loose = PackKey {
        frag_delta: -10.0,
        leftover: 0.4,
    };
    let better_grad = PackKey {
        frag_delta: -11.0,
        leftover: 0.9,
    };
    assert!(tight < loose);
    assert!(better_grad < tight);
}

#[test]
fn typical_workload_keeps_popular_classes() {
    let x = shape(1000, 1, 500);
    let y = shape(2000, 1, 1000);
    let z = shape(3000, 0, 0);
    let mut x_mem = x.clone();
    x_mem.memory_mib = 999; // memory does not split classes
    let tasks = [x.clone(), x.clone(), x_mem, y.clone(), y.clone(), z.clone()];
    // 50 %: wanted 3 of 6 tasks; X alone covers 3 → X: 1.
    let w = Workload::typical(&tasks, 50).unwrap();
    assert_eq!(w.classes.len(), 1);
    assert_eq!(
        (w.classes[0].shape.clone(), w.classes[0].popularity),
        (x.clone(), 1.0)
    );
    // 60 %: wanted 3.6: X (3) then Y (5) → X 3/5 = 0.6, Y 2/5 = 0.4.
    let w = Workload::typical(&tasks, 60).unwrap();
    let got: Vec<(TaskShape, f64)> = w
        .classes
        .iter()
        .map(|c| (c.shape.clone(), c.popularity))
        .collect();
    assert_eq!(got, vec![(x.clone(), 0.6), (y.clone(), 0.4)]);
    // 100 %: all three, over 6.
    let w = Workload::typical(&tasks, 100).unwrap();
    assert_eq!(w.classes.len(), 3);
    assert_eq!(w.classes[2].shape, z);
    // Equal counts: the larger CPU comes first (the artifact's reversed Less).
    let w = Workload::typical(&[x.clone(), y.clone()], 100).unwrap();
    assert_eq!(w.classes[0].shape, y);
}

#[test]
fn typical_workload_rejects_bad_input() {
    let x = shape(1000, 1, 500);
    assert!(Workload::typical(std::iter::empty(), 95).is_err());
    assert!(Workload::typical([&x], 0).is_err());
    assert!(Workload::typical([&x], 101).is_err());
}

#[test]
fn gradient_scorer_on_node_views() {
    // Workload: 2-GPU tasks only, so B = 2·frag. An idle 2-GPU node (B = 0) left with one
    // idle GPU cannot host them: B after = 2·1000 → score tanh(−2000/1000) = −0.964.
    let w = Workload {
        classes: vec![TaskClass {
            shape: shape(1000, 2, 1000),
            popularity: 1.0,
        }],
    };
    let s = FragmentationGradient::berth(w);
    let v = NodeView {
        name: "n".into(),
        partition: "gpu".into(),
        up: true,
        cpus_total: 8,
        cpus_free: 8,
        memory_total_mb: 1024,
        memory_free_mb: 1024,
        gpus: (0..2)
            .map(|i| GpuView {
                uuid: format!("GPU-{i}"),
                index: i,
                gres_type: "h100".into(),
                free: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let one = PendingJob {
        gpus_per_node: 1,
        cpus_per_node: 1,
        ..PendingJob::default()
    };
    let got = s.score(&one, &v, &crate::score::Fit::default());
    assert!((got - (-2.0f64).tanh()).abs() < 1e-12, "{got}");
    // Taking both GPUs leaves nothing to fragment: Δ = 0 → 0.
    let two = PendingJob {
        gpus_per_node: 2,
        ..one.clone()
    };
    assert_eq!(s.score(&two, &v, &crate::score::Fit::default()), 0.0);
    let three = PendingJob {
        gpus_per_node: 3,
        ..one
    };
    assert_eq!(s.score(&three, &v, &crate::score::Fit::default()), -1.0);
}
