//! One scheduling pass with many pending jobs on a large, busy cluster: the cost the
//! leader pays per cycle.
//!
//! `schedule_cycle [PENDING] [NODES] [RUNS]` (defaults 100000 1000 5): NODES nodes × 8 GPUs,
//! each with 7 of 8 GPUs held by running 1-GPU jobs (random ends up to 24 h, seeded), 50
//! accounts with random decayed usage, and PENDING jobs of 1, 2, 4 or 8 GPUs (a few
//! multi-node) with random accounts, classes, ages and time limits. Prints the fastest and
//! median wall time of RUNS passes per policy (`POLICY=fifo|backfill|berth` runs one). Deterministic inputs (a fixed LCG seed).

use berth_policies::{
    AccountTree, ClusterSnapshot, GpuView, NodeGrant, NodeView, PendingJob, PolicyConfig,
    PolicyKind, RunningJob,
};
use std::time::Instant;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let pending_n = args.first().copied().unwrap_or(100_000);
    let nodes_n = args.get(1).copied().unwrap_or(1000);
    let runs = args.get(2).copied().unwrap_or(5).max(1);
    let mut rng = Lcg(42);
    let now: u64 = 10 * 24 * 3600 * 1000;
    let accounts: Vec<String> = (0..50).map(|i| format!("acct{i}")).collect();
    let mut snap = ClusterSnapshot::default();
    let classes = [
        "production-inference",
        "critical-agents",
        "training",
        "research",
        "development",
    ];
    let mut id = 1_000_000;
    for n in 0..nodes_n {
        let name = format!("node{n:05}");
        let mut node = NodeView {
            name: name.clone(),
            partition: "gpu".into(),
            up: true,
            cpus_total: 128,
            cpus_free: 128,
            memory_total_mb: 1 << 21,
            memory_free_mb: 1 << 21,
            gpus: (0..8)
                .map(|g| GpuView {
                    uuid: format!("GPU-{name}-{g}"),
                    index: g,
                    gres_type: "h100".into(),
                    free: true,
                    ..GpuView::default()
                })
                .collect(),
            ..NodeView::default()
        };
        for g in 0..7 {
            node.gpus[g].free = false;
            node.cpus_free -= 4;
            id += 1;
            snap.running.push(RunningJob {
                id,
                user: String::new(),
                account: accounts[rng.below(50) as usize].clone(),
                // Running jobs are non-preemptible classes so the pass measures ordering,
                // backfill and placement, not a victim search on every blocked job.
                qos: classes[rng.below(2) as usize].into(),
                start_ms: now - rng.below(3_600_000),
                end_ms: now + 1 + rng.below(24 * 3_600_000),
                preempting: false,
                pinned: false,
                grants: vec![NodeGrant {
                    node: name.clone(),
                    gpu_uuids: vec![node.gpus[g].uuid.clone()],
                    gpu_indices: vec![g as u32],
                    cpus: 4,
                    mem_mb: 0,
                    ..NodeGrant::default()
                }],
            });
        }
        snap.nodes.push(node);
    }
    for a in &accounts {
        snap.usage
            .by_account
            .insert(a.clone(), rng.below(1_000_000) as f64);
    }
    snap.usage.as_of_ms = now;
    let pending: Vec<PendingJob> = (1..=pending_n)
        .map(|i| {
            let gpus = [1, 2, 4, 8][rng.below(4) as usize];
            PendingJob {
                id: i,
                partition: "gpu".into(),
                nodes: if gpus == 8 && rng.below(10) == 0 {
                    2
                } else {
                    1
                },
                gpus_per_node: gpus,
                cpus_per_node: 4 * gpus,
                account: accounts[rng.below(50) as usize].clone(),
                qos: classes[2 + rng.below(3) as usize].into(),
                submit_ms: now - rng.below(7 * 24 * 3_600_000),
                time_limit_s: 60 + rng.below(48 * 3600),
                ..PendingJob::default()
            }
        })
        .collect();
    let flat: Vec<(&str, u32)> = accounts
        .iter()
        .map(|a| (a.as_str(), 1 + (a.len() as u32 % 3)))
        .collect();
    let only = std::env::var("POLICY").unwrap_or_default().to_lowercase();
    for kind in [PolicyKind::Fifo, PolicyKind::Backfill, PolicyKind::Berth] {
        if !only.is_empty() && format!("{kind:?}").to_lowercase() != only {
            continue;
        }
        let cfg = PolicyConfig {
            kind,
            accounts: AccountTree::flat(&flat).expect("valid"),
            ..PolicyConfig::default()
        };
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            let s = berth_policies::schedule(&snap, &pending, &cfg, now);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            last = Some(s);
        }
        times.sort_by(f64::total_cmp);
        let s = last.expect("runs >= 1");
        println!(
            "{kind:?}: {pending_n} pending, {nodes_n} nodes, {} running: min {:.1} ms, median {:.1} ms ({} started, {} reserved, {} preemptions)",
            snap.running.len(),
            times[0],
            times[times.len() / 2],
            s.decisions.len(),
            s.pending.iter().filter(|p| p.expected_start_ms.is_some()).count(),
            s.preemptions.len()
        );
    }
}
