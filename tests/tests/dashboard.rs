//! The Grafana dashboard in deploy/grafana/ asks only for metrics berth exports: every
//! query's metric names are resolved against what a live `berth dev` berthd and its agent
//! serve on `/metrics` after a GPU job ran (so the per-account series exist).

use berth_tests::{berth_dev, free_port, poll, sbatch};
use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};

/// berthd's `/metrics` body over HTTPS on loopback `port`, with the certificate in `dir`.
fn berthd_metrics(dir: &std::path::Path, port: u16) -> String {
    let raw = berth_tests::https(port, dir, &berth_tests::http_request("GET", "/metrics", ""))
        .expect("https /metrics");
    match raw.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => raw,
    }
}

fn http_get(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => response,
    }
}

/// Metric names in a Prometheus text exposition (sample lines only).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The metric names a PromQL expression reads: identifiers starting with berth's or
/// DCGM's prefix (label names and functions never do), outside quoted strings.
fn queried(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("berth_") || word.starts_with("DCGM_") {
            out.push(word.clone());
        }
        word.clear();
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|x| exprs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("deploy/grafana/berth.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 10, "queries: {all:?}");
    let scrape = std::fs::read_to_string(root.join("deploy/grafana/prometheus.yml")).unwrap();
    assert!(scrape.contains("job_name: berthd") && scrape.contains("job_name: berth-agent"));

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (port, web) = (free_port(), free_port());
    let web_arg = format!("127.0.0.1:{web}");
    let (_dev, printed) = berth_dev(
        &dir.join("state"),
        port,
        &[
            "--machine",
            "dgx-h100",
            "--nodes",
            "1",
            "--http-listen",
            &web_arg,
        ],
    );
    let agent_url = printed
        .iter()
        .find_map(|l| l.strip_prefix("berth dev: agent metrics node1 "))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("agent metrics URL in {printed:?}"));
    // berth dev serves /metrics over TLS from its own CA: scrape it as Prometheus would,
    // with a client certificate from that CA.
    let svc = berth_tests::TestCa::of_dev(&dir.join("state"))
        .issue(&["--service", "prometheus"], "prometheus");
    let server = format!("http://127.0.0.1:{port}");
    // One job ends (the per-account counters and the queue wait get series) while
    // another still runs (the GPUs-held gauge has one only then).
    sbatch(dir, &server, &["--gres=gpu:1", "--wrap", "sleep 1"]);
    sbatch(dir, &server, &["--gres=gpu:1", "--wrap", "sleep 300"]);
    let want = [
        "berth_account_gpu_seconds_total",
        "berth_account_gpus_allocated",
    ];
    let names = poll("an ended and a running job in the metrics", 60, || {
        let mut names = exported(&berthd_metrics(&svc, web));
        names.extend(exported(&http_get(&agent_url)));
        want.iter().all(|w| names.contains(*w)).then_some(names)
    });
    for e in &all {
        let used = queried(e);
        assert!(!used.is_empty(), "a query that names no berth metric: {e}");
        for m in used {
            assert!(
                names.contains(&m),
                "{m} (in {e}) is not exported; exported: {names:?}"
            );
        }
    }
    // The resolver itself: label values and functions are not metric names.
    assert_eq!(
        queried(r#"sum by (gpu_type) (rate(berth_x_total{resource="berth_y"}[5m]))"#),
        vec!["berth_x_total"]
    );
}
