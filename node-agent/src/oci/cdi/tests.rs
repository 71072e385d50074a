//! CDI tests against the spec format (interfaces.md §4) and `container-edits.go`'s rules.

use super::*;

/// The reference's minimal spec (one GPU, one MIG device, spec-level edits), with explicit
/// type/major/minor so nothing stats `/dev`.
const REFERENCE: &str = r#"{
  "cdiVersion": "0.5.0",
  "kind": "nvidia.com/gpu",
  "devices": [
    { "name": "0",
      "containerEdits": { "deviceNodes": [ { "path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0 } ] } },
    { "name": "1:0",
      "containerEdits": {
        "env": [ "NVIDIA_VISIBLE_DEVICES=MIG-5c9a8f1e-3b2d-5a4c-9e1f-7d6c5b4a3f2e" ],
        "deviceNodes": [ { "path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1 },
                         { "path": "/dev/nvidia-caps/nvidia-cap21", "type": "c", "major": 511, "minor": 21, "permissions": "r" } ] } }
  ],
  "containerEdits": {
    "env": [ "NVIDIA_VISIBLE_DEVICES=void" ],
    "deviceNodes": [ { "path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255 } ],
    "mounts": [ { "hostPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                  "containerPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                  "options": [ "ro", "nosuid", "nodev", "bind" ] } ],
    "hooks": [ { "hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                 "args": [ "nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu" ] } ]
  }
}"#;

fn base_spec() -> rt::Spec {
    rt::Spec::default()
}

#[test]
fn the_reference_spec_parses_and_applies() {
    let spec = parse(REFERENCE.as_bytes()).unwrap();
    assert_eq!(spec.devices.len(), 2);
    let mut oci = base_spec();
    apply(&mut oci, &[spec], &["nvidia.com/gpu=1:0".into()]).unwrap();
    let env = oci.process().as_ref().unwrap().env().clone().unwrap();
    // Spec-level edits first, then the device's: the device's variable wins as the last.
    let vis: Vec<&String> = env
        .iter()
        .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
        .collect();
    assert_eq!(
        vis,
        [
            "NVIDIA_VISIBLE_DEVICES=void",
            "NVIDIA_VISIBLE_DEVICES=MIG-5c9a8f1e-3b2d-5a4c-9e1f-7d6c5b4a3f2e"
        ]
    );
    let linux = oci.linux().as_ref().unwrap();
    let paths: Vec<String> = linux
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/dev/nvidiactl",
            "/dev/nvidia1",
            "/dev/nvidia-caps/nvidia-cap21"
        ]
    );
    assert!(
        !paths.contains(&"/dev/nvidia0".to_string()),
        "ungranted GPU absent"
    );
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    let allowed: Vec<(i64, i64, String)> = rules
        .iter()
        .filter(|r| r.allow())
        .map(|r| {
            (
                r.major().unwrap(),
                r.minor().unwrap(),
                r.access().clone().unwrap(),
            )
        })
        .collect();
    assert!(allowed.contains(&(195, 255, "rwm".into())));
    assert!(allowed.contains(&(195, 1, "rwm".into())));
    assert!(
        allowed.contains(&(511, 21, "r".into())),
        "permissions become access"
    );
    let mounts = oci.mounts().clone().unwrap();
    let cuda = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"))
        .expect("mount applied");
    assert_eq!(
        cuda.options().clone().unwrap(),
        ["ro", "nosuid", "nodev", "bind"]
    );
    let counts: Vec<usize> = mounts
        .iter()
        .map(|m| m.destination().components().count())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "mounts sorted by depth: {counts:?}"
    );
    let hooks = oci.hooks().as_ref().unwrap();
    assert_eq!(hooks.create_container().as_ref().unwrap().len(), 1);
}

#[test]
fn spec_level_edits_apply_once_and_nodes_replace_by_path() {
    let spec = parse(REFERENCE.as_bytes()).unwrap();
    let mut oci = base_spec();
    let names = ["nvidia.com/gpu=0".to_string(), "nvidia.com/gpu=1:0".into()];
    apply(&mut oci, &[spec], &names).unwrap();
    let env = oci.process().as_ref().unwrap().env().clone().unwrap();
    assert_eq!(
        env.iter()
            .filter(|e| *e == "NVIDIA_VISIBLE_DEVICES=void")
            .count(),
        1
    );
    let devices = oci.linux().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(
        devices
            .iter()
            .filter(|d| d.path() == Path::new("/dev/nvidiactl"))
            .count(),
        1
    );
}

#[test]
fn bad_specs_are_refused_with_the_reason() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"0","containerEdits":{}}],"bogus":1}"#,
            "unknown field",
        ),
        (
            r#"{"cdiVersion":"9.9.9","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{}}]}"#,
            "unknown cdiVersion",
        ),
        (
            r#"{"cdiVersion":"0.3.0","kind":"nvidia.com/gpu","devices":[{"name":"0","containerEdits":{}}]}"#,
            "too low",
        ),
        (
            r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"additionalGids":[5]}}]}"#,
            "too low",
        ),
        (
            r#"{"cdiVersion":"1.0.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"netDevices":[{"hostInterfaceName":"x","name":"y"}]}}]}"#,
            "too low",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia","devices":[{"name":"a","containerEdits":{}}]}"#,
            "bad kind",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"-a","containerEdits":{}}]}"#,
            "bad device name",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{}},{"name":"a","containerEdits":{}}]}"#,
            "twice",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"hooks":[{"hookName":"preboot","path":"/x"}]}}]}"#,
            "hook name",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","type":"z"}]}}]}"#,
            "bad type",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rx"}]}}]}"#,
            "permissions",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[{"name":"a","containerEdits":{"env":["NOEQUALS"]}}]}"#,
            "KEY=VALUE",
        ),
        (
            r#"{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","devices":[]}"#,
            "no devices",
        ),
        ("not json", "bad spec"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        match parse(text.as_bytes()) {
            Err(OciError::Cdi(m)) if m.contains(want) => {}
            other => panic!("#{i}: want error containing {want:?}, got {other:?}"),
        }
    }
}

