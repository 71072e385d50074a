//! The deterministic simulator over many seeds, as CI runs it: every seed must keep
//! DESIGN.md's invariants 1–4 (see `berth_bench::sim`). A failure names the seed and the
//! command that replays it.

use berth_bench::sim::{banner, run, SimConfig};

fn seeds(replicas: u64, first: u64, count: u64) {
    for seed in first..first + count {
        let cfg = SimConfig::new(seed, replicas);
        if let Err(f) = run(&cfg) {
            panic!(
                "{}\nFAILED ({}): {}\nreproduce: cargo run --release -p berth-bench --bin sim -- --seed {seed} --replicas {replicas}",
                banner(&cfg),
                f.code,
                f.what
            );
        }
    }
}

#[test]
fn three_replicas_keep_the_invariants_under_faults() {
    seeds(3, 1, 30);
}

#[test]
fn five_replicas_keep_the_invariants_under_faults() {
    seeds(5, 1, 15);
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::new(7, 3);
    let first = run(&cfg).expect("seed 7 passes");
    assert!(first.acked_submits > 10, "the run did some work: {first:?}");
    assert!(first.restarts > 0, "the run crashed replicas: {first:?}");
    assert_eq!(run(&cfg).expect("seed 7 passes"), first);
}

#[test]
fn a_cluster_without_faults_acknowledges_nearly_everything() {
    let mut cfg = SimConfig::new(11, 3);
    cfg.faults.loss = 0.0;
    cfg.faults.duplicate = 0.0;
    cfg.crash_p = 0.0;
    cfg.partition_p = 0.0;
    let r = run(&cfg).expect("a calm cluster passes");
    assert_eq!(r.restarts, 0);
    // Only requests before the first election (about 100 ms) go unanswered.
    assert!(r.acked_submits > 150, "{r:?}");
    assert!(r.unknown * 10 < r.acked_submits as u64, "{r:?}");
}
