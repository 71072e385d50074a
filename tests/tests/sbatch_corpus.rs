//! End-to-end: real-world-style `#SBATCH` scripts (tests/testdata/sbatch_corpus/, each
//! naming the style it follows and its expected outcome) run unchanged through `berth dev`
//! with a cluster description: two described GPU nodes with agents, two CPU nodes without
//! (Slurm's UNKNOWN), overlapping partitions and a license. Each script is accepted and
//! completes, or is refused with Slurm 22.05's message.

use berth_tests::{berth, berth_dev, free_port, poll};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sbatch_corpus")
}

/// The `# expect:` line of a script: `None` for `run`, `Some(message)` for `refuse …`.
fn expectation(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .expect("every corpus script has an # expect: line");
    match line.strip_prefix("refuse ") {
        Some(message) => Some(message.to_string()),
        None => {
            assert_eq!(line, "run", "expect: run or refuse MESSAGE");
            None
        }
    }
}

fn state_of(dir: &Path, server: &str, id: u64) -> String {
    let out = berth(dir, server, &["scontrol", "show", "job", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn real_world_scripts_run_unchanged_on_a_described_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--machine",
            "dgx-h100",
            "--nodes",
            "2",
            "--kill-wait-secs",
            "2",
        ],
    );
    let server = format!("http://127.0.0.1:{port}");
    let installed = berth(
        dir,
        &server,
        &[
            "admin",
            "config",
            "set",
            corpus().join("cluster.toml").to_str().unwrap(),
        ],
    );
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let mut scripts: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 9, "the corpus has its scripts");
    let mut submitted = Vec::new();
    for script in &scripts {
        let text = std::fs::read_to_string(script).expect("read script");
        let out = berth(
            dir,
            &server,
            &["sbatch", "--parsable", script.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        match expectation(&text) {
            None => {
                assert!(
                    out.status.success(),
                    "{}: refused: {stderr}",
                    script.display()
                );
                let id: u64 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("id");
                submitted.push((script.clone(), id));
            }
            Some(message) => {
                assert!(!out.status.success(), "{}: accepted", script.display());
                assert!(
                    stderr.contains(&format!("Batch job submission failed: {message}")),
                    "{}: want Slurm's {message:?}, got {stderr}",
                    script.display()
                );
            }
        }
    }
    for (script, id) in &submitted {
        let state = poll(&format!("{} to complete", script.display()), 60, || {
            let s = state_of(dir, &server, *id);
            matches!(s.as_str(), "COMPLETED" | "FAILED" | "CANCELLED").then_some(s)
        });
        assert_eq!(state, "COMPLETED", "{}", script.display());
    }

    // A job for the described CPU nodes, whose agents never connected: accepted, and it
    // waits (the nodes are Slurm's UNKNOWN), rather than "0 of 0 nodes".
    let out = berth(
        dir,
        &server,
        &["sbatch", "--parsable", "-p", "cpu", "--wrap", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("id");
    assert_eq!(state_of(dir, &server, id), "PENDING");
    let node = berth(dir, &server, &["scontrol", "show", "node", "late01"]);
    assert!(
        String::from_utf8_lossy(&node.stdout).contains("State=UNKNOWN"),
        "{}",
        String::from_utf8_lossy(&node.stdout)
    );
    // One no described node could ever run: refused with Slurm's message and the reason.
    let out = berth(
        dir,
        &server,
        &["sbatch", "-p", "cpu", "--mem=200G", "--wrap", "true"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Memory specification can not be satisfied") && stderr.contains("late01"),
        "{stderr}"
    );

    // A bad description is refused with its line and changes nothing.
    std::fs::write(
        dir.join("bad.toml"),
        "[[nodes]]\nnames = \"n[3-1]\"\ncpus = 1\nmemory = 1\n",
    )
    .unwrap();
    let bad = berth(
        dir,
        &server,
        &[
            "admin",
            "config",
            "set",
            dir.join("bad.toml").to_str().unwrap(),
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1"));
    let shown = berth(dir, &server, &["admin", "config", "show"]);
    let want = std::fs::read_to_string(corpus().join("cluster.toml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout), want);
}
