//! Tests of the extender verbs, wire types and pod-to-job mapping.

use super::*;
use k8s_openapi::api::core::v1::Pod;

fn state_with_node(gpus: u32, busy: u32) -> StateMachine {
    state_with_node_cpus(gpus, busy, 1)
}

/// Node gpu1 (64 CPUs, 256 GiB) with `gpus` GPUs; a batch job holds `busy` of them and
/// `cpus_held` CPUs when `busy > 0`.
fn state_with_node_cpus(gpus: u32, busy: u32, cpus_held: u32) -> StateMachine {
    let mut sm = StateMachine::default();
    let inv = pb::NodeInventory {
        name: "gpu1".into(),
        partition: "gpu".into(),
        cpus: 64,
        memory_mb: 256 << 10,
        gpus: (0..gpus)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-{i}"),
                index: i,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let register = pb::Command {
        time_ms: 1,
        cmd: Some(pb::command::Cmd::RegisterNode(pb::RegisterNode {
            inventory: Some(inv),
        })),
    };
    sm.apply(1, register);
    if busy > 0 {
        let spec = pb::JobSpec {
            name: "busy".into(),
            script: "#!/bin/sh\ntrue\n".into(),
            work_dir: "/tmp".into(),
            partition: "gpu".into(),
            nodes: 1,
            ntasks: 1,
            cpus_per_task: 1,
            gpus_per_node: busy,
            ..Default::default()
        };
        let submit = pb::Command {
            time_ms: 2,
            cmd: Some(pb::command::Cmd::Submit(pb::SubmitJob { spec: Some(spec) })),
        };
        sm.apply(2, submit);
        let alloc = pb::Allocate {
            term: 1,
            placements: vec![pb::Placement {
                job_id: 1,
                allocations: vec![pb::Allocation {
                    node: "gpu1".into(),
                    gpu_uuids: (0..busy).map(|i| format!("GPU-{i}")).collect(),
                    cpus: cpus_held,
                    ..Default::default()
                }],
                array_task_id: None,
            }],
        };
        sm.apply(
            3,
            pb::Command {
                time_ms: 3,
                cmd: Some(pb::command::Cmd::Allocate(alloc)),
            },
        );
    }
    sm
}

fn pod_json(gpus: &str) -> String {
    format!(
        r#"{{"metadata":{{"name":"p","namespace":"ml"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"nvidia.com/gpu":"{gpus}"}}}}}}]}}}}"#
    )
}

#[test]
fn filter_with_node_names_keeps_fitting_nodes_and_explains_the_rest() {
    let sm = state_with_node(8, 6);
    let body = format!(
        r#"{{"Pod":{},"Nodes":null,"NodeNames":["gpu1","cpu9"]}}"#,
        pod_json("2")
    );
    let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    assert_eq!(got.node_names, Some(vec!["gpu1".to_string()]));
    assert!(got.failed_and_unresolvable_nodes["cpu9"].contains("not managed by berth"));
    let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("3"));
    let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    assert_eq!(got.node_names, Some(vec![]));
    assert_eq!(
        got.failed_nodes["gpu1"],
        "Insufficient nvidia.com/gpu: 2 free, pod needs 3"
    );
    // The wire form: exact PascalCase keys, an empty list (never null) on success.
    let wire = serde_json::to_string(&got).unwrap();
    assert_eq!(
        wire,
        r#"{"Nodes":null,"NodeNames":[],"FailedNodes":{"gpu1":"Insufficient nvidia.com/gpu: 2 free, pod needs 3"},"FailedAndUnresolvableNodes":{},"Error":""}"#
    );
}

