//! MIG slices planned by berthd, end to end: `berth dev` on a simulated `a100-mig` node
//! (4×A100 40GB, MIG mode on) runs the real berthd and berth-agent. Jobs of several MIG
//! profiles submitted with sbatch run at once on non-overlapping slices that berthd chose
//! (each job sees its own MIG device), a job asking for more than fits now waits with
//! reason Resources and starts once slices free, one that could never fit is refused at
//! submit, and the simulated driver holds no MIG instance after the jobs end.

use berth_tests::{berth, berth_dev, free_port, mig_uuids, poll, sbatch};
use std::collections::BTreeMap;
use std::path::Path;

fn show_job(dir: &Path, server: &str, id: u64) -> String {
    let out = berth(dir, server, &["scontrol", "show", "job", &id.to_string()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `MigSlices=node:gpu:profile@start:size,...` of `scontrol show job`, parsed.
fn slices(text: &str) -> Vec<(String, String, u32, u32)> {
    let Some(line) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("MigSlices="))
    else {
        return Vec::new();
    };
    line.split(',')
        .map(|s| {
            let mut f = s.splitn(3, ':');
            let (_node, gpu, rest) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let (profile, at) = rest.split_once('@').expect("profile@start:size");
            let (start, size) = at.split_once(':').expect("start:size");
            (
                gpu.to_string(),
                profile.to_string(),
                start.parse().expect("start"),
                size.parse().expect("size"),
            )
        })
        .collect()
}

#[test]
fn mig_jobs_run_concurrently_on_slices_berthd_chose_and_slices_go_away() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--nodes",
            "1",
            "--machine",
            "a100-mig",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    // Each job records the devices it sees, then waits for `release` so all run at once.
    let script = dir.join("hold.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" > vis-$SLURM_JOB_ID\n\
         while [ ! -e release ]; do sleep 0.2; done\n",
    )
    .expect("script");
    let script = script.to_str().expect("utf-8");
    let asks: [&[&str]; 4] = [
        &["--gres=gpu:3g.20gb:2"],
        &["--gpus=4g.20gb:1"],
        &["--gpus-per-node=2g.10gb:2"],
        &["--gres=gpu:1g.5gb"],
    ];
    let mut ids = Vec::new();
    for ask in asks {
        let mut args = ask.to_vec();
        args.push(script);
        ids.push(sbatch(dir, &server, &args));
    }
    // Four 7g slices need four empty cards: feasible on an idle node, not now.
    let big = sbatch(dir, &server, &["--gres=gpu:7g.40gb:4", script]);
    // Nine 3g slices never fit 4 cards: refused at submit with the planner's reason.
    let never = berth(dir, &server, &["sbatch", "--gres=gpu:3g.20gb:9", script]);
    let err = String::from_utf8_lossy(&never.stderr);
    assert!(!never.status.success(), "9 slices accepted");
    assert!(
        err.contains("Requested node configuration is not available"),
        "{err}"
    );
    assert!(err.contains("needs 9 3g.20gb MIG slice(s)"), "{err}");
    // A typo in the profile is the CLI's error, before berthd sees it.
    let typo = berth(dir, &server, &["sbatch", "--gres=gpu:3g.20:1", script]);
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(err.contains("'3g.20' is not a MIG profile name"), "{err}");

    // All four run at the same time, each on the slices berthd named.
    let shown: Vec<String> = ids
        .iter()
        .map(|&id| {
            poll(&format!("job {id} running with its device"), 60, || {
                let text = show_job(dir, &server, id);
                let vis = std::fs::read_to_string(dir.join(format!("vis-{id}"))).ok()?;
                (text.contains("JobState=RUNNING ") && !vis.trim().is_empty()).then_some(text)
            })
        })
        .collect();
    let want_counts = [
        ("3g.20gb", 2),
        ("4g.20gb", 1),
        ("2g.10gb", 2),
        ("1g.5gb", 1),
    ];
    let mut by_gpu: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for (k, text) in shown.iter().enumerate() {
        let got = slices(text);
        assert_eq!(got.len(), want_counts[k].1, "job {}: {text}", ids[k]);
        for (gpu, profile, start, size) in got {
            assert_eq!(profile, want_counts[k].0, "job {}", ids[k]);
            by_gpu.entry(gpu).or_default().push((start, size));
        }
        // The job sees MIG devices (one per slice), not a whole GPU.
        let vis = std::fs::read_to_string(dir.join(format!("vis-{}", ids[k]))).expect("vis");
        let devices: Vec<&str> = vis.trim().split(',').collect();
        assert_eq!(devices.len(), want_counts[k].1, "job {}: {vis}", ids[k]);
        assert!(
            devices.iter().all(|d| d.starts_with("MIG-")),
            "job {}: {vis}",
            ids[k]
        );
    }
    for (gpu, mut placed) in by_gpu.clone() {
        placed.sort_unstable();
        for w in placed.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "GPU {gpu}: overlapping slices {placed:?}"
            );
        }
    }
    // Packing: the six slices use at most three of the four cards, so one stays whole.
    assert!(by_gpu.len() <= 3, "{by_gpu:?}");
    let lib = dir.join("state/nodes/node1/nvml/libnvidia-ml.so.1");
    assert_eq!(mig_uuids(&lib).len(), 6, "one MIG instance per slice");

    // The big job waits for resources, and says so.
    let text = show_job(dir, &server, big);
    assert!(text.contains("JobState=PENDING "), "{text}");
    poll("reason Resources", 30, || {
        show_job(dir, &server, big)
            .contains("Reason=Resources")
            .then_some(())
    });
    // scontrol show node shows the layout berthd holds.
    let node = berth(dir, &server, &["scontrol", "show", "node", "node1"]);
    let node = String::from_utf8_lossy(&node.stdout);
    assert!(node.contains("MigSlices=3g.20gb@"), "{node}");
    assert!(node.contains("MigMap="), "{node}");

    // Release: the four end, their slices go, and the big job gets four whole cards.
    std::fs::write(dir.join("release"), "").expect("release");
    for &id in &ids {
        poll(&format!("job {id} completes"), 60, || {
            show_job(dir, &server, id)
                .contains("JobState=COMPLETED ")
                .then_some(())
        });
    }
    let text = poll("the 7g job completes", 90, || {
        let t = show_job(dir, &server, big);
        t.contains("JobState=COMPLETED ").then_some(t)
    });
    let got = slices(&text);
    assert_eq!(got.len(), 4, "{text}");
    assert!(
        got.iter().all(|s| s.1 == "7g.40gb" && s.2 == 0 && s.3 == 8),
        "{got:?}"
    );
    poll("every MIG instance destroyed", 30, || {
        mig_uuids(&lib).is_empty().then_some(())
    });
    let node = berth(dir, &server, &["scontrol", "show", "node", "node1"]);
    let node = String::from_utf8_lossy(&node.stdout);
    assert!(
        !node.contains("JobId="),
        "slices still held in berthd: {node}"
    );
}
