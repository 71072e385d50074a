//! The `rocm` feature of berth-agent compiles (issue 7 item 7's CI step): with Debian's
//! `librocm-smi-dev` and `libclang-dev` (installed here through `ensure_debian_packages`
//! when missing and root), `cargo check -p berth-agent --features rocm --offline` must
//! succeed. It runs in its own target directory (`target/rocm-check`): the `cargo test`
//! running this holds the lock of the main one. That directory is kept, so after the first
//! run only berth's own crates are checked again.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_rocm_feature_compiles() {
    if let Err(why) = berth_tests::ensure_debian_packages(&["librocm-smi-dev", "libclang-dev"]) {
        println!("SKIPPED the_rocm_feature_compiles: {why}");
        return;
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let target = berth_tests::target_dir()
        .parent()
        .expect("target/<profile>")
        .join("rocm-check");
    // Cargo sets CARGO for the processes it runs; fall back to PATH's.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let check = || {
        Command::new(&cargo)
            .args(["check", "-p", "berth-agent", "--lib", "--features", "rocm"])
            .args(["--offline", "--locked"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&workspace)
            .output()
            .expect("run cargo check")
    };
    let mut out = check();
    // bindgen and libloading are optional: a plain build never downloads them. When the
    // offline check misses them, fetch what Cargo.lock names and check again.
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("offline") {
        let fetch = Command::new(&cargo)
            .args(["fetch", "--locked"])
            .current_dir(&workspace)
            .output()
            .expect("run cargo fetch");
        println!(
            "fetched the feature's crates: {}",
            if fetch.status.success() {
                "ok"
            } else {
                "failed"
            }
        );
        out = check();
    }
    assert!(
        out.status.success(),
        "`cargo check -p berth-agent --features rocm --offline` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