#[test]
fn filter_judges_cpus_and_memory_by_berths_own_accounting() {
    // A batch job kube-scheduler never sees holds 63 of the node's 64 CPUs.
    let sm = state_with_node_cpus(8, 1, 63);
    let pod = |cpu: &str, mem: &str| {
        format!(
            r#"{{"Pod":{{"metadata":{{"name":"p","namespace":"ml"}},"spec":{{"containers":[{{"name":"c","resources":{{"requests":{{"cpu":"{cpu}","memory":"{mem}"}},"limits":{{"nvidia.com/gpu":"1"}}}}}}]}}}},"NodeNames":["gpu1"]}}"#
        )
    };
    let run = |body: String| filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    let ok = run(pod("500m", "1Gi"));
    assert_eq!(ok.node_names, Some(vec!["gpu1".to_string()]), "{ok:?}");
    let busy = run(pod("2", "1Gi"));
    assert_eq!(
        busy.failed_nodes["gpu1"],
        "Insufficient cpu: 1 of 64 free in berth, pod needs 2"
    );
    let never = run(pod("65", "1Gi"));
    assert!(never.failed_and_unresolvable_nodes["gpu1"].contains("pod needs 65"));
    let mem = run(pod("1", "257Gi"));
    assert_eq!(
        mem.failed_and_unresolvable_nodes["gpu1"],
        "Insufficient memory: 262144 MiB of 262144 free in berth, pod needs 263168"
    );
    let bad = run(pod("lots", "1Gi"));
    assert!(bad.error.contains("lots"), "{bad:?}");
}

#[test]
fn filter_with_full_nodes_echoes_them_unchanged() {
    let sm = state_with_node(8, 0);
    let node = r#"{"metadata":{"name":"gpu1","labels":{"zone":"a"}},"spec":{"taints":[{"key":"k","effect":"NoSchedule"}]},"status":{"allocatable":{"cpu":"8"},"daemonEndpoints":{"kubeletEndpoint":{"Port":10250}}}}"#;
    let body = format!(
        r#"{{"pod":{},"nodes":{{"metadata":{{}},"items":[{node}]}}}}"#,
        pod_json("1")
    );
    let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    let items = &got.nodes.unwrap()["items"];
    assert_eq!(
        items[0],
        serde_json::from_str::<serde_json::Value>(node).unwrap()
    );
}

#[test]
fn prioritize_prefers_the_fullest_fit() {
    let sm = state_with_node(8, 6);
    let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1","x"]}}"#, pod_json("2"));
    let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
    // 2 free, 2 wanted: the pod fills the node, 10 - 10*0/8 = 10.
    assert_eq!(
        got[0],
        HostPriority {
            host: "gpu1".into(),
            score: 10
        }
    );
    assert_eq!(
        got[1],
        HostPriority {
            host: "x".into(),
            score: 0
        }
    );
    let sm = state_with_node(8, 0);
    let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
    // 8 free, 2 wanted: 10 - 10*6/8 = 10 - 7 = 3 (integer division).
    assert_eq!(got[0].score, 3);
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        ("", "invalid extender request"),
        ("{", "invalid extender request"),
        ("[]", "invalid extender request"),
        (r#"{"NodeNames":["a"]}"#, "no Pod"),
        (
            r#"{"Pod":{"metadata":{"name":"p"}}}"#,
            "neither Nodes nor NodeNames",
        ),
        (
            r#"{"Pod":{"spec":{"containers":"x"}},"NodeNames":[]}"#,
            "invalid extender request",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        match parse_args(body.as_bytes()) {
            Err(e) if e.to_string().contains(want) => {}
            other => panic!("#{i}: want an error with {want:?}, got {other:?}"),
        }
    }
    let sm = state_with_node(8, 0);
    for (quantity, want) in [("1.5", "not a whole number"), ("two", "not a whole number")] {
        let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json(quantity));
        let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
        assert!(got.error.contains(want), "{quantity}: {got:?}");
        assert_eq!(got.node_names, None, "every node filtered out on error");
    }
    let mixed = r#"{"Pod":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/mig-1g.10gb":"1","nvidia.com/gpu":"1"}}}]}},"NodeNames":["gpu1"]}"#;
    let got = filter(&sm, &parse_args(mixed.as_bytes()).unwrap(), None);
    assert!(
        got.error
            .contains("asks for nvidia.com/gpu and nvidia.com/mig-1g.10gb"),
        "{got:?}"
    );
    assert_eq!(got.node_names, None, "every node filtered out on error");
}

