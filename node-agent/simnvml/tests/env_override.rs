//! `$BERTH_SIM_MACHINE` overrides the `machine.json` beside the library. Alone in its own
//! test binary (so its own process) because it sets a process-wide variable that every
//! library copy reads.

mod common;

use common::Node;

#[test]
fn env_variable_overrides_the_description_beside_the_library() {
    let node = Node::builtin("dgx-h100", "beside");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let override_path = elsewhere.path().join("other.json");
    let mut other = berth_simnvml::builtin("a100-pcie-4").expect("shipped");
    other.uuid_seed = Some("from-env".into());
    std::fs::write(&override_path, other.to_json()).expect("write");

    // The only thread of this binary that touches the environment, before any init.
    std::env::set_var(berth_simnvml::MACHINE_ENV, &override_path);
    let nvml = node.init();
    assert_eq!(
        nvml.device_count().expect("count"),
        4,
        "the a100 file, not the dgx"
    );
    let uuid = nvml
        .device_by_index(0)
        .and_then(|d| d.uuid())
        .expect("uuid");
    assert_eq!(Some(uuid), other.gpu_uuid(0));
    nvml.shutdown().expect("shutdown");

    std::env::set_var(
        berth_simnvml::MACHINE_ENV,
        elsewhere.path().join("missing.json"),
    );
    assert!(
        node.try_init().is_err(),
        "a missing override is an error, not a fallback"
    );
}
