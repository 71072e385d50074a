//! Finding the `berth` binary a benchmark runs as its users would: `--berth PATH`, else the
//! one built next to the benchmark (`target/release/berth`).

use std::path::PathBuf;

/// The `berth` binary for a benchmark given `args`.
///
/// # Errors
/// `--berth` without a path, or no `berth` next to the running benchmark.
pub fn berth_binary(args: &[String]) -> anyhow::Result<PathBuf> {
    if let Some(i) = args.iter().position(|a| a == "--berth") {
        let path = args
            .get(i + 1)
            .ok_or_else(|| anyhow::anyhow!("--berth needs a path"))?;
        return Ok(PathBuf::from(path));
    }
    let path = std::env::current_exe()?.with_file_name("berth");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it (cargo build --release --workspace) or pass --berth PATH",
        path.display()
    );
    Ok(path)
}
