//! The Kubernetes manifests in `deploy/kubernetes/` stay true to the code: they parse as the
//! Kubernetes types they claim to be, the extender stanza uses only the fields
//! kube-scheduler knows and passes its validation rules, it points at berthd's HTTP port,
//! and every flag the manifests pass to berthd and berth-agent is one the binaries accept.

use berth_tests::bin;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name)
}

fn docs(name: &str) -> Vec<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(manifest(name)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(name: &str, kind: &str) -> T {
    let doc = docs(name)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("{name} has no {kind}"));
    serde_yaml_ng::from_value(doc).unwrap_or_else(|e| panic!("{name} {kind}: {e}"))
}

/// Long flags (`--name`) in an argument list, including inside a shell command line.
fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split_whitespace())
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap().to_string())
        .collect()
}

fn accepts(binary: &str, flag: &str) -> bool {
    let help = Command::new(bin(binary)).arg("--help").output().unwrap();
    String::from_utf8_lossy(&help.stdout).contains(&format!("--{flag}"))
}

#[test]
fn extender_stanza_follows_kube_scheduler_rules() {
    let cfg = &docs("scheduler-config.yaml")[0];
    assert_eq!(
        cfg["apiVersion"].as_str(),
        Some("kubescheduler.config.k8s.io/v1")
    );
    let extenders = cfg["extenders"].as_sequence().unwrap();
    assert_eq!(extenders.len(), 1);
    let e = extenders[0].as_mapping().unwrap();
    // kubescheduler.config.k8s.io/v1 Extender's json names (interfaces.md 1.4).
    let known = [
        "urlPrefix",
        "filterVerb",
        "preemptVerb",
        "prioritizeVerb",
        "bindVerb",
        "weight",
        "enableHTTPS",
        "tlsConfig",
        "httpTimeout",
        "nodeCacheCapable",
        "managedResources",
        "ignorable",
    ];
    for key in e.keys() {
        let key = key.as_str().unwrap();
        assert!(known.contains(&key), "unknown extender field {key}");
    }
    let get = |k: &str| e.get(k).cloned().unwrap_or(serde_yaml_ng::Value::Null);
    assert!(
        get("weight").as_i64().unwrap() > 0,
        "prioritizeVerb needs a positive weight"
    );
    // The verbs berthd serves.
    assert_eq!(get("filterVerb").as_str(), Some("filter"));
    assert_eq!(get("prioritizeVerb").as_str(), Some("prioritize"));
    assert_eq!(get("bindVerb").as_str(), Some("bind"));
    assert_eq!(get("preemptVerb").as_str(), Some("preempt"));
    assert_eq!(
        get("managedResources")[0]["name"].as_str(),
        Some("nvidia.com/gpu")
    );
    // Every managed resource is one berth places (whole, shared, or a MIG profile name
    // `<n>g.<m>gb[+me]`), and kube-scheduler leaves its capacity to berth.
    let managed = get("managedResources");
    let names: Vec<&str> = managed
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["ignoredByScheduler"].as_bool(), Some(true), "{r:?}");
            r["name"].as_str().unwrap()
        })
        .collect();
    let mig_profile = |p: &str| {
        let base = p.strip_suffix("+me").unwrap_or(p);
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        base.split_once("g.")
            .and_then(|(g, m)| Some((g, m.strip_suffix("gb")?)))
            .is_some_and(|(g, m)| digits(g) && digits(m))
    };
    for name in &names {
        let ok = *name == "nvidia.com/gpu"
            || *name == "nvidia.com/gpu.shared"
            || name
                .strip_prefix("nvidia.com/mig-")
                .is_some_and(mig_profile);
        assert!(ok, "berth does not place managed resource {name}");
    }
    assert!(names.contains(&"nvidia.com/gpu.shared") && names.contains(&"nvidia.com/mig-1g.10gb"));
    let url = get("urlPrefix").as_str().unwrap().to_string();
    let services: Vec<Service> = docs("berthd.yaml")
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some("Service"))
        .map(|d| serde_yaml_ng::from_value(d).unwrap())
        .collect();
    let http = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("berthd"))
        .and_then(|s| {
            s.spec
                .as_ref()?
                .ports
                .as_ref()?
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .map(|p| p.port)
        })
        .expect("berthd Service has an http port");
    assert!(
        url.ends_with(&format!("berthd.berth-system.svc:{http}")),
        "{url}"
    );
}

#[test]
fn manifests_pass_only_flags_the_binaries_accept() {
    let sts: StatefulSet = of_kind("berthd.yaml", "StatefulSet");
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    for flag in flags(&args) {
        assert!(accepts("berthd", &flag), "berthd does not accept --{flag}");
    }
    let ds: DaemonSet = of_kind("berth-agent.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    for flag in flags(&args) {
        assert!(
            accepts("berth-agent", &flag),
            "berth-agent does not accept --{flag}"
        );
    }
}

/// A systemd unit's `ExecStart=` command line, continuation lines joined, as words.
fn exec_start(unit: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit}: no ExecStart="));
    line.split_whitespace().map(str::to_string).collect()
}

/// The variables an environment file sets.
fn env_file(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect()
}

#[test]
fn systemd_units_pass_only_flags_the_binaries_accept_and_set_every_variable() {
    for (unit, binary, sub, defaults) in [
        ("berthd.service", "berthd", None, Some("berthd.default")),
        (
            "berth-agent.service",
            "berth-agent",
            None,
            Some("berth-agent.default"),
        ),
        ("berth-credd.service", "berth", Some("credd"), None),
    ] {
        let words = exec_start(unit);
        let exe = words[0].rsplit('/').next().unwrap();
        assert_eq!(exe, binary, "{unit} runs {}", words[0]);
        let help = Command::new(bin(binary))
            .args(sub.iter().copied())
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for flag in flags(&words) {
            assert!(
                help.contains(&format!("--{flag}")),
                "{unit}: {binary} does not accept --{flag}"
            );
        }
        // Every ${VAR} and $VAR of the command line is set by the unit's environment file.
        let set = defaults.map(env_file).unwrap_or_default();
        for w in &words {
            if let Some(var) = w.strip_prefix('$') {
                let var = var.trim_start_matches('{').trim_end_matches('}');
                assert!(
                    set.iter().any(|s| s == var),
                    "{unit}: ${var} is not in {defaults:?}"
                );
            }
        }
    }
}
