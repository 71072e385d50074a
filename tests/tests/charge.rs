//! Fair share charged by measured use, end to end: the same 2-GPU job on an idle
//! simulated H100 (the agent measures 0% busy) charges its account the GPUs held under
//! `charge = "allocated"` (the default, as Slurm) and almost nothing under
//! `charge = "measured"` (only its CPU share remains).

use berth_tests::{berth, berth_dev, free_port, poll, sbatch};
use std::path::Path;

/// The account tree with `charge` on top (`None`: the default).
fn accounts(charge: Option<&str>) -> String {
    let line = charge
        .map(|c| format!("charge = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        "{line}half_life_hours = 24\ndefault_account = \"alice\"\n\n\
         [[account]]\nname = \"research\"\nshares = 1\n\n\
         [[account]]\nname = \"alice\"\nparent = \"research\"\n"
    )
}

/// Runs one 2-GPU, 1-CPU job of 3 s under `berth dev` with `charge` and returns alice's
/// RawUsage from `sshare` (GPU-equivalent seconds).
fn alice_usage(dir: &Path, charge: Option<&str>) -> f64 {
    let file = dir.join("accounts.toml");
    std::fs::write(&file, accounts(charge)).unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let file_arg = file.to_string_lossy().into_owned();
    let (_dev, _) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--machine",
            "dgx-h100",
            "--nodes",
            "1",
            "--accounts",
            &file_arg,
        ],
    );
    poll("accounts installed", 30, || {
        let out = berth(dir, &server, &["admin", "accounts", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("name = \"alice\"")
            .then_some(())
    });
    let id = sbatch(
        dir,
        &server,
        &[
            "-A",
            "alice",
            "--gres=gpu:2",
            "-c",
            "1",
            "--wrap",
            "sleep 3",
        ],
    );
    poll("the job completes", 60, || {
        let out = berth(
            dir,
            &server,
            &[
                "sacct",
                "-X",
                "-n",
                "-P",
                "-o",
                "State",
                "-j",
                &id.to_string(),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .starts_with("COMPLETED")
            .then_some(())
    });
    poll("alice is charged", 30, || {
        let out = berth(dir, &server, &["sshare"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("alice "))?;
        // Account RawShares NormShares RawUsage …
        let raw: f64 = row.split_whitespace().nth(3)?.parse().ok()?;
        // The account is charged by the same command that ends the run, which sacct
        // showed applied: the row's number is final.
        Some(raw)
    })
}

#[test]
fn measured_charge_spares_an_idle_gpu_and_allocated_does_not() {
    let a = tempfile::tempdir().unwrap();
    let allocated = alice_usage(a.path(), None);
    let m = tempfile::tempdir().unwrap();
    let measured = alice_usage(m.path(), Some("measured"));
    eprintln!("charged: allocated {allocated}, measured {measured}");
    // Allocated: 2 GPUs for the run's ~3 s (at least 2 s of it, whatever the clock).
    assert!(allocated >= 4.0, "allocated charge {allocated}");
    // Measured: the GPUs were 0% busy, only its 1 CPU's share of the node is left.
    assert!(
        measured <= 1.0,
        "measured charge {measured} (allocated {allocated})"
    );
}
