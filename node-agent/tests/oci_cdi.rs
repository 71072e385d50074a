//! The agent's CDI spec on a simulated MIG machine: written from NVML when first needed,
//! then rewritten when a job's MIG slice is created and again when it is destroyed.

use berth_agent::gpu::{GpuBackend, NvmlBackend};
use berth_agent::oci::{cdi, OciConfig};
use berth_agent::supervisor::{Status, Supervisor};
use berth_proto::v1 as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn device_names(dir: &std::path::Path) -> Vec<String> {
    let specs = cdi::load(&[dir.to_path_buf()]).expect("the agent's spec loads");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].kind, "nvidia.com/gpu");
    specs[0].devices.iter().map(|d| d.name.clone()).collect()
}

#[test]
fn the_cdi_spec_follows_mig_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let built = berth_simnvml::find_library().unwrap_or_else(|e| panic!("{e}"));
    let machine = berth_simnvml::builtin("a100-mig").expect("shipped machine");
    let lib = berth_simnvml::install_node(&dir.path().join("nvml"), &built, &machine, "n1")
        .expect("install");
    let gpus = Arc::new(NvmlBackend::open(Some(lib)).expect("open sim NVML"));
    let inv = gpus.inventory().expect("inventory");
    let mut sup = Supervisor::new(
        &dir.path().join("state"),
        PathBuf::from(env!("CARGO_BIN_EXE_berth-agent")),
        Duration::from_secs(1),
        gpus.clone(),
    )
    .expect("supervisor");
    let mut oci = OciConfig::new(&dir.path().join("state"));
    oci.cdi_dir = dir.path().join("cdi");
    oci.dev_dir = dir.path().join("dev");
    sup.set_oci(oci);
    assert!(
        !dir.path().join("cdi").join(cdi::SPEC_FILE).exists(),
        "no spec until a container job needs one"
    );
    sup.refresh_cdi(); // what a container launch does first
    let at_start = device_names(&dir.path().join("cdi"));
    let mut want: Vec<String> = Vec::new();
    for g in &inv.gpus {
        want.push(g.index.to_string());
        want.push(g.uuid.clone());
    }
    assert_eq!(at_start, want, "every GPU by index and by UUID");

    let out = dir.path().join("job.out");
    let job = pb::Job {
        id: 1,
        spec: Some(pb::JobSpec {
            script: "#!/bin/sh\nsleep 1\n".into(),
            work_dir: dir.path().display().to_string(),
            ..Default::default()
        }),
        stdout_path: out.display().to_string(),
        stderr_path: out.display().to_string(),
        allocations: vec![pb::Allocation {
            node: "n1".into(),
            cpus: 1,
            mig_slices: vec![pb::MigSlice {
                gpu_uuid: inv.gpus[1].uuid.clone(),
                profile: "3g.20gb".into(),
                placement_start: 0,
                placement_size: 4,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(sup.launch(&job, "n1").expect("launch"));
    let mig = gpus.mig_devices().expect("list");
    assert_eq!(mig.len(), 1);
    let with_mig = device_names(&dir.path().join("cdi"));
    assert!(with_mig.contains(&mig[0].uuid), "{with_mig:?}");
    assert!(
        with_mig.contains(&format!("1:{}", mig[0].gi_id)),
        "{with_mig:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Status::Finished(_)) = sup.poll().remove(&1) {
            break;
        }
        assert!(Instant::now() < deadline, "job did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gpus.mig_devices().expect("list").is_empty());
    assert_eq!(
        device_names(&dir.path().join("cdi")),
        want,
        "the MIG device is gone from the spec once destroyed"
    );
}