#[test]
fn unhealthy_gpus_are_neither_free_nor_counted() {
    let mut sm = state_with_node(2, 0);
    let mark = pb::MarkGpuUnhealthy {
        node: "gpu1".into(),
        gpu_uuid: "GPU-1".into(),
        reason: "XID 79".into(),
    };
    sm.apply(
        2,
        pb::Command {
            time_ms: 2,
            cmd: Some(pb::command::Cmd::MarkGpuUnhealthy(mark)),
        },
    );
    let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("2"));
    let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    assert_eq!(
        got.failed_and_unresolvable_nodes["gpu1"],
        "node has 1 healthy GPUs, pod needs 2"
    );
    let body = format!(r#"{{"Pod":{},"NodeNames":["gpu1"]}}"#, pod_json("1"));
    let got = prioritize(&sm, &parse_args(body.as_bytes()).unwrap()).unwrap();
    // 1 healthy GPU, 1 wanted: filled, 10.
    assert_eq!(got[0].score, 10);
}

#[test]
fn quantities_parse_like_kubernetes() {
    let ok: &[(&str, bool, u64)] = &[
        ("2", true, 2000),
        ("500m", true, 500),
        ("1.5", true, 1500),
        ("0.1", true, 100),
        ("128Mi", false, 128 << 20),
        ("1Gi", false, 1 << 30),
        ("1G", false, 1_000_000_000),
        ("1e9", false, 1_000_000_000),
        ("100", false, 100),
    ];
    for (i, (text, milli, want)) in ok.iter().enumerate() {
        let got = quantity(text, *milli);
        assert_eq!(got, Ok(*want), "#{i}: {text}");
    }
    for (i, text) in ["", "Mi", "-1", "abc", "1.2.3", "12Zi", "1e999"]
        .iter()
        .enumerate()
    {
        assert!(quantity(text, false).is_err(), "#{i}: {text:?} accepted");
    }
}

#[test]
fn a_pod_becomes_a_one_node_job_of_its_namespace() {
    let pod: Pod = serde_json::from_str(
        r#"{"metadata":{"name":"train","namespace":"ml","uid":"u-1"},
            "spec":{"priorityClassName":"training","containers":[
              {"name":"a","resources":{"requests":{"cpu":"1500m","memory":"1Gi"},"limits":{"nvidia.com/gpu":"2"}}},
              {"name":"b","resources":{"requests":{"cpu":"250m","memory":"512Mi"}}}]}}"#,
    )
    .unwrap();
    let spec = pod_job_spec(&pod, "h100", None).unwrap();
    assert_eq!(spec.pod.as_ref().unwrap().uid, "u-1");
    assert_eq!(
        (spec.account.as_str(), spec.qos.as_str()),
        ("ml", "training")
    );
    // 1.75 cores round up to 2; 1.5 GiB = 1536 MiB.
    assert_eq!(
        (spec.cpus_per_task, spec.mem_mb, spec.gpus_per_node),
        (2, 1536, 2)
    );
    crate::state_machine::pods::validate_pod_spec(&spec).unwrap();
    let bad: Pod = serde_json::from_str(
        r#"{"metadata":{"name":"x"},"spec":{"containers":[{"name":"a","resources":{"requests":{"memory":"lots"}}}]}}"#,
    )
    .unwrap();
    let err = pod_job_spec(&bad, "h100", None).unwrap_err().to_string();
    assert!(err.contains("memory") && err.contains("lots"), "{err}");
}

