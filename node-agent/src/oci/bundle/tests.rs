//! Bundle config tests: what runc will be told.

use super::*;
use crate::oci::{mounts, OciConfig};

fn job() -> ContainerJob {
    ContainerJob {
        config: OciConfig::new(Path::new("/state")),
        image: "/img".into(),
        mounts: vec![mounts::parse("/data:/mnt/data:ro").unwrap()],
        workdir: String::new(),
        env_keep: vec!["KEEP".into()],
        devices: vec![],
        id: "berth-7-00000000".into(),
        mem_mb: 64,
        cpus: 2,
        hostname: "node1".into(),
        uid: 1000,
        gid: 100,
    }
}

#[test]
fn config_carries_process_mounts_and_limits() {
    let j = job();
    let env: BTreeMap<String, String> = [
        ("SLURM_JOB_ID", "7"),
        ("CUDA_VISIBLE_DEVICES", "GPU-a"),
        ("PATH", "/host/bin"),
        ("KEEP", "host"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let defaults = ImageDefaults {
        env: vec![
            "PATH=/image/bin".into(),
            "KEEP=image".into(),
            "ONLY_IMAGE=1".into(),
        ],
        workdir: "/work".into(),
    };
    let args = vec!["a1".to_string()];
    let input = BundleInput {
        job: &j,
        rootfs: Path::new("/b/rootfs"),
        defaults: &defaults,
        env: &env,
        script: Path::new("/jobs/7/script"),
        args: &args,
    };
    let spec = config(&input).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(
        p.args().as_ref().unwrap(),
        &[SCRIPT_PATH.to_string(), "a1".into()]
    );
    assert_eq!(
        p.cwd(),
        Path::new("/work"),
        "the image's working directory by default"
    );
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
    let penv = p.env().as_ref().unwrap();
    for want in [
        "PATH=/image/bin",
        "KEEP=host",
        "ONLY_IMAGE=1",
        "SLURM_JOB_ID=7",
        "CUDA_VISIBLE_DEVICES=GPU-a",
    ] {
        assert!(
            penv.contains(&want.to_string()),
            "missing {want} in {penv:?}"
        );
    }
    let mounts = spec.mounts().as_ref().unwrap();
    let script = mounts
        .iter()
        .find(|m| m.destination() == Path::new(SCRIPT_PATH))
        .unwrap();
    assert_eq!(
        script.source().as_deref(),
        Some(Path::new("/jobs/7/script"))
    );
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/mnt/data"))
        .unwrap();
    assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/berth/berth-7-00000000"))
    );
    let ns: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(
        !ns.contains(&rt::LinuxNamespaceType::Network),
        "host network"
    );
    assert!(ns.contains(&rt::LinuxNamespaceType::Pid));
    assert!(ns.contains(&rt::LinuxNamespaceType::Mount));
    let res = linux.resources().as_ref().unwrap();
    let mem = res.memory().as_ref().unwrap();
    assert_eq!(mem.limit(), Some(64 * 1024 * 1024));
    assert_eq!(mem.swap(), Some(64 * 1024 * 1024));
    let cpu = res.cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(200_000), Some(100_000)));
    assert_eq!(spec.hostname().as_deref(), Some("node1"));
    assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("/b/rootfs"));
    // The JSON runc reads.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["process"]["terminal"], false);
    assert_eq!(
        json["linux"]["resources"]["memory"]["limit"],
        64 * 1024 * 1024
    );
}

#[test]
fn workdir_option_wins_and_no_limits_without_a_request() {
    let mut j = job();
    j.workdir = "/scratch".into();
    j.mem_mb = 0;
    j.cpus = 0;
    let env = BTreeMap::new();
    let defaults = ImageDefaults::default();
    let input = BundleInput {
        job: &j,
        rootfs: Path::new("/r"),
        defaults: &defaults,
        env: &env,
        script: Path::new("/s"),
        args: &[],
    };
    let spec = config(&input).unwrap();
    assert_eq!(
        spec.process().as_ref().unwrap().cwd(),
        Path::new("/scratch")
    );
    let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert!(res.memory().is_none() && res.cpu().is_none());
}

#[test]
fn slurm_variables_beat_the_image() {
    let image = vec!["SLURM_JOB_ID=stale".to_string(), "LANG=C".into()];
    let job: BTreeMap<String, String> = [("SLURM_JOB_ID".to_string(), "9".to_string())]
        .into_iter()
        .collect();
    let env = merge_env(&image, &job, &[]);
    assert_eq!(env, ["LANG=C", "SLURM_JOB_ID=9"]);
}
