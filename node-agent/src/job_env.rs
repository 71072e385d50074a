//! The environment a batch script sees: the exported submit environment plus the Slurm
//! variables scripts rely on, and the GPU selection (`CUDA_VISIBLE_DEVICES` and
//! `NVIDIA_VISIBLE_DEVICES` set to the granted UUIDs, so a job cannot see other GPUs).

use berth_proto::v1 as pb;
use std::collections::BTreeMap;

/// Builds the environment of `job` running its batch script on `node`; `mig` are the
/// UUIDs (`MIG-…`) of the MIG devices carved for it, listed after whole GPUs.
pub fn build(job: &pb::Job, node: &str, mig: &[String]) -> BTreeMap<String, String> {
    let spec = job.spec.clone().unwrap_or_default();
    let mut env: BTreeMap<String, String> = spec.env.clone();
    if !env.contains_key("PATH") {
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    }
    let here = job
        .allocations
        .iter()
        .find(|a| a.node == node)
        .cloned()
        .unwrap_or_default();
    let nodes: Vec<&str> = job.allocations.iter().map(|a| a.node.as_str()).collect();
    let uuids = here
        .gpu_uuids
        .iter()
        .chain(mig)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let indices: Vec<String> = here.gpu_indices.iter().map(|i| i.to_string()).collect();
    let id = job.id.to_string();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("SLURM_JOB_ID", id.clone());
    set("SLURM_JOBID", id);
    set("SLURM_JOB_NAME", spec.name.clone());
    set("SLURM_SUBMIT_DIR", spec.submit_dir.clone());
    set("SLURM_SUBMIT_HOST", spec.submit_host.clone());
    set("SLURM_JOB_USER", spec.user.clone());
    set("SLURM_JOB_UID", spec.uid.to_string());
    set("SLURM_JOB_GID", spec.gid.to_string());
    set("SLURM_JOB_PARTITION", job.partition.clone());
    // What berthd resolved at submit (the user's default account, the default QOS) when
    // the user named none, as Slurm's jobs see it.
    let or_asked = |resolved: &str, asked: &str| {
        if resolved.is_empty() { asked } else { resolved }.to_string()
    };
    set("SLURM_JOB_ACCOUNT", or_asked(&job.account, &spec.account));
    set("SLURM_JOB_QOS", or_asked(&job.qos, &spec.qos));
    set("SLURM_JOB_NUM_NODES", nodes.len().to_string());
    set("SLURM_NNODES", nodes.len().to_string());
    set("SLURM_JOB_NODELIST", nodes.join(","));
    set("SLURM_NODELIST", nodes.join(","));
    set("SLURMD_NODENAME", node.to_string());
    set("SLURM_NTASKS", spec.ntasks.max(1).to_string());
    set("SLURM_NPROCS", spec.ntasks.max(1).to_string());
    set("SLURM_CPUS_PER_TASK", spec.cpus_per_task.max(1).to_string());
    // Open MPI's mpirun reads the job's layout from here to size its daemons' slots.
    set(
        "SLURM_TASKS_PER_NODE",
        tasks_per_node(&job_layout(spec.ntasks, spec.ntasks_per_node, nodes.len())),
    );
    if spec.ntasks_per_node > 0 {
        set("SLURM_NTASKS_PER_NODE", spec.ntasks_per_node.to_string());
    }
    set("SLURM_CPUS_ON_NODE", here.cpus.to_string());
    set("SLURM_JOB_CPUS_PER_NODE", here.cpus.to_string());
    if spec.mem_mb > 0 {
        set("SLURM_MEM_PER_NODE", spec.mem_mb.to_string());
    }
    set("SLURM_RESTART_COUNT", job.restart_count.to_string());
    // srun inside the job appends to its files too (submitit's steps write into the
    // batch output file).
    if spec.open_append {
        set("SLURM_OPEN_MODE", "append".into());
    }
    for (k, v) in array_vars(job) {
        set(k, v);
    }
    set("SLURM_NODEID", "0".into());
    set("SLURM_PROCID", "0".into());
    set("SLURM_LOCALID", "0".into());
    set("ENVIRONMENT", "BATCH".into());
    set(
        "SLURM_GPUS_ON_NODE",
        (here.gpu_uuids.len() + mig.len()).to_string(),
    );
    set("SLURM_JOB_GPUS", indices.join(","));
    set("GPU_DEVICE_ORDINAL", indices.join(","));
    for (k, v) in visible_devices(uuids) {
        set(k, v);
    }
    env
}