#[test]
fn unknown_or_malformed_device_names_are_errors() {
    let spec = parse(REFERENCE.as_bytes()).unwrap();
    for name in [
        "nvidia.com/gpu=7",
        "amd.com/gpu=0",
        "nvidia.com/gpu",
        "gpu=0",
    ] {
        let mut oci = base_spec();
        match apply(&mut oci, std::slice::from_ref(&spec), &[name.to_string()]) {
            Err(OciError::Cdi(_)) => {}
            other => panic!("{name}: want a CDI error, got {other:?}"),
        }
    }
}

#[test]
fn the_agents_spec_names_gpus_and_mig_devices_and_round_trips() {
    let gpus = [
        GpuNode {
            index: 0,
            uuid: "GPU-aaaa".into(),
            minor: 0,
        },
        GpuNode {
            index: 1,
            uuid: "GPU-bbbb".into(),
            minor: 1,
        },
    ];
    let migs = [MigNode {
        gpu_index: 1,
        gpu_minor: 1,
        gi: 2,
        ci: 0,
        uuid: "MIG-cccc".into(),
    }];
    let spec = nvidia_spec(&gpus, &migs, Path::new("/sim/dev"));
    assert_eq!(spec.cdi_version, "1.1.0");
    assert_eq!(
        minimum_version(&spec),
        "0.5.0",
        "host paths and numeric names"
    );
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["0", "GPU-aaaa", "1", "GPU-bbbb", "1:2", "MIG-cccc"]);
    let text = serde_json::to_vec(&spec).unwrap();
    let back = parse(&text).unwrap();
    assert_eq!(back, spec, "what the agent writes, a CDI loader reads back");
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let node = &json["devices"][0]["containerEdits"]["deviceNodes"][0];
    assert_eq!(node["path"], "/dev/nvidia0");
    assert_eq!(node["hostPath"], "/sim/dev/nvidia0");
    assert_eq!(node["type"], "c");
    assert_eq!(node["major"], 195);
    let mig_nodes = &json["devices"][5]["containerEdits"]["deviceNodes"];
    assert_eq!(
        mig_nodes.as_array().unwrap().len(),
        3,
        "parent GPU + GI and CI caps"
    );
    let t = tempfile::tempdir().unwrap();
    write(t.path(), SPEC_FILE, &spec).unwrap();
    let loaded = load(&[t.path().to_path_buf()]).unwrap();
    assert_eq!(loaded, vec![spec]);
    let mut oci = base_spec();
    apply(&mut oci, &loaded, &["nvidia.com/gpu=GPU-bbbb".into()]).unwrap();
    let devs = oci.linux().as_ref().unwrap().devices().clone().unwrap();
    let paths: Vec<_> = devs
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia1"]);
}

#[test]
fn mig_cap_minors_follow_the_driver_file_or_its_numbering() {
    let file = "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\ngpu1/gi2/access 156\ngpu1/gi2/ci0/access 157\n";
    assert_eq!(mig_cap_minors(Some(file), 1, 2, 0), (156, 157));
    // Without the driver: the same numbers from the driver's layout.
    assert_eq!(mig_cap_minors(None, 1, 2, 0), (156, 157));
    assert_eq!(mig_cap_minors(None, 0, 0, 0), (3, 4));
}

#[test]
fn a_bad_file_in_the_spec_dir_is_named() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("broken.json"), "{").unwrap();
    match load(&[t.path().to_path_buf()]) {
        Err(OciError::Cdi(m)) => assert!(m.contains("broken.json"), "{m}"),
        other => panic!("want a CDI error, got {other:?}"),
    }
}

