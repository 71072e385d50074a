//! The extender's `/bind` through `berth dev`, against a stand-in for the Kubernetes API
//! server (no real cluster can run here; see README): berthd reads the pod, commits its
//! job with exact GPUs, labels and annotates the pod, posts the Binding, answers a retried
//! bind with the same job, refuses what does not fit, releases the grant when the API
//! refuses the binding (keeping that pod), ends the job when the pod succeeds, and deletes
//! the pod of a job the user cancels.
//!
//! MIG and time-sliced pods are bound the same way against a simulated `a100-mig` node and
//! a node whose GPUs are offered as replicas: the pod gets the slices (GPU + placement) or
//! the shares berth's placement chose, named in its annotations.
//!
//! The stand-in speaks the API's real paths and JSON for the calls berthd makes (kube-rs
//! on the client side), and records them.

use berth_tests::{berth, berth_dev, bin, free_port, poll};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct ApiServer {
    /// (method, path, body) of every request.
    calls: Vec<(String, String, String)>,
    /// Pod phase by uid, as LIST answers it.
    phases: BTreeMap<String, String>,
    /// Pod name → labels set by PATCH (so LIST returns only labelled pods).
    labelled: BTreeMap<String, String>,
}

/// The GPU resources of pod `name`: `mig-*` pods ask for 3g.20gb MIG slices (`mig-huge`
/// for 9 of them), `shared-*` pods for one time-slice share, the others for `gpus` GPUs.
fn gpu_limits(name: &str, gpus: u32) -> serde_json::Value {
    if name == "mig-huge" {
        serde_json::json!({"nvidia.com/mig-3g.20gb": "9"})
    } else if name.starts_with("mig-") {
        serde_json::json!({"nvidia.com/mig-3g.20gb": "2"})
    } else if name.starts_with("shared-") {
        serde_json::json!({"nvidia.com/gpu.shared": "1"})
    } else {
        serde_json::json!({"nvidia.com/gpu": gpus.to_string()})
    }
}

fn pod_json(name: &str, gpus: u32, phase: &str) -> serde_json::Value {
    // Pods named gang-* belong to pod group "gang" (minMember 2).
    let labels = if name.starts_with("gang-") {
        serde_json::json!({"scheduling.x-k8s.io/pod-group": "gang"})
    } else {
        serde_json::json!({})
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"priorityClassName": "training", "containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"},
                          "limits": gpu_limits(name, gpus)}}]},
        "status": {"phase": phase}
    })
}

fn answer(api: &Mutex<ApiServer>, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut api = api.lock().unwrap();
    api.calls
        .push((method.to_string(), path.to_string(), body.to_string()));
    let gpus = |name: &str| if name == "big" { 9 } else { 2 };
    let pods = "/api/v1/namespaces/ml/pods/";
    if let Some(rest) = path.strip_prefix(pods) {
        let rest = rest.split('?').next().unwrap();
        let name = rest.split('/').next().unwrap().to_string();
        return match (method, rest.ends_with("/binding")) {
            ("GET", false) => (200, pod_json(&name, gpus(&name), "Pending").to_string()),
            ("PATCH", false) => {
                api.labelled.insert(name.clone(), body.to_string());
                (200, pod_json(&name, gpus(&name), "Pending").to_string())
            }
            ("DELETE", false) => {
                api.labelled.remove(&name);
                (200, pod_json(&name, gpus(&name), "Running").to_string())
            }
            ("POST", true) if name == "refused" => (
                409,
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pod refused is already assigned","reason":"Conflict","code":409}"#.into(),
            ),
            ("POST", true) => (
                201,
                r#"{"kind":"Status","apiVersion":"v1","status":"Success","code":201}"#.into(),
            ),
            _ => (405, "{}".into()),
        };
    }
    if method == "GET"
        && path.split('?').next()
            == Some("/apis/scheduling.x-k8s.io/v1alpha1/namespaces/ml/podgroups/gang")
    {
        let group = serde_json::json!({"apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup", "metadata": {"name": "gang", "namespace": "ml"},
            "spec": {"minMember": 2, "scheduleTimeoutSeconds": 600}});
        return (200, group.to_string());
    }
    if method == "GET" && path.starts_with("/api/v1/pods?") {
        let items: Vec<serde_json::Value> = api
            .labelled
            .keys()
            .map(|name| {
                let uid = format!("uid-{name}");
                let phase = api.phases.get(&uid).cloned().unwrap_or("Running".into());
                pod_json(name, gpus(name), &phase)
            })
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "1"}, "items": items});
        return (200, list.to_string());
    }
    (404, r#"{"kind":"Status","code":404}"#.into())
}