/// Tasks per node of a job of `ntasks` over `nodes` nodes: `--ntasks-per-node` on each,
/// else Slurm's block distribution (the first nodes take one more when they do not divide).
pub fn job_layout(ntasks: u32, ntasks_per_node: u32, nodes: usize) -> Vec<u32> {
    let n = nodes.max(1) as u32;
    if ntasks_per_node > 0 {
        return vec![ntasks_per_node; n as usize];
    }
    let ntasks = ntasks.max(n);
    (0..n)
        .map(|i| ntasks / n + u32::from(i < ntasks % n))
        .collect()
}

/// Slurm's `SLURM_TASKS_PER_NODE` text: runs of equal counts folded, `2(x3),1`.
pub fn tasks_per_node(counts: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < counts.len() {
        let run = counts[i..].iter().take_while(|c| **c == counts[i]).count();
        out.push(match run {
            1 => counts[i].to_string(),
            n => format!("{}(x{n})", counts[i]),
        });
        i += run;
    }
    out.join(",")
}

/// `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` for GPUs `uuids` (comma-separated):
/// by UUID, because indexes differ between NVML and CUDA ordering and UUIDs never do; the
/// container toolkit's `void` when there are none.
pub fn visible_devices(uuids: String) -> [(&'static str, String); 2] {
    let nvidia = if uuids.is_empty() {
        "void".to_string()
    } else {
        uuids.clone()
    };
    [
        ("CUDA_VISIBLE_DEVICES", uuids),
        ("NVIDIA_VISIBLE_DEVICES", nvidia),
    ]
}

/// `SLURM_ARRAY_*` of an array task: its array's id, its index, and the array's task
/// count, lowest and highest index and stride (1 unless all indexes are evenly spaced).
/// Nothing for a job that is not an array task.
pub fn array_vars(job: &pb::Job) -> Vec<(&'static str, String)> {
    let Some(task) = job.array_task_id else {
        return Vec::new();
    };
    // berthd checked the ranges at submit: ascending, disjoint, on their strides.
    let ranges = job
        .spec
        .as_ref()
        .and_then(|s| s.array.as_ref())
        .map(|a| a.ranges.as_slice())
        .unwrap_or_default();
    let count: u64 = ranges
        .iter()
        .map(|r| u64::from(r.end.saturating_sub(r.start) / r.step.max(1)) + 1)
        .sum();
    let stride = match ranges {
        [only] if only.start < only.end => only.step,
        _ => 1,
    };
    vec![
        ("SLURM_ARRAY_JOB_ID", job.array_job_id.to_string()),
        ("SLURM_ARRAY_TASK_ID", task.to_string()),
        ("SLURM_ARRAY_TASK_COUNT", count.max(1).to_string()),
        (
            "SLURM_ARRAY_TASK_MIN",
            ranges.first().map_or(task, |r| r.start).to_string(),
        ),
        (
            "SLURM_ARRAY_TASK_MAX",
            ranges.last().map_or(task, |r| r.end).to_string(),
        ),
        ("SLURM_ARRAY_TASK_STEP", stride.to_string()),
    ]
}

/// Rewrites the GPU selection of `env` for an AMD node: `ROCR_VISIBLE_DEVICES` (ROCr, under
/// HIP and OpenCL) names the granted GPUs, by UUID when every one has a ROCm UUID
/// (`GPU-…`), else by ROCm SMI index; the NVIDIA variables go, since HIP also reads
/// `CUDA_VISIBLE_DEVICES` (as ordinals among the visible GPUs) and would filter again.
pub fn use_rocr(env: &mut BTreeMap<String, String>, job: &pb::Job, node: &str) {
    let here = job.allocations.iter().find(|a| a.node == node);
    let uuids = here.map(|a| a.gpu_uuids.as_slice()).unwrap_or_default();
    let visible: Vec<String> = if uuids.iter().all(|u| u.starts_with("GPU-")) {
        uuids.to_vec()
    } else {
        here.map(|a| a.gpu_indices.iter().map(|i| i.to_string()).collect())
            .unwrap_or_default()
    };
    env.remove("CUDA_VISIBLE_DEVICES");
    env.remove("NVIDIA_VISIBLE_DEVICES");
    // ROCr treats an empty list as "no GPU"; the variable is always set so a job cannot
    // see GPUs it was not granted.
    env.insert("ROCR_VISIBLE_DEVICES".into(), visible.join(","));
}

/// MPS limits of a job on one of `replicas` shares, as NVIDIA's device plugin sets them:
/// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` = 100 / replicas and
/// `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` = `<ordinal>=<memory / replicas>M` for each visible
/// GPU, ordinals in `CUDA_VISIBLE_DEVICES` order. `memory_mb` maps GPU UUID → MiB. A
/// fraction (`--gpus=0.25`: the allocation's `gpu_milli`) gets its own size instead:
/// milli / 10 percent of the SMs and milli / 1000 of the memory.
pub fn mps(
    job: &pb::Job,
    node: &str,
    replicas: u32,
    memory_mb: &BTreeMap<String, u64>,
) -> Vec<(String, String)> {
    let replicas = replicas.max(1);
    let here = job.allocations.iter().find(|a| a.node == node);
    // (numerator, denominator) of the GPU this job may use.
    let (part, whole) = match here.map_or(0, |a| a.gpu_milli) {
        0 => (1, u64::from(replicas)),
        milli => (u64::from(milli), 1000),
    };
    let limits: Vec<String> = here
        .map(|a| a.gpu_uuids.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(ordinal, uuid)| {
            let mb = memory_mb.get(uuid)?;
            Some(format!("{ordinal}={}M", mb * part / whole))
        })
        .collect();
    if limits.is_empty() {
        return Vec::new();
    }
    vec![
        (
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
            (100 * part / whole).max(1).to_string(),
        ),
        ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), limits.join(",")),
    ]
}

