//! Packing per partition and GPU fractions, end to end: `berth dev` with four simulated
//! 4×L40S nodes offered as 2 time-sliced shares per GPU, in two partitions — `packed`
//! (node1, node3; best fit) and `spread` (node2, node4; spread) — set in the accounts
//! TOML that berthd installs through the Raft log. Two half-GPU jobs in `packed` share
//! one GPU of one node; two plain-share jobs in `spread` land on different nodes; a 0.6
//! fraction does not fit beside a 0.5 one and takes another GPU; `scontrol show
//! partition` shows each partition's packing, and `squeue`/`scontrol` the fractions.

use berth_tests::{berth, berth_dev, free_port, poll, sbatch};
use std::path::Path;

fn show_job(dir: &Path, server: &str, id: u64) -> String {
    let out = berth(dir, server, &["scontrol", "show", "job", &id.to_string()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(node, GPU UUID)` of a running single-node, single-GPU job, once it runs.
fn placed(dir: &Path, server: &str, id: u64) -> (String, String, String) {
    poll(&format!("job {id} running"), 60, || {
        let text = show_job(dir, server, id);
        if !text.contains("JobState=RUNNING ") {
            return None;
        }
        let uuids = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("GpuUuids="))?;
        let (node, uuid) = uuids.split_once(':')?;
        Some((node.to_string(), uuid.to_string(), text))
    })
}

#[test]
fn partitions_pack_as_configured_and_fractions_share_a_gpu() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let accounts = dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        "[[partition]]\nname = \"packed\"\npacking = \"bestfit\"\n\
         [[partition]]\nname = \"spread\"\npacking = \"spread\"\n\
         [[account]]\nname = \"default\"\n",
    )
    .expect("accounts");
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--nodes",
            "4",
            "--machine",
            "pcie-l40s-4",
            "--partition",
            "packed,spread",
            "--gpu-replicas",
            "2",
            "--accounts",
            accounts.to_str().expect("utf-8"),
            "--http-listen",
            "off",
        ],
    );
    let parts = poll("packing installed", 30, || {
        let out = berth(dir, &server, &["scontrol", "show", "partition"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("Packing=spread").then_some(text)
    });
    assert!(
        parts.contains("PartitionName=packed\n   Nodes=node[1,3] TotalNodes=2")
            && parts.contains("Packing=bestfit\n"),
        "{parts}"
    );
    assert!(
        parts.contains("PartitionName=spread\n   Nodes=node[2,4] TotalNodes=2"),
        "{parts}"
    );

    let script = dir.join("hold.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ ! -e release ]; do sleep 0.2; done\n",
    )
    .expect("script");
    let script = script.to_str().expect("utf-8");
    // Best fit: the second half-GPU job goes where the first is, on the same GPU.
    let a = sbatch(dir, &server, &["-p", "packed", "--gpus=0.5", script]);
    let (node_a, gpu_a, text_a) = placed(dir, &server, a);
    let b = sbatch(dir, &server, &["-p", "packed", "--gres=gpu:0.5", script]);
    let (node_b, gpu_b, _) = placed(dir, &server, b);
    assert_eq!(
        (&node_b, &gpu_b),
        (&node_a, &gpu_a),
        "half-GPU jobs share a GPU"
    );
    assert!(text_a.contains("GRES=gpu:0.5(IDX:"), "{text_a}");
    assert!(text_a.contains("TresPerNode=gres/gpu:0.5"), "{text_a}");
    // That GPU is full (1000 milli): a 0.6 fraction goes to another GPU.
    let c = sbatch(dir, &server, &["-p", "packed", "--gpus=0.6", script]);
    let (_, gpu_c, _) = placed(dir, &server, c);
    assert_ne!(gpu_c, gpu_a, "0.6 does not fit beside 0.5 + 0.5");
    // Spread: two plain shares on different nodes.
    let d = sbatch(dir, &server, &["-p", "spread", "--gpus=1", script]);
    let (node_d, _, _) = placed(dir, &server, d);
    let e = sbatch(dir, &server, &["-p", "spread", "--gpus=1", script]);
    let (node_e, _, _) = placed(dir, &server, e);
    assert_ne!(node_d, node_e, "spread puts them on different nodes");
    assert!(node_d.as_str() == "node2" || node_d.as_str() == "node4");

    let q = berth(dir, &server, &["squeue", "-o", "%i %P %b"]);
    let q = String::from_utf8_lossy(&q.stdout);
    assert!(q.contains(&format!("{a} packed gres/gpu:0.5")), "{q}");
    assert!(q.contains(&format!("{c} packed gres/gpu:0.6")), "{q}");
    let node = berth(dir, &server, &["scontrol", "show", "node", &node_a]);
    let node = String::from_utf8_lossy(&node.stdout);
    assert!(
        node.contains(&format!("ShareJobs={a}:500,{b}:500 ShareMilli=1000/1000")),
        "{node}"
    );
    // Bad input never reaches a GPU: a fraction above one GPU is the CLI's error.
    let bad = berth(
        dir,
        &server,
        &["sbatch", "-p", "packed", "--gpus=1.5", script],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid GPU fraction --gpus=1.5"), "{err}");

    std::fs::write(dir.join("release"), "").expect("release");
    for id in [a, b, c, d, e] {
        poll(&format!("job {id} completes"), 60, || {
            show_job(dir, &server, id)
                .contains("JobState=COMPLETED ")
                .then_some(())
        });
    }
}