/// A spec as ROCm's container toolkit writes it (`amd-ctk cdi generate`, version 0.6.0):
/// per GPU its DRM nodes and `/dev/kfd`, and `all`. Numbers as a node with amdgpu shows
/// them (kfd's major is dynamic).
const AMD_REFERENCE: &str = r#"{
  "cdiVersion": "0.6.0",
  "kind": "amd.com/gpu",
  "devices": [
    { "name": "0", "containerEdits": { "deviceNodes": [
        { "path": "/dev/dri/card1", "type": "c", "major": 226, "minor": 1, "fileMode": 432, "permissions": "rwm", "uid": 0, "gid": 44 },
        { "path": "/dev/dri/renderD128", "type": "c", "major": 226, "minor": 128, "fileMode": 432, "permissions": "rwm", "uid": 0, "gid": 109 },
        { "path": "/dev/kfd", "type": "c", "major": 236, "minor": 0, "fileMode": 438, "permissions": "rwm", "uid": 0, "gid": 109 } ] } },
    { "name": "all", "containerEdits": { "deviceNodes": [
        { "path": "/dev/dri/card1", "type": "c", "major": 226, "minor": 1 },
        { "path": "/dev/dri/renderD128", "type": "c", "major": 226, "minor": 128 },
        { "path": "/dev/kfd", "type": "c", "major": 236, "minor": 0 } ] } }
  ]
}"#;

#[test]
fn the_amd_toolkit_spec_parses_and_applies() {
    let spec = parse(AMD_REFERENCE.as_bytes()).unwrap();
    let mut oci = base_spec();
    apply(&mut oci, &[spec], &["amd.com/gpu=0".into()]).unwrap();
    let linux = oci.linux().as_ref().unwrap();
    let paths: Vec<String> = linux
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(paths, ["/dev/dri/card1", "/dev/dri/renderD128", "/dev/kfd"]);
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    let allowed: Vec<(Option<i64>, Option<i64>)> =
        rules.iter().map(|r| (r.major(), r.minor())).collect();
    assert_eq!(
        allowed,
        [
            (Some(226), Some(1)),
            (Some(226), Some(128)),
            (Some(236), Some(0))
        ]
    );
}

#[test]
fn the_agents_amd_spec_names_gpus_by_index_and_uuid_and_round_trips() {
    let t = tempfile::tempdir().unwrap();
    // A kfd node's major comes from /proc/devices or the node; a regular file has major 0,
    // which is what a node without amdgpu can offer (the real driver's is dynamic).
    std::fs::write(t.path().join("kfd"), "").unwrap();
    let gpus = [
        GpuNode {
            index: 0,
            uuid: "GPU-4b2c1a7c91b2aa21".into(),
            minor: 128,
        },
        GpuNode {
            index: 1,
            uuid: "GPU-00000000000000ab".into(),
            minor: 129,
        },
    ];
    let spec = amd_spec(&gpus, t.path());
    assert_eq!(spec.kind, "amd.com/gpu");
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0",
            "GPU-4b2c1a7c91b2aa21",
            "1",
            "GPU-00000000000000ab",
            "all"
        ]
    );
    let text = serde_json::to_vec(&spec).unwrap();
    assert_eq!(parse(&text).unwrap(), spec, "a CDI loader reads it back");
    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let nodes = &json["devices"][3]["containerEdits"]["deviceNodes"];
    assert_eq!(nodes[0]["path"], "/dev/dri/renderD129");
    assert_eq!(
        nodes[0]["hostPath"],
        t.path().join("dri/renderD129").display().to_string()
    );
    assert_eq!(nodes[0]["major"], 226);
    assert_eq!(nodes[0]["minor"], 129);
    assert_eq!(nodes[1]["path"], "/dev/kfd");
    assert_eq!(nodes[1]["type"], "c");
    assert_eq!(
        json["devices"][4]["containerEdits"]["deviceNodes"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "all = both render nodes + kfd"
    );
    let dir = t.path().join("cdi");
    write(&dir, AMD_SPEC_FILE, &spec).unwrap();
    let loaded = load(&[dir]).unwrap();
    let mut oci = base_spec();
    apply(
        &mut oci,
        &loaded,
        &["amd.com/gpu=GPU-00000000000000ab".into()],
    )
    .unwrap();
    let paths: Vec<String> = oci
        .linux()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap()
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    assert_eq!(paths, ["/dev/dri/renderD129", "/dev/kfd"]);
    let mut oci = base_spec();
    match apply(
        &mut oci,
        &loaded,
        &["nvidia.com/gpu=GPU-00000000000000ab".into()],
    ) {
        Err(OciError::Cdi(m)) => assert!(m.contains("unresolvable"), "{m}"),
        other => panic!("an AMD GPU requested as nvidia.com/gpu: {other:?}"),
    }
}

#[test]
fn an_amd_spec_without_a_kfd_node_fails_to_apply_naming_it() {
    if proc_devices_major("kfd").is_some() {
        println!("SKIPPED: amdgpu is loaded here, so /dev/kfd's major is known");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let gpus = [GpuNode {
        index: 0,
        uuid: "GPU-aa".into(),
        minor: 128,
    }];
    let spec = amd_spec(&gpus, t.path());
    let mut oci = base_spec();
    match apply(&mut oci, &[spec], &["amd.com/gpu=0".into()]) {
        Err(OciError::Cdi(m)) => assert!(m.contains("kfd"), "{m}"),
        other => panic!("want an error naming kfd, got {other:?}"),
    }
}