#[test]
fn binding_args_use_the_go_field_names() {
    let a =
        parse_binding_args(br#"{"PodName":"p","PodNamespace":"ml","PodUID":"u","Node":"gpu1"}"#)
            .unwrap();
    assert_eq!((a.pod_name.as_str(), a.node.as_str()), ("p", "gpu1"));
    for body in [
        &b"{}"[..],
        br#"{"PodName":"","PodNamespace":"ml","Node":"n"}"#,
        b"nope",
    ] {
        assert!(parse_binding_args(body).is_err());
    }
    let wire = serde_json::to_string(&ExtenderBindingResult::default()).unwrap();
    assert_eq!(wire, r#"{"Error":""}"#);
}

#[test]
fn preempt_keeps_only_nodes_where_the_victims_free_enough_gpus() {
    // 8 GPUs, 6 held by batch job 1 (not a pod): evicting pods frees nothing there.
    let sm = state_with_node(8, 6);
    let body = format!(
        r#"{{"Pod":{},"NodeNameToMetaVictims":{{"gpu1":{{"Pods":[{{"UID":"v1"}}],"NumPDBViolations":0}},"ghost":{{"Pods":[{{"UID":"v2"}}]}}}}}}"#,
        pod_json("3")
    );
    let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
    assert!(got.node_name_to_meta_victims.is_empty(), "{got:?}");
    // 2 GPUs: they are free already, so the node is kept with its victims.
    let body = body.replace("\"3\"", "\"2\"");
    let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        r#"{"NodeNameToMetaVictims":{"gpu1":{"Pods":[{"UID":"v1"}],"NumPDBViolations":0}}}"#
    );
    assert!(parse_preemption_args(b"{}").is_err());
    assert!(parse_preemption_args(b"{\"Pod\":5}").is_err());
}

#[test]
fn preempting_a_pod_that_holds_the_gpus_is_agreed() {
    let mut sm = state_with_node(4, 0);
    let pod: Pod = serde_json::from_str(
        r#"{"metadata":{"name":"low","namespace":"ml","uid":"v1"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/gpu":"4"}}}]}}"#,
    )
    .unwrap();
    assert_eq!(bind_pod_on(&mut sm, 2, &pod, "gpu1", None), Ok(1));
    let body = format!(
        r#"{{"Pod":{},"NodeNameToMetaVictims":{{"gpu1":{{"Pods":[{{"UID":"v1"}}]}}}}}}"#,
        pod_json("4")
    );
    let got = preempt(&sm, &parse_preemption_args(body.as_bytes()).unwrap()).unwrap();
    assert_eq!(got.node_name_to_meta_victims.len(), 1);
    // Evicting some other pod frees nothing.
    let other = body.replace("\"v1\"", "\"v9\"");
    let got = preempt(&sm, &parse_preemption_args(other.as_bytes()).unwrap()).unwrap();
    assert!(got.node_name_to_meta_victims.is_empty());
}

/// gpu1: 8 GPUs, 4 held by a batch job, 2 by pod `u-pod-on-gpu1`, 2 free; gpu2: 8
/// free; cpu1 is not berth's.
fn golden_state() -> StateMachine {
    let mut sm = state_with_node(8, 4);
    let inv = pb::NodeInventory {
        name: "gpu2".into(),
        partition: "gpu".into(),
        cpus: 64,
        memory_mb: 256 << 10,
        gpus: (0..8)
            .map(|i| pb::Gpu {
                uuid: format!("GPU-B{i}"),
                index: i,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let cmd = |time_ms, cmd| pb::Command {
        time_ms,
        cmd: Some(cmd),
    };
    sm.apply(
        4,
        cmd(
            4,
            pb::command::Cmd::RegisterNode(pb::RegisterNode {
                inventory: Some(inv),
            }),
        ),
    );
    let pod: Pod = serde_json::from_str(
        r#"{"metadata":{"name":"low","namespace":"ml","uid":"u-pod-on-gpu1"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/gpu":"2"}}}]}}"#,
    )
    .unwrap();
    assert_eq!(bind_pod_on(&mut sm, 5, &pod, "gpu1", None), Ok(2));
    add_carved_nodes(&mut sm, 6);
    // One 1g.10gb slice held on mig1 and one share of a ts1 GPU, by pods.
    for (index, name, resource, node) in [
        (8, "slice", "nvidia.com/mig-1g.10gb", "mig1"),
        (9, "share", "nvidia.com/gpu.shared", "ts1"),
    ] {
        let pod: Pod = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"u-{name}"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"{resource}":"1"}}}}}}]}}}}"#
        ))
        .unwrap();
        bind_pod_on(&mut sm, index, &pod, node, None).unwrap();
    }
    sm
}

