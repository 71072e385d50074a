//! What a container job costs on top of its script: the image cache (a cold unpack of a
//! one-layer busybox image, then a warm hit) and one whole container run through the agent's
//! own code path (`shim::container::run`: overlay, bundle, CDI, `runc create`/`start`, wait,
//! OOM check, `delete`, cleanup) for a script that does nothing.
//!
//! Needs root, runc and busybox-static (`apt-get install runc busybox-static`).
//!
//! `cargo run --release -p berth-bench --bin container_start -- [RUNS] [--runtime PATH]`

use berth_agent::oci::{self, image::ImageCache, ContainerJob, OciConfig};
use berth_agent::shim::ShimSpec;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| anyhow::anyhow!("/bin/busybox ({e}): apt-get install busybox-static"))?;
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind, mode, size| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "bin/",
        std::io::empty(),
    )?;
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..])?;
    for applet in ["sh", "true"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "/bin/busybox")?;
    }
    Ok(b.into_inner()?)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} median {:.1} ms, p90 {:.1} ms, min {:.1} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.0)
    );
}

fn container_job(config: &OciConfig, image: &Path, job_dir: &Path, id: u64) -> ContainerJob {
    ContainerJob {
        config: config.clone(),
        image: image.display().to_string(),
        mounts: Vec::new(),
        workdir: String::new(),
        env_keep: Vec::new(),
        devices: Vec::new(),
        id: oci::container_id(id, job_dir),
        mem_mb: 64,
        cpus: 1,
        hostname: "bench".into(),
        uid: 0,
        gid: 0,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let runtime = args
        .iter()
        .position(|a| a == "--runtime")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("runc"), PathBuf::from);
    let tmp = tempfile::tempdir()?;
    let image = tmp.path().join("busybox-oci");
    oci::image::write_layout(&image, &[busybox_layer()?], true, &["PATH=/bin".into()])?;
    let image_str = image.display().to_string();

    let mut cold = Vec::new();
    for i in 0..5 {
        let cache = ImageCache::new(&tmp.path().join(format!("cold{i}")), u64::MAX);
        let t = Instant::now();
        cache.prepare(&image_str, &BTreeSet::new())?;
        cold.push(t.elapsed());
    }
    report("image prepare, cold (unpack 1 gzip layer, ~2 MB)", cold);
    let cache = ImageCache::new(&tmp.path().join("warm"), u64::MAX);
    cache.prepare(&image_str, &BTreeSet::new())?;
    let mut warm = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        cache.prepare(&image_str, &BTreeSet::new())?;
        warm.push(t.elapsed());
    }
    report("image prepare, cached", warm);

    let mut config = OciConfig::new(tmp.path());
    config.runtime = runtime;
    config.cache_dir = tmp.path().join("warm");
    let jobs = tmp.path().join("jobs");
    let mut whole = Vec::new();
    for id in 1..=runs as u64 {
        let dir = jobs.join(id.to_string());
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\ntrue\n")?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let job = container_job(&config, &image, &dir, id);
        let spec = ShimSpec {
            argv: vec![script.display().to_string()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: dir.clone(),
            stdout: dir.join("out"),
            stderr: dir.join("out"),
            uid_gid: None,
            groups: Vec::new(),
            container: Some(job.clone()),
            append: false,
        };
        let t = Instant::now();
        let rec = berth_agent::shim::container::run(&dir, &spec, &job);
        whole.push(t.elapsed());
        anyhow::ensure!(
            rec.code == Some(0) && rec.error.is_none(),
            "run {id} failed: {rec:?}: {}",
            std::fs::read_to_string(dir.join("out")).unwrap_or_default()
        );
    }
    report(
        "container run of `true` (bundle, CDI, create, start, wait, delete)",
        whole,
    );
    Ok(())
}