fn serve(listener: TcpListener, api: Arc<Mutex<ApiServer>>) {
    for stream in listener.incoming().map_while(Result::ok) {
        let api = api.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut stream = stream;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let (status, reply) = answer(&api, &method, &path, &String::from_utf8_lossy(&body));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
    }
}

/// A POST to the extender over HTTPS, with kube-scheduler's certificate.
fn http(port: u16, path: &str, body: &str) -> String {
    let raw = berth_tests::extender_call(port, &berth_tests::http_request("POST", path, body));
    raw.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn bind(web: u16, pod: &str) -> serde_json::Value {
    let args =
        format!(r#"{{"PodName":"{pod}","PodNamespace":"ml","PodUID":"uid-{pod}","Node":"node1"}}"#);
    serde_json::from_str(&http(web, "/bind", &args)).unwrap()
}

fn squeue(grpc: u16) -> String {
    let out = Command::new(bin("berth"))
        .args(["squeue", "-h", "-t", "all", "-o", "%i %j %T %N %b"])
        .env("BERTH_SERVER", format!("127.0.0.1:{grpc}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the stand-in API server; returns it and its port.
fn api_server() -> (Arc<Mutex<ApiServer>>, u16) {
    let api = Arc::new(Mutex::new(ApiServer::default()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = listener.local_addr().unwrap().port();
    std::thread::spawn({
        let api = api.clone();
        move || serve(listener, api)
    });
    (api, api_port)
}

/// The annotations berthd patched onto pod `name`.
fn annotations(api: &Mutex<ApiServer>, name: &str) -> serde_json::Value {
    let api = api.lock().unwrap();
    let patch = api
        .labelled
        .get(name)
        .unwrap_or_else(|| panic!("pod {name} was not patched"));
    let v: serde_json::Value = serde_json::from_str(patch).unwrap();
    v["metadata"]["annotations"].clone()
}

/// `berth dev` with `machine_args`, serving the extender and binding through the stand-in.
fn dev_with_api(
    dir: &std::path::Path,
    api_port: u16,
    machine_args: &[&str],
) -> (berth_tests::Proc, u16, u16) {
    let (grpc, web) = (free_port(), free_port());
    let (http_listen, kube_api) = (
        format!("127.0.0.1:{web}"),
        format!("http://127.0.0.1:{api_port}"),
    );
    let mut args = vec![
        "--nodes",
        "1",
        "--http-listen",
        &http_listen,
        "--kube-api",
        &kube_api,
    ];
    args.extend_from_slice(machine_args);
    let (dev, _) = berth_dev(dir, grpc, &args);
    berth_tests::TestCa::of_dev(dir).extender_client(web);
    (dev, grpc, web)
}

fn filter_node1(web: u16, pod: &str) -> serde_json::Value {
    let args = format!(
        r#"{{"Pod":{},"NodeNames":["node1"]}}"#,
        pod_json(pod, 0, "Pending")
    );
    serde_json::from_str(&http(web, "/filter", &args)).unwrap()
}

#[test]
fn mig_and_shared_pods_are_bound_to_the_slices_and_shares_berth_chose() {
    let (api, api_port) = api_server();
    let tmp = tempfile::tempdir().unwrap();

    // node1: 4×A100 40GB in MIG mode. Two pods of two 3g.20gb slices each.
    let (dev, grpc, web) = dev_with_api(
        &tmp.path().join("mig"),
        api_port,
        &["--machine", "a100-mig"],
    );
    let f = filter_node1(web, "mig-a");
    assert_eq!(f["NodeNames"], serde_json::json!(["node1"]), "{f}");
    let f = filter_node1(web, "shared-x");
    assert!(
        f["FailedAndUnresolvableNodes"]["node1"]
            .as_str()
            .unwrap()
            .contains("time-sliced"),
        "{f}"
    );
    let mut held: Vec<(String, String)> = Vec::new();
    for pod in ["mig-a", "mig-b"] {
        assert_eq!(bind(web, pod), serde_json::json!({"Error": ""}), "{pod}");
        let ann = annotations(&api, pod);
        let slices = ann["berth.io/mig-slices"]
            .as_str()
            .unwrap_or_else(|| panic!("{ann}"));
        for slice in slices.split(',') {
            // GPU-UUID:3g.20gb@START:4, START a legal 3g start (0 or 4).
            let (gpu, placement) = slice
                .split_once(":3g.20gb@")
                .unwrap_or_else(|| panic!("{slice}"));
            assert!(gpu.starts_with("GPU-"), "{slice}");
            assert!(["0:4", "4:4"].contains(&placement), "{slice}");
            held.push((gpu.to_string(), placement.to_string()));
        }
        assert_eq!(ann["berth.io/gpus"], "", "{ann}");
    }
    let distinct: std::collections::BTreeSet<_> = held.iter().collect();
    assert_eq!(
        (held.len(), distinct.len()),
        (4, 4),
        "no slice granted twice: {held:?}"
    );
    // Carved cards first: the four slices fill two cards, two stay empty.
    let cards: std::collections::BTreeSet<_> = held.iter().map(|(g, _)| g).collect();
    assert_eq!(cards.len(), 2, "{held:?}");
    let node = berth(
        tmp.path(),
        &format!("127.0.0.1:{grpc}"),
        &["scontrol", "show", "node", "node1"],
    );
    let node = String::from_utf8_lossy(&node.stdout);
    assert_eq!(node.matches("3g.20gb@").count(), 4, "{node}");
    let queue = squeue(grpc);
    assert_eq!(
        queue
            .lines()
            .filter(|l| l.contains("mig-") && l.contains("RUNNING"))
            .count(),
        2,
        "{queue}"
    );
    // Nine slices never fit four cards; a shared or whole pod has no GPU of its kind here.
    let huge = bind(web, "mig-huge");
    assert!(
        huge["Error"]
            .as_str()
            .unwrap()
            .contains("3g.20gb MIG slice(s)"),
        "{huge}"
    );
    let shared = bind(web, "shared-x");
    assert!(
        shared["Error"].as_str().unwrap().contains("time-sliced"),
        "{shared}"
    );
    let whole = bind(web, "train");
    assert!(
        whole["Error"].as_str().unwrap().contains("healthy GPUs"),
        "{whole}"
    );
    assert!(!squeue(grpc).contains("mig-huge"));
    drop(dev);

    // node1: 4 A100s offered as 2 replicas each. Shared pods get one share each, never
    // more than a GPU offers; a whole-GPU pod finds no whole GPU.
    let (_dev, grpc, web) = dev_with_api(
        &tmp.path().join("ts"),
        api_port,
        &["--machine", "a100-pcie-4", "--gpu-replicas", "2"],
    );
    let mut gpus = Vec::new();
    for pod in ["shared-a", "shared-b", "shared-c"] {
        assert_eq!(bind(web, pod), serde_json::json!({"Error": ""}), "{pod}");
        let ann = annotations(&api, pod);
        assert_eq!(ann["berth.io/gpu-sharing"], "time-slicing", "{ann}");
        let gpu = ann["berth.io/gpus"].as_str().unwrap().to_string();
        assert!(gpu.starts_with("GPU-") && !gpu.contains(','), "{ann}");
        gpus.push(gpu);
    }
    let per_gpu = |g: &String| gpus.iter().filter(|x| *x == g).count();
    assert!(
        gpus.iter().all(|g| per_gpu(g) <= 2),
        "at most 2 shares a GPU: {gpus:?}"
    );
    let whole = bind(web, "train");
    assert!(
        whole["Error"].as_str().unwrap().contains("healthy GPUs"),
        "{whole}"
    );
    let f = filter_node1(web, "mig-a");
    assert!(
        f["FailedAndUnresolvableNodes"]["node1"]
            .as_str()
            .unwrap()
            .contains("no GPU in MIG mode"),
        "{f}"
    );
    let queue = squeue(grpc);
    assert_eq!(
        queue
            .lines()
            .filter(|l| l.contains("shared-") && l.contains("RUNNING"))
            .count(),
        3,
        "{queue}"
    );
}

#[test]
fn bind_commits_the_pod_job_then_binds_and_ends_it_with_the_pod() {
    let (api, api_port) = api_server();
    let tmp = tempfile::tempdir().unwrap();
    let (grpc, web) = (free_port(), free_port());
    let (http_listen, kube_api) = (
        format!("127.0.0.1:{web}"),
        format!("http://127.0.0.1:{api_port}"),
    );
    let args = [
        "--nodes",
        "1",
        "--machine",
        "dgx-h100",
        "--http-listen",
        &http_listen,
        "--kube-api",
        &kube_api,
    ];
    let (_dev, _) = berth_dev(&tmp.path().join("state"), grpc, &args);
    berth_tests::TestCa::of_dev(&tmp.path().join("state")).extender_client(web);

    assert_eq!(bind(web, "train"), serde_json::json!({"Error": ""}));
    let queue = squeue(grpc);
    let line = queue
        .lines()
        .find(|l| l.contains("train"))
        .unwrap_or_else(|| panic!("{queue}"));
    assert!(line.contains("RUNNING") && line.contains("node1"), "{line}");
    let job_id = line.split_whitespace().next().unwrap().to_string();
    {
        let api = api.lock().unwrap();
        let patch = &api.labelled["train"];
        let v: serde_json::Value = serde_json::from_str(patch).unwrap();
        let gpus = v["metadata"]["annotations"]["berth.io/gpus"]
            .as_str()
            .unwrap();
        assert_eq!(gpus.split(',').count(), 2, "{patch}");
        assert!(gpus.split(',').all(|u| u.starts_with("GPU-")), "{patch}");
        assert_eq!(v["metadata"]["labels"]["berth.io/job-id"], job_id.as_str());
        let binding = api
            .calls
            .iter()
            .find(|(m, p, _)| {
                m == "POST"
                    && p.split('?')
                        .next()
                        .unwrap()
                        .ends_with("/pods/train/binding")
            })
            .expect("a Binding was posted");
        let b: serde_json::Value = serde_json::from_str(&binding.2).unwrap();
        assert_eq!(b["target"]["kind"], "Node");
        assert_eq!(b["target"]["name"], "node1");
        assert_eq!(b["metadata"]["name"], "train");
    }
    // kube-scheduler retries a bind that timed out: the same job answers, no second one.
    assert_eq!(bind(web, "train"), serde_json::json!({"Error": ""}));
    assert_eq!(
        squeue(grpc).lines().filter(|l| l.contains("train")).count(),
        1
    );

    // 9 GPUs do not fit an 8-GPU node; nothing is committed or bound.
    let big = bind(web, "big");
    assert!(
        big["Error"]
            .as_str()
            .unwrap()
            .contains("healthy GPUs, pod needs 9"),
        "{big}"
    );
    assert!(!squeue(grpc).contains("big"));
    // The API refuses the binding: the grant is released (the job ends CANCELLED).
    let refused = bind(web, "refused");
    assert!(
        refused["Error"]
            .as_str()
            .unwrap()
            .contains("already assigned"),
        "{refused}"
    );
    let queue = squeue(grpc);
    let line = queue
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap_or_else(|| panic!("{queue}"));
    assert!(line.contains("CANCELLED"), "{line}");
    // Bad payloads.
    let bad: serde_json::Value =
        serde_json::from_str(&http(web, "/bind", "{\"PodName\":1}")).unwrap();
    assert!(bad["Error"]
        .as_str()
        .unwrap()
        .contains("invalid extender request"));

    // A pod group of two 2-GPU pods: the first bind reserves the second member's GPUs
    // (node1 has 8 - 2 = 6 free, so both fit), the second bind claims them.
    assert_eq!(bind(web, "gang-0"), serde_json::json!({"Error": ""}));
    let queue = squeue(grpc);
    let reserved = queue.lines().find(|l| l.contains("podgroup:ml/gang"));
    assert!(reserved.is_some_and(|l| l.contains("RUNNING")), "{queue}");
    assert_eq!(bind(web, "gang-1"), serde_json::json!({"Error": ""}));
    let queue = squeue(grpc);
    assert!(
        queue
            .lines()
            .any(|l| l.contains("podgroup:ml/gang") && l.contains("COMPLETED")),
        "{queue}"
    );
    assert_eq!(
        queue
            .lines()
            .filter(|l| l.contains("gang-") && l.contains("RUNNING"))
            .count(),
        2,
        "{queue}"
    );

    // The pod succeeds: the leader's pod watch ends its job and frees its GPUs.
    api.lock()
        .unwrap()
        .phases
        .insert("uid-train".into(), "Succeeded".into());
    poll("the pod's job completed", 30, || {
        let queue = squeue(grpc);
        queue
            .lines()
            .any(|l| l.contains("train") && l.contains("COMPLETED"))
            .then_some(())
    });

    // scancel of a running pod's job: the pod watch deletes that pod (only if it still has
    // the uid berth bound), and leaves alone the pod whose binding was refused.
    let queue = squeue(grpc);
    let member = queue
        .lines()
        .find(|l| l.contains("gang-1") && l.contains("RUNNING"))
        .unwrap_or_else(|| panic!("{queue}"));
    let member_id = member.split_whitespace().next().unwrap();
    let out = berth(
        tmp.path(),
        &format!("127.0.0.1:{grpc}"),
        &["scancel", member_id],
    );
    assert!(out.status.success(), "{out:?}");
    let delete = poll("the cancelled job's pod deleted", 30, || {
        let api = api.lock().unwrap();
        api.calls
            .iter()
            .find(|(m, p, _)| m == "DELETE" && p.contains("/pods/gang-1"))
            .cloned()
    });
    let body: serde_json::Value = serde_json::from_str(&delete.2).unwrap();
    assert_eq!(body["preconditions"]["uid"], "uid-gang-1", "{body}");
    let api = api.lock().unwrap();
    let deleted: Vec<&str> = api
        .calls
        .iter()
        .filter(|(m, _, _)| m == "DELETE")
        .map(|(_, p, _)| p.as_str())
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
}
