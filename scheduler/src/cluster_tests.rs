//! The cluster description parser: the shipped example with three node groups and
//! overlapping partitions, every key's value, and a table of bad descriptions, each refused
//! with its line and reason.

use super::*;

const EXAMPLE: &str = include_str!("../../deploy/cluster/example.toml");

#[test]
fn the_example_parses_with_overlapping_partitions() {
    let d = ClusterDescription::parse(EXAMPLE).expect("example parses");
    assert_eq!(d.name, "example");
    assert_eq!(d.nodes.len(), 8);
    let h = &d.nodes["h100-01"];
    let got = (
        h.cpus,
        h.sockets,
        h.cores_per_socket,
        h.threads_per_core,
        h.memory_mb,
    );
    assert_eq!(got, (224, 2, 56, 2, 2000 * 1024));
    assert_eq!((h.gpus, h.gpu_type.as_str(), h.weight), (8, "h100", 10));
    assert_eq!(h.features, ["h100", "ib", "nvlink"]);
    // A node is in every partition that names it.
    assert_eq!(h.partitions, ["gpu", "h100", "all"]);
    assert_eq!(d.nodes["cpu-03"].partitions, ["cpu", "all"]);
    assert_eq!(d.nodes["cpu-03"].weight, 1, "Slurm's default weight");
    assert_eq!(d.default_partition(), Some("gpu"));
    let gpu = d.partition("gpu").expect("gpu");
    let got = (
        gpu.max_time_secs,
        gpu.default_time_secs,
        gpu.max_nodes,
        gpu.priority_tier,
    );
    assert_eq!(got, (Some(2 * 86_400), Some(3600), Some(4), 1));
    let h100 = d.partition("h100").expect("h100");
    assert_eq!(h100.nodes, ["h100-01", "h100-02"], "selected by feature");
    assert_eq!(
        h100.allow_qos.as_deref(),
        Some(&["training".to_string(), "production-inference".to_string()][..])
    );
    assert_eq!(d.partition("cpu").map(|p| p.max_time_secs), Some(None));
    assert_eq!(d.partition("all").map(|p| p.nodes.len()), Some(8));
    assert_eq!(
        d.partition("all").and_then(|p| p.packing),
        Some(Packing::Spread)
    );
    assert_eq!(
        d.licenses,
        [("comsol".into(), 2), ("matlab".into(), 5)].into()
    );
}