/// Registers mig1 (2 A100 80GB in MIG mode, built-in profile table) and ts1 (2 GPUs
/// offered as 4 time-slice replicas each) at `index` and `index + 1`.
fn add_carved_nodes(sm: &mut StateMachine, index: u64) {
    let node = |name: &str, gpus: Vec<pb::Gpu>| pb::NodeInventory {
        name: name.into(),
        partition: "gpu".into(),
        cpus: 16,
        memory_mb: 1 << 20,
        gpus,
        ..Default::default()
    };
    let mig = (0..2)
        .map(|i| pb::Gpu {
            uuid: format!("GPU-M{i}"),
            index: i,
            model: "NVIDIA A100-SXM4-80GB".into(),
            mig_capable: true,
            mig_enabled: true,
            ..Default::default()
        })
        .collect();
    let shared = (0..2)
        .map(|i| pb::Gpu {
            uuid: format!("GPU-T{i}"),
            index: i,
            replicas: 4,
            ..Default::default()
        })
        .collect();
    for (i, inv) in [node("mig1", mig), node("ts1", shared)]
        .into_iter()
        .enumerate()
    {
        let at = index + i as u64;
        let (outcome, _) = sm.apply(
            at,
            pb::Command {
                time_ms: at,
                cmd: Some(pb::command::Cmd::RegisterNode(pb::RegisterNode {
                    inventory: Some(inv),
                })),
            },
        );
        assert!(
            !matches!(outcome, crate::state_machine::Outcome::Rejected(_)),
            "{outcome:?}"
        );
    }
}

/// Every `testdata/extender/<case>.request.json` answered as the verb its name starts
/// with must equal `<case>.response.json` (the wire JSON). `BERTH_BLESS=1` writes
/// missing answers, to be read and checked by hand before they are committed.
#[test]
fn golden_requests_get_their_golden_answers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/extender");
    let sm = golden_state();
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(case) = name.strip_suffix(".request.json") else {
            continue;
        };
        let body = std::fs::read(&path).unwrap();
        let answer = if case.starts_with("filter") {
            let result = match parse_args(&body) {
                Ok(args) => filter(&sm, &args, None),
                Err(e) => ExtenderFilterResult {
                    error: e.to_string(),
                    ..Default::default()
                },
            };
            serde_json::to_value(result).unwrap()
        } else if case.starts_with("prioritize") {
            let args = parse_args(&body).unwrap();
            serde_json::to_value(prioritize(&sm, &args).unwrap()).unwrap()
        } else if case.starts_with("preempt") {
            let args = parse_preemption_args(&body).unwrap();
            serde_json::to_value(preempt(&sm, &args).unwrap()).unwrap()
        } else {
            panic!("{name}: no verb in the case name");
        };
        let want_path = dir.join(format!("{case}.response.json"));
        if !want_path.exists() && std::env::var_os("BERTH_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&answer).unwrap() + "\n";
            std::fs::write(&want_path, text).unwrap();
        }
        let want: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&want_path).unwrap_or_else(|e| panic!("{}: {e}", want_path.display())),
        )
        .unwrap();
        assert_eq!(answer, want, "{case}");
        cases += 1;
    }
    assert!(cases >= 8, "only {cases} golden cases found");
}

fn gang_pod(name: &str, gpus: u32) -> Pod {
    serde_json::from_str(&format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"uid-{name}","labels":{{"scheduling.x-k8s.io/pod-group":"g"}}}},
            "spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"nvidia.com/gpu":"{gpus}"}}}}}}]}}}}"#
    ))
    .unwrap()
}

