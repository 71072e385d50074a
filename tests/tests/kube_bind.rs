//! The extender's `/bind` through `berth dev`, against a stand-in for the Kubernetes API
//! server (no real cluster can run here; see README): berthd reads the pod, commits its
//! job with exact GPUs, labels and annotates the pod, posts the Binding, answers a retried
//! bind with the same job, refuses what does not fit, releases the grant when the API
//! refuses the binding (keeping that pod), ends the job when the pod succeeds, and deletes
//! the pod of a job the user cancels.
//!
//! The stand-in speaks the API's real paths and JSON for the calls berthd makes (kube-rs
//! on the client side), and records them.

use berth_tests::{berth, berth_dev, bin, free_port, poll};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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
                          "limits": {"nvidia.com/gpu": gpus.to_string()}}}]},
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

fn http(port: u16, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
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

#[test]
fn bind_commits_the_pod_job_then_binds_and_ends_it_with_the_pod() {
    let api = Arc::new(Mutex::new(ApiServer::default()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api_port = listener.local_addr().unwrap().port();
    std::thread::spawn({
        let api = api.clone();
        move || serve(listener, api)
    });
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
