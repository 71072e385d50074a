//! Packing maths on hand-built nodes: fit, GPU choice, packing look-ahead, best-fit
//! arithmetic, and the scorers on berth's node view.

use super::*;
use crate::snapshot::GpuView;

fn node(cpu_milli: u64, gpus: &[u32], model: &str) -> NodeFree {
    NodeFree {
        cpu_milli,
        memory_mib: 65_536,
        gpu_milli: gpus.to_vec(),
        model: model.into(),
    }
}

fn task(cpu_milli: u64, gpus: u32, gpu_milli: u32, models: &[&str]) -> TaskShape {
    TaskShape {
        cpu_milli,
        memory_mib: 1024,
        gpus,
        gpu_milli,
        models: models.iter().map(|m| m.to_string()).collect(),
    }
}

#[test]
fn fits_checks_every_dimension() {
    let n = node(8000, &[1000, 300], "G2");
    // (task, fits?)
    let cases = [
        (task(4000, 1, 500, &[]), true),      // GPU 0 has room
        (task(4000, 1, 300, &[]), true),      // exactly GPU 1's room
        (task(4000, 1, 1000, &[]), true),     // GPU 0 is idle
        (task(4000, 2, 1000, &[]), false),    // only one idle GPU
        (task(9000, 1, 100, &[]), false),     // CPU
        (task(4000, 1, 500, &["T4"]), false), // model
        (task(4000, 1, 500, &["T4", "G2"]), true),
        (task(8000, 0, 0, &[]), true), // CPU-only ignores the model
    ];
    for (i, (t, want)) in cases.iter().enumerate() {
        let got = n.fits(t);
        if got != *want {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
    let mut big_mem = task(1000, 0, 0, &[]);
    big_mem.memory_mib = 65_537;
    assert!(!n.fits(&big_mem), "memory is checked");
    // A node without GPUs never matches a model restriction, and no GPU task fits it.
    assert!(!node(8000, &[], "").fits(&task(1000, 1, 100, &[])));
    assert!(!model_allowed("", &["T4".to_string()]));
}

#[test]
fn gpu_choice_follows_the_artifact() {
    let n = node(8000, &[1000, 300, 600, 600], "G2");
    // Tightest GPU with room for 500: 600 (index 2 before 3), not the idle one.
    assert_eq!(n.tightest_gpu(500), Some(2));
    assert_eq!(n.tightest_gpu(700), Some(0));
    assert_eq!(n.tightest_gpu(1001), None);
    assert_eq!(n.best_fit_gpus(&task(1, 1, 250, &[])), Some(vec![1]));
    assert_eq!(n.best_fit_gpus(&task(1, 1, 1000, &[])), Some(vec![0]));
    assert_eq!(n.best_fit_gpus(&task(1, 2, 1000, &[])), None);
    assert_eq!(n.best_fit_gpus(&task(1, 0, 0, &[])), Some(vec![]));
    let m = node(8000, &[0, 1000, 1000, 1000], "G2");
    assert_eq!(m.idle_gpus_first(2), Some(vec![1, 2]));
    assert_eq!(m.idle_gpus_first(4), None);
}

#[test]
fn after_packed_takes_least_sufficient_gpus() {
    let n = node(8000, &[1000, 300, 600], "G2");
    // Ascending free milli: GPU1 (300), GPU2 (600), GPU0 (1000); 250 fits GPU1 first.
    let a = n.after_packed(&task(2000, 1, 250, &[])).unwrap();
    assert_eq!(a.gpu_milli, vec![1000, 50, 600]);
    assert_eq!(a.cpu_milli, 6000);
    // 400 skips GPU1 (300 < 400) and takes GPU2.
    let b = n.after_packed(&task(0, 1, 400, &[])).unwrap();
    assert_eq!(b.gpu_milli, vec![1000, 300, 200]);
    // Whole GPUs: only GPU0 is idle.
    assert!(n.after_packed(&task(0, 2, 1000, &[])).is_none());
    assert!(n.after_packed(&task(9000, 0, 0, &[])).is_none());
}

#[test]
fn take_updates_and_refuses_overcommit() {
    let mut n = node(8000, &[1000, 300], "G2");
    n.take(&task(2000, 1, 300, &[]), &[1]);
    assert_eq!((n.cpu_milli, n.memory_mib), (6000, 64_512));
    assert_eq!(n.gpu_milli, vec![1000, 0]);
    let r = std::panic::catch_unwind(move || {
        let mut n = n;
        n.take(&task(1000, 1, 100, &[]), &[1]);
    });
    assert!(r.is_err(), "a GPU with 0 milli left cannot take 100");
}

#[test]
fn validate_rejects_impossible_shapes() {
    let cases = [
        (task(1, 1, 0, &[]), false),    // GPUs without milli
        (task(1, 0, 500, &[]), false),  // milli without GPUs
        (task(1, 1, 1001, &[]), false), // over a GPU
        (task(1, 2, 500, &[]), false),  // multi-GPU fractions
        (task(1, 2, 1000, &[]), true),
        (task(1, 1, 500, &[]), true),
        (task(1, 0, 0, &[]), true),
    ];
    for (i, (t, ok)) in cases.iter().enumerate() {
        let got = t.validate().is_ok();
        if got != *ok {
            panic!("#{i}: want ok={ok}, got {:?}", t.validate());
        }
    }
}

#[test]
fn best_fit_arithmetic() {
    let n = node(64_000, &[1000, 1000, 500], "G2");
    let t = task(32_000, 1, 1000, &[]);
    // 0.5·(64000−32000)/128000 + 0.5·(2500−1000)/8000 = 0.125 + 0.09375 = 0.21875
    let l = best_fit_leftover(&n, &t).unwrap();
    assert!((l - 0.21875).abs() < 1e-12, "{l}");
    // int((1 − 0.21875)·100) = int(78.125) = 78
    assert_eq!(best_fit_score_artifact(&n, &t), Some(78));
    assert_eq!(best_fit_leftover(&n, &task(1, 3, 1000, &[])), None);
}

fn view(gpus_free: &[bool], cpus_free: u32) -> NodeView {
    NodeView {
        name: "n".into(),
        partition: "gpu".into(),
        up: true,
        cpus_total: 64,
        cpus_free,
        memory_total_mb: 1024,
        memory_free_mb: 1024,
        gpus: gpus_free
            .iter()
            .enumerate()
            .map(|(i, &free)| GpuView {
                uuid: format!("GPU-{i}"),
                index: i as u32,
                gres_type: "h100".into(),
                free,
                ..Default::default()
            })
            .collect(),
    }
}

fn job(gpus: u32, cpus: u32) -> PendingJob {
    PendingJob {
        gpus_per_node: gpus,
        cpus_per_node: cpus,
        ..PendingJob::default()
    }
}

#[test]
fn scorers_on_node_views() {
    let full = view(&[false, false, false, true], 32);
    let empty = view(&[true, true, true, true], 64);
    let j = job(1, 32);
    // full: leftover 0.5·0/128000 + 0.5·0/8000 = 0 → 1 − 0 = 1
    assert!((BestFitPacking.score(&j, &full, &crate::score::Fit::default()) - 1.0).abs() < 1e-12);
    // empty: 0.5·32000/128000 + 0.5·3000/8000 = 0.125 + 0.1875 = 0.3125 → 1 − 0.625
    assert!(
        (BestFitPacking.score(&j, &empty, &crate::score::Fit::default()) - 0.375).abs() < 1e-12
    );
    assert!((Spread.score(&j, &empty, &crate::score::Fit::default()) + 0.375).abs() < 1e-12);
    assert!(
        Spread.score(&j, &empty, &crate::score::Fit::default())
            > Spread.score(&j, &full, &crate::score::Fit::default())
    );
    // Does not fit: 2 GPUs on `full`.
    assert_eq!(
        BestFitPacking.score(&job(2, 1), &full, &crate::score::Fit::default()),
        -1.0
    );
    assert_eq!(
        Spread.score(&job(2, 1), &full, &crate::score::Fit::default()),
        -1.0
    );
}