/// Plans and applies a pod's bind on `node` (a gang member's with `group`), as the
/// leader's `BindPod` does.
fn bind_pod_on(
    sm: &mut StateMachine,
    index: u64,
    pod: &Pod,
    node: &str,
    group: Option<&pb::PodGroupRef>,
) -> Result<u64, String> {
    let spec = pod_job_spec(pod, "gpu", group.cloned()).unwrap();
    let (allocation, reservation) = plan_bind(sm, node, &spec)?;
    let bind = pb::BindPod {
        term: 1,
        spec: Some(spec),
        allocation: Some(allocation),
        reservation,
    };
    let cmd = pb::Command {
        time_ms: index,
        cmd: Some(pb::command::Cmd::BindPod(bind)),
    };
    match sm.apply(index, cmd).0 {
        crate::state_machine::Outcome::Submitted(id) => Ok(id),
        other => Err(format!("{other:?}")),
    }
}

/// `/filter` of pod group member `pod` over the golden nodes gpu1 and gpu2.
fn filter_gang_member(
    sm: &StateMachine,
    pod: &Pod,
    group: &pb::PodGroupRef,
) -> ExtenderFilterResult {
    let body = format!(
        r#"{{"Pod":{},"NodeNames":["gpu1","gpu2"]}}"#,
        serde_json::to_string(pod).unwrap()
    );
    filter(sm, &parse_args(body.as_bytes()).unwrap(), Some(group))
}

fn free_on(sm: &StateMachine, node: &str) -> u32 {
    pod_fit::check(sm, node, &PodGpus::Whole(1)).unwrap_or(0)
}

#[test]
fn a_pod_group_is_reserved_whole_at_its_first_bind_and_claimed_slot_by_slot() {
    // gpu1 has 2 free GPUs, gpu2 8: three 2-GPU members fit (gpu1 + 2 on gpu2).
    let mut sm = golden_state();
    let group = pb::PodGroupRef {
        name: "ml/g".into(),
        min_member: 3,
        timeout_ms: 60_000,
    };
    assert_eq!(pod_group_name(&gang_pod("m0", 2)).as_deref(), Some("ml/g"));
    let first = bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu1", Some(&group)).unwrap();
    // Every member's GPUs are held from the first bind on: gpu1 full, 4 taken on gpu2.
    assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (0, 4));
    let held = sm.group_reservation("ml/g").unwrap().id;
    assert_eq!(held, first + 1);
    // The other members are steered to the reserved node only.
    let got = filter_gang_member(&sm, &gang_pod("m1", 2), &group);
    assert_eq!(got.node_names, Some(vec!["gpu2".to_string()]), "{got:?}");
    assert!(got.failed_nodes["gpu1"].contains("holds its GPUs on other nodes"));
    // A member may not take GPUs its group did not reserve.
    assert!(bind_pod_on(&mut sm, 11, &gang_pod("m1", 2), "gpu1", Some(&group)).is_err());
    bind_pod_on(&mut sm, 12, &gang_pod("m1", 2), "gpu2", Some(&group)).unwrap();
    bind_pod_on(&mut sm, 13, &gang_pod("m2", 2), "gpu2", Some(&group)).unwrap();
    assert!(sm.group_reservation("ml/g").is_none(), "all slots claimed");
    assert_eq!(sm.job(held).unwrap().state(), pb::JobState::Completed);
    assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (0, 4));
    let members = sm
        .jobs()
        .filter(|j| j.spec.as_ref().and_then(|s| s.pod.as_ref()).is_some())
        .filter(|j| j.state() == pb::JobState::Running)
        .count();
    assert_eq!(members, 6, "three gang members and the three earlier pods");
}