/// `CUDA_MPS_PIPE_DIRECTORY` and `CUDA_MPS_LOG_DIRECTORY` of the MPS daemon of the job's
/// first granted GPU (`dirs` by UUID): a CUDA process talks to one control daemon, and
/// berth runs one per GPU. Nothing when the job has no GPU with a daemon.
pub fn mps_dirs(
    job: &pb::Job,
    node: &str,
    dirs: &BTreeMap<String, crate::mps::MpsDirs>,
) -> Vec<(String, String)> {
    let here = job.allocations.iter().find(|a| a.node == node);
    let Some(d) = here
        .and_then(|a| a.gpu_uuids.first())
        .and_then(|u| dirs.get(u))
    else {
        return Vec::new();
    };
    vec![
        (
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            d.pipe.display().to_string(),
        ),
        ("CUDA_MPS_LOG_DIRECTORY".into(), d.log.display().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_per_node_is_slurms_block_layout_folded() {
        assert_eq!(tasks_per_node(&job_layout(4, 0, 2)), "2(x2)");
        assert_eq!(tasks_per_node(&job_layout(5, 0, 3)), "2(x2),1");
        assert_eq!(tasks_per_node(&job_layout(1, 0, 2)), "1(x2)");
        assert_eq!(tasks_per_node(&job_layout(0, 3, 2)), "3(x2)");
        assert_eq!(tasks_per_node(&[1, 2, 2, 1]), "1,2(x2),1");
    }

    #[test]
    fn slurm_and_gpu_variables() {
        let mut spec = pb::JobSpec {
            name: "train".into(),
            ntasks: 1,
            cpus_per_task: 4,
            ..Default::default()
        };
        spec.env.insert("HOME".into(), "/home/x".into());
        spec.env.insert("SLURM_JOB_ID".into(), "stale".into());
        let job = pb::Job {
            id: 7,
            spec: Some(spec),
            // Resolved by berthd when the user named no account or QOS.
            account: "physics".into(),
            qos: "normal".into(),
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
                gpu_indices: vec![2, 5],
                cpus: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        let env = build(&job, "n1", &[]);
        let want = [
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NAME", "train"),
            ("SLURM_JOB_GPUS", "2,5"),
            ("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b"),
            ("NVIDIA_VISIBLE_DEVICES", "GPU-a,GPU-b"),
            ("SLURM_CPUS_PER_TASK", "4"),
            ("SLURM_JOB_NUM_NODES", "1"),
            ("SLURM_JOB_ACCOUNT", "physics"),
            ("SLURM_JOB_QOS", "normal"),
            ("HOME", "/home/x"),
        ];
        for (i, (k, v)) in want.iter().enumerate() {
            if env.get(*k).map(String::as_str) != Some(*v) {
                panic!("#{i}: want {k}={v}, got {:?}", env.get(*k));
            }
        }
        let cpu_only = build(
            &pb::Job {
                id: 1,
                allocations: vec![pb::Allocation {
                    node: "n1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            "n1",
            &[],
        );
        assert_eq!(cpu_only["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(cpu_only["NVIDIA_VISIBLE_DEVICES"], "void");
        let mig = build(&job, "n1", &["MIG-x".to_string()]);
        assert_eq!(mig["CUDA_VISIBLE_DEVICES"], "GPU-a,GPU-b,MIG-x");
        assert_eq!(mig["SLURM_GPUS_ON_NODE"], "3");
    }

    #[test]
    fn amd_jobs_select_gpus_through_rocr() {
        let mut job = pb::Job {
            id: 3,
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                gpu_uuids: vec!["GPU-4b2c1a7c91b2aa21".into(), "GPU-00000000000000ab".into()],
                gpu_indices: vec![0, 3],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut env = build(&job, "n1", &[]);
        use_rocr(&mut env, &job, "n1");
        assert_eq!(
            env["ROCR_VISIBLE_DEVICES"],
            "GPU-4b2c1a7c91b2aa21,GPU-00000000000000ab"
        );
        assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"), "{env:?}");
        assert!(!env.contains_key("NVIDIA_VISIBLE_DEVICES"), "{env:?}");
        assert_eq!(env["SLURM_JOB_GPUS"], "0,3");
        // A card without a unique id: ROCr cannot take its name, so indexes.
        job.allocations[0].gpu_uuids[1] = "AMD-PCI-0000:c1:00.0".into();
        use_rocr(&mut env, &job, "n1");
        assert_eq!(env["ROCR_VISIBLE_DEVICES"], "0,3");
        use_rocr(&mut env, &job, "elsewhere");
        assert_eq!(
            env["ROCR_VISIBLE_DEVICES"], "",
            "no GPUs granted, none visible"
        );
    }

    #[test]
    fn mps_limits_split_the_gpu_between_replicas() {
        let job = pb::Job {
            allocations: vec![pb::Allocation {
                node: "n1".into(),
                gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let memory = BTreeMap::from([("GPU-a".to_string(), 40960), ("GPU-b".to_string(), 81920)]);
        let got = mps(&job, "n1", 3, &memory);
        let want = [
            ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "33"),
            ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=13653M,1=27306M"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(
            mps(&job, "other", 3, &memory).is_empty(),
            "no GPUs here, no limits"
        );
        // A quarter-GPU fraction on a 3-replica GPU: its own size, not a third.
        let mut quarter = job.clone();
        quarter.allocations[0].gpu_uuids.truncate(1);
        quarter.allocations[0].gpu_milli = 250;
        let got = mps(&quarter, "n1", 3, &memory);
        assert_eq!(got[0].1, "25");
        assert_eq!(got[1].1, "0=10240M");
        quarter.allocations[0].gpu_milli = 1;
        assert_eq!(mps(&quarter, "n1", 3, &memory)[0].1, "1", "never 0 %");
        let dirs = BTreeMap::from([(
            "GPU-a".to_string(),
            crate::mps::MpsDirs {
                pipe: "/m/GPU-a/pipe".into(),
                log: "/m/GPU-a/log".into(),
            },
        )]);
        let got = mps_dirs(&job, "n1", &dirs);
        assert_eq!(
            got,
            [
                (
                    "CUDA_MPS_PIPE_DIRECTORY".to_string(),
                    "/m/GPU-a/pipe".to_string()
                ),
                (
                    "CUDA_MPS_LOG_DIRECTORY".to_string(),
                    "/m/GPU-a/log".to_string()
                )
            ]
        );
        assert!(mps_dirs(&job, "other", &dirs).is_empty());
        assert!(
            mps_dirs(&job, "n1", &BTreeMap::new()).is_empty(),
            "no daemons run"
        );
    }
}