#[test]
fn values_in_every_form() {
    let node = |extra: &str| format!("[[nodes]]\nnames = \"n1\"\n{extra}\n");
    // (description, (cpus, memory MiB))
    let cases: Vec<(String, (u32, u64))> = vec![
        (node("cpus = 8\nmemory = 1000"), (8, 1000)),
        (node("cpus = 8\nmemory = \"16G\""), (8, 16384)),
        (node("cpus = 8\nmemory = \"16GB\""), (8, 16384)),
        (node("cpus = 8\nmemory = \"16gb\""), (8, 16384)),
        (node("cpus = 8\nmemory = \"1T\""), (8, 1 << 20)),
        (
            node("sockets = 2\ncores_per_socket = 4\nmemory = 1"),
            (8, 1),
        ),
        (
            node("sockets = 2\ncores_per_socket = 4\nthreads_per_core = 2\ncpus = 8\nmemory = 1"),
            (8, 1),
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let d = ClusterDescription::parse(text).unwrap_or_else(|e| panic!("#{i}: {e}"));
        let n = &d.nodes["n1"];
        assert_eq!((n.cpus, n.memory_mb), *want, "#{i}");
    }
    let times: &[(&str, Option<u64>)] = &[
        ("60", Some(3600)),
        ("\"30\"", Some(1800)),
        ("\"1:30\"", Some(90)),
        ("\"2:00:00\"", Some(7200)),
        ("\"1-12\"", Some(86_400 + 12 * 3600)),
        ("\"1-0:30\"", Some(86_400 + 1800)),
        ("\"UNLIMITED\"", None),
        ("\"infinite\"", None),
    ];
    for (i, (t, want)) in times.iter().enumerate() {
        let text = format!(
            "{}[[partition]]\nname = \"p\"\nnodes = \"n1\"\nmax_time = {t}\n",
            node("cpus = 1\nmemory = 1")
        );
        let d = ClusterDescription::parse(&text).unwrap_or_else(|e| panic!("#{i}: {e}"));
        assert_eq!(d.partitions[0].max_time_secs, *want, "#{i} {t}");
    }
}

#[test]
fn bad_descriptions_name_the_line_and_reason() {
    let group = "[[nodes]]\nnames = \"n[1-4]\"\ncpus = 8\nmemory = 1000\nfeatures = [\"a\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{group}[[nodes]]\nnames = \"n[3-5]\"\ncpus = 16\nmemory = 1000\n"),
            "line 6: node n3 is in node groups 'n[1-4]' (line 1) and 'n[3-5]' with different shapes",
        ),
        (
            format!("{group}[[partition]]\nname = \"p\"\nfeatures = [\"b\"]\n"),
            "line 6: partition p: unknown feature \"b\" (no node group has it)",
        ),
        (
            format!("{group}[[partition]]\nname = \"p\"\nnodes = \"n[4-6]\"\n"),
            "line 6: partition p: node n5 is in no node group",
        ),
        (
            format!("{group}[[partition]]\nname = \"p\"\nnodes = \"n1\"\n[[partition]]\nname = \"p\"\nnodes = \"n2\"\n"),
            "line 9: partition p is defined twice",
        ),
        (
            format!("{group}[[partition]]\nname = \"p\"\nnodes = \"n1\"\ndefault = true\n[[partition]]\nname = \"q\"\nnodes = \"n2\"\ndefault = true\n"),
            "line 10: partition q is a second default partition",
        ),
        ("[[nodes]]\nnames = \"n[3-1]\"\ncpus = 1\nmemory = 1\n".into(), "line 1: host list \"n[3-1]\": range \"3-1\" goes backwards"),
        ("[[nodes]]\nnames = \"n[1-2\"\ncpus = 1\nmemory = 1\n".into(), "unbalanced brackets"),
        ("[[nodes]]\nnames = \"n 1\"\ncpus = 1\nmemory = 1\n".into(), "node name \"n 1\""),
        ("[[nodes]]\nnames = \"n1\"\nmemory = 1\n".into(), "give cpus, or sockets"),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 1\n".into(), "memory is required"),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 1\nmemory = \"lots\"\n".into(), "memory \"lots\""),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 1\nmemory = 1\ngpus = 2\n".into(), "gpus needs gpu_type"),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 9\nsockets = 2\ncores_per_socket = 2\nmemory = 1\n".into(), "cpus = 9 is more than sockets x cores x threads = 4"),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 1\nmemory = 1\nfeatures = [\"a b\"]\n".into(), "feature \"a b\""),
        ("[[nodes]]\nnames = \"n1\"\ncpus = 1\nmemory = 1\ncolour = \"red\"\n".into(), "unknown field `colour`"),
        (format!("{group}[[partition]]\nname = \"p\"\nnodes = \"n1\"\nmax_time = \"soon\"\n"), "line 6: max_time: \"soon\": not a time"),
        (format!("{group}[[partition]]\nname = \"p\"\nnodes = \"n1\"\npacking = \"tight\"\n"), "line 6: packing:"),
        (format!("{group}[[partition]]\nname = \"p,q\"\nnodes = \"n1\"\n"), "partition name \"p,q\""),
        (format!("{group}[[partition]]\nname = \"p\"\n"), "partition p has no nodes"),
        (format!("{group}[licenses]\n\"mat lab\" = 2\n"), "license name \"mat lab\""),
        ("this is not toml".into(), "line 1:"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        match ClusterDescription::parse(text) {
            Err(e) if e.to_string().contains(want) => {}
            got => panic!("#{i}: want an error with {want:?}, got {got:?}"),
        }
    }
    // Overlapping groups of the same shape are one group.
    let same = format!(
        "{group}[[nodes]]\nnames = \"n[3-5]\"\ncpus = 8\nmemory = 1000\nfeatures = [\"a\"]\n"
    );
    let d = ClusterDescription::parse(&same).expect("same shapes overlap");
    assert_eq!(d.nodes.len(), 5);
    assert_eq!(d.nodes["n4"].group, "n[1-4]", "the first group names it");
}