#[test]
fn a_pod_group_that_cannot_fit_whole_takes_nothing() {
    let mut sm = golden_state();
    let group = pb::PodGroupRef {
        name: "ml/g".into(),
        min_member: 6,
        timeout_ms: 60_000,
    };
    // 2 + 8 free GPUs hold five 2-GPU members, not six.
    let got = filter_gang_member(&sm, &gang_pod("m0", 2), &group);
    assert_eq!(got.node_names, Some(vec![]));
    assert_eq!(
        got.failed_nodes["gpu2"],
        "pod group ml/g: 5 of its 6 members fit now"
    );
    let err = bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu2", Some(&group)).unwrap_err();
    assert!(err.contains("only 5 of its 6 members fit"), "{err}");
    assert_eq!((free_on(&sm, "gpu1"), free_on(&sm, "gpu2")), (2, 8));
    // A bind that carries too few slots is refused by the log itself.
    let spec = pod_job_spec(&gang_pod("m0", 2), "gpu", Some(group)).unwrap();
    let bind = pb::BindPod {
        term: 1,
        allocation: Some(allocation_on(&sm, "gpu2", &spec).unwrap()),
        spec: Some(spec),
        reservation: vec![],
    };
    let cmd = pb::Command {
        time_ms: 11,
        cmd: Some(pb::command::Cmd::BindPod(bind)),
    };
    let (outcome, _) = sm.apply(11, cmd);
    assert!(
        matches!(outcome, crate::state_machine::Outcome::Rejected(ref w) if w.contains("needs 6 members")),
        "{outcome:?}"
    );
    assert_eq!(free_on(&sm, "gpu2"), 8);
}

#[test]
fn an_expired_reservation_is_released_by_cancel() {
    let mut sm = golden_state();
    let group = pb::PodGroupRef {
        name: "ml/g".into(),
        min_member: 3,
        timeout_ms: 1_000,
    };
    bind_pod_on(&mut sm, 10, &gang_pod("m0", 2), "gpu2", Some(&group)).unwrap();
    assert_eq!(free_on(&sm, "gpu2"), 2);
    let running: Vec<pb::Job> = sm.jobs().cloned().collect();
    assert!(crate::kube_api::expired_reservations(&running, 10 + 999).is_empty());
    let expired = crate::kube_api::expired_reservations(&running, 10 + 1_000);
    assert_eq!(expired.len(), 1);
    let cancel = pb::Command {
        time_ms: 2_000,
        cmd: Some(pb::command::Cmd::Cancel(pb::CancelJob {
            job_id: expired[0],
            reason: "pod group reservation timed out".into(),
            ..Default::default()
        })),
    };
    sm.apply(11, cancel);
    // The first member keeps its 2 GPUs; the 4 reserved for the others are free again.
    assert_eq!(free_on(&sm, "gpu2"), 6);
}

#[test]
fn mig_and_shared_pods_get_slices_and_shares_chosen_by_the_placement() {
    let sm = golden_state();
    // The planner's rule: a lone 1g slice goes to start 6 of the first card.
    let slice = &sm.pod_job("u-slice").unwrap().allocations[0];
    assert!(slice.gpu_uuids.is_empty(), "{slice:?}");
    let got: Vec<(&str, &str, u32, u32)> = slice
        .mig_slices
        .iter()
        .map(|s| {
            (
                s.gpu_uuid.as_str(),
                s.profile.as_str(),
                s.placement_start,
                s.placement_size,
            )
        })
        .collect();
    assert_eq!(got, [("GPU-M0", "1g.10gb", 6, 1)]);
    let share = sm.pod_job("u-share").unwrap();
    assert_eq!(share.allocations[0].gpu_uuids, ["GPU-T0"]);
    let t0 = &sm.node("ts1").unwrap().inventory.as_ref().unwrap().gpus[0];
    assert_eq!(t0.share_job_ids, [share.id]);
    let ann = crate::kube_api::pod_annotations(sm.pod_job("u-slice").unwrap());
    assert_eq!(ann[crate::kube_api::MIG_SLICES_KEY], "GPU-M0:1g.10gb@6:1");
    let ann = crate::kube_api::pod_annotations(share);
    assert_eq!(
        (
            ann[crate::kube_api::GPUS_KEY].as_str(),
            ann[crate::kube_api::SHARING_KEY].as_str()
        ),
        ("GPU-T0", "time-slicing")
    );
}

