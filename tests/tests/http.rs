//! berthd's HTTP endpoint through `berth dev`: the kube-scheduler extender's filter and
//! prioritize verbs answered from the simulated nodes' real GPU state, bad payloads
//! refused, and `/metrics` in Prometheus text format.

use berth_tests::{berth_dev, bin, free_port, poll};
use std::path::Path;
use std::process::Command;

/// One HTTPS request as kube-scheduler makes it (with the service certificate in `cert`);
/// returns (status, body).
fn http(cert: &Path, port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let raw = berth_tests::https(port, cert, &berth_tests::http_request(method, path, body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

fn pod(gpus: u32) -> String {
    format!(
        r#"{{"metadata":{{"name":"train","namespace":"ml","uid":"u1"}},"spec":{{"containers":[{{"name":"c","resources":{{"limits":{{"nvidia.com/gpu":"{gpus}"}}}}}}]}}}}"#
    )
}

#[test]
fn extender_filter_prioritize_and_metrics_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let (grpc, web) = (free_port(), free_port());
    let http_listen = format!("127.0.0.1:{web}");
    let (_dev, printed) = berth_dev(
        &tmp.path().join("state"),
        grpc,
        &[
            "--nodes",
            "2",
            "--machine",
            "dgx-h100",
            "--http-listen",
            &http_listen,
        ],
    );
    let banner = printed.join("\n");
    assert!(
        banner.contains(&format!("https://127.0.0.1:{web}/metrics")),
        "{banner}"
    );
    // kube-scheduler's certificate, from berth dev's CA.
    let svc = berth_tests::TestCa::of_dev(&tmp.path().join("state"))
        .issue(&["--service", "kube-scheduler"], "kube-scheduler");

    // 8 GPUs free on each node: both fit 4; a node berth does not know is unresolvable.
    let args = format!(
        r#"{{"Pod":{},"Nodes":null,"NodeNames":["node1","node2","cpu-only"]}}"#,
        pod(4)
    );
    let (status, body) = http(&svc, web, "POST", "/filter", &args);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["NodeNames"],
        serde_json::json!(["node1", "node2"]),
        "{body}"
    );
    assert!(v["FailedAndUnresolvableNodes"]["cpu-only"]
        .as_str()
        .unwrap()
        .contains("not managed by berth"));
    assert_eq!(v["Error"], "");

    // Fill 6 GPUs of one node with a job; a 2-GPU pod then fits it exactly (score 10).
    let out = Command::new(bin("berth"))
        .args(["sbatch", "--parsable", "--gpus=6", "--wrap", "sleep 60"])
        .current_dir(tmp.path())
        .env("BERTH_SERVER", format!("127.0.0.1:{grpc}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let busy = poll("the 6-GPU job runs", 30, || {
        let (_, body) = http(&svc, web, "GET", "/metrics", "");
        body.contains("berth_gpus{state=\"allocated\"} 6")
            .then_some(body)
    });
    assert!(busy.contains("berth_jobs{state=\"running\"} 1"), "{busy}");
    assert!(busy.contains("berth_raft{field=\"leader\"} 1"), "{busy}");
    let args = format!(r#"{{"Pod":{},"NodeNames":["node1","node2"]}}"#, pod(2));
    let (status, body) = http(&svc, web, "POST", "/prioritize", &args);
    assert_eq!(status, 200, "{body}");
    let scores: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let score = |host: &str| {
        scores
            .iter()
            .find(|h| h["Host"] == host)
            .and_then(|h| h["Score"].as_i64())
            .unwrap()
    };
    // The busy node (2 free of 8) scores 10, the idle one 10 - 10*6/8 = 3.
    let (full, empty) = if score("node1") == 10 {
        ("node1", "node2")
    } else {
        ("node2", "node1")
    };
    assert_eq!((score(full), score(empty)), (10, 3), "{body} (job {id})");
    // 3 GPUs: only the idle node fits; the busy one could after preemption.
    let (_, body) = http(
        &svc,
        web,
        "POST",
        "/filter",
        &format!(r#"{{"Pod":{},"NodeNames":["node1","node2"]}}"#, pod(3)),
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["NodeNames"], serde_json::json!([empty]), "{body}");
    assert!(v["FailedNodes"][full]
        .as_str()
        .unwrap()
        .contains("2 free, pod needs 3"));

    // Preemption: evicting some pod on the busy node frees none of the batch job's GPUs,
    // so berth vetoes that node; the idle node is agreed.
    let victims = r#"{"Pods":[{"UID":"some-pod"}],"NumPDBViolations":0}"#;
    let args = format!(
        r#"{{"Pod":{},"NodeNameToMetaVictims":{{"{full}":{victims},"{empty}":{victims}}}}}"#,
        pod(3)
    );
    let (status, body) = http(&svc, web, "POST", "/preempt", &args);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kept: Vec<&String> = v["NodeNameToMetaVictims"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(kept, vec![empty], "{body}");

    // Bad payloads: a clear error, never a crash, nothing changed.
    let (status, body) = http(&svc, web, "POST", "/filter", "{not json");
    assert_eq!(status, 200);
    assert!(body.contains("invalid extender request"), "{body}");
    let (status, body) = http(
        &svc,
        web,
        "POST",
        "/prioritize",
        r#"{"NodeNames":["node1"]}"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (400, "extender request has no Pod")
    );
    let (status, body) = http(
        &svc,
        web,
        "POST",
        "/bind",
        r#"{"PodName":"p","PodNamespace":"ml","PodUID":"u","Node":"node1"}"#,
    );
    assert_eq!(status, 200);
    assert!(body.contains("no Kubernetes API configured"), "{body}");
    let big = "x".repeat(17 << 20);
    let (status, _) = http(&svc, web, "POST", "/filter", &big);
    assert_eq!(status, 413);
    let (_, after) = http(&svc, web, "GET", "/metrics", "");
    assert!(
        after.contains("berth_gpus{state=\"allocated\"} 6"),
        "{after}"
    );
    assert!(
        after.contains("berth_extender_requests_total{outcome=\"error\",verb=\"filter\"} 1"),
        "{after}"
    );
}