#[test]
fn a_pod_allocation_of_the_wrong_kind_is_refused_at_apply() {
    let mut sm = golden_state();
    let pod = |name: &str, resource: &str| -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"ml","uid":"u-{name}"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"{resource}":"1"}}}}}}]}}}}"#
        ))
        .unwrap()
    };
    let whole_on = |node: &str, uuid: &str| pb::Allocation {
        node: node.into(),
        gpu_uuids: vec![uuid.into()],
        cpus: 1,
        ..Default::default()
    };
    let cases = [
        (
            pod("a", "nvidia.com/gpu.shared"),
            whole_on("gpu2", "GPU-B7"),
            "not time-sliced",
        ),
        (
            pod("b", "nvidia.com/gpu"),
            whole_on("ts1", "GPU-T1"),
            "is time-sliced",
        ),
        (
            pod("c", "nvidia.com/mig-1g.10gb"),
            whole_on("gpu2", "GPU-B7"),
            "1 MIG slice(s), the allocation carries 0",
        ),
    ];
    for (i, (pod, allocation, want)) in cases.into_iter().enumerate() {
        let bind = pb::BindPod {
            term: 1,
            spec: Some(pod_job_spec(&pod, "gpu", None).unwrap()),
            allocation: Some(allocation),
            reservation: vec![],
        };
        let before = sm.jobs().count();
        let index = 20 + i as u64;
        let cmd = pb::Command {
            time_ms: index,
            cmd: Some(pb::command::Cmd::BindPod(bind)),
        };
        match sm.apply(index, cmd).0 {
            crate::state_machine::Outcome::Rejected(why) if why.contains(want) => {}
            other => panic!("#{i}: want a refusal with {want:?}, got {other:?}"),
        }
        assert_eq!(
            sm.jobs().count(),
            before,
            "#{i}: a refused bind changes nothing"
        );
    }
    // A pod group of MIG pods is refused by filter, bind planning and the log alike.
    let group = pb::PodGroupRef {
        name: "ml/g".into(),
        min_member: 2,
        timeout_ms: 1_000,
    };
    let p = pod("d", "nvidia.com/mig-1g.10gb");
    let got = filter_gang_member(&sm, &p, &group);
    assert!(got.error.contains("pod groups get whole"), "{got:?}");
    let spec = pod_job_spec(&p, "gpu", Some(group)).unwrap();
    assert!(plan_bind(&sm, "mig1", &spec)
        .unwrap_err()
        .contains("not placed as a group"));
    assert!(crate::state_machine::pods::validate_pod_spec(&spec).is_err());
}

#[test]
fn preempt_judges_mig_pods_by_the_slices_the_victims_free() {
    let sm = golden_state();
    // Four 3g.40gb slices need both mig1 cards empty: the 1g slice of u-slice is in
    // the way, so only evicting that pod makes room.
    let pod = r#"{"metadata":{"name":"big","namespace":"ml"},"spec":{"containers":[{"name":"c","resources":{"limits":{"nvidia.com/mig-3g.40gb":"4"}}}]}}"#;
    let body = |victim: &str| {
        format!(
            r#"{{"Pod":{pod},"NodeNameToMetaVictims":{{"mig1":{{"Pods":[{{"UID":"{victim}"}}]}}}}}}"#
        )
    };
    let kept = |victim: &str| {
        let args = parse_preemption_args(body(victim).as_bytes()).unwrap();
        preempt(&sm, &args).unwrap().node_name_to_meta_victims.len()
    };
    assert_eq!(kept("u-slice"), 1);
    assert_eq!(
        kept("u-share"),
        0,
        "a pod on another node frees nothing here"
    );
}

#[test]
fn pods_without_gpus_pass_everywhere() {
    let sm = state_with_node(8, 8);
    let body = r#"{"Pod":{"metadata":{"name":"web"},"spec":{"containers":[{"name":"c"}]}},"NodeNames":["gpu1","cpu9"]}"#;
    let got = filter(&sm, &parse_args(body.as_bytes()).unwrap(), None);
    assert_eq!(got.node_names.unwrap().len(), 2);
}
