//! Build script: with the `rocm` feature, generates the rocm_smi_lib bindings from the
//! installed header. Without it, does nothing (the default build needs no C toolchain).

fn main() {
    #[cfg(feature = "rocm")]
    rocm::generate();
}

#[cfg(feature = "rocm")]
mod rocm {
    use std::path::PathBuf;

    /// The rocm_smi_lib calls the agent makes; nothing else is bound, which keeps the
    /// generated file small and fails the build if the installed header drops one.
    const FUNCTIONS: &[&str] = &[
        "rsmi_init",
        "rsmi_shut_down",
        "rsmi_num_monitor_devices",
        "rsmi_status_string",
        "rsmi_version_str_get",
        "rsmi_dev_name_get",
        "rsmi_dev_unique_id_get",
        "rsmi_dev_serial_number_get",
        "rsmi_dev_memory_total_get",
        "rsmi_dev_memory_usage_get",
        "rsmi_dev_pci_id_get",
        "rsmi_topo_numa_affinity_get",
        "rsmi_dev_busy_percent_get",
        "rsmi_dev_drm_render_minor_get",
        "rsmi_dev_power_ave_get",
        "rsmi_dev_temp_metric_get",
    ];

    /// Where the header is: `$ROCM_PATH/include` (AMD's packages install under /opt/rocm),
    /// then Debian's `/usr/include` (`librocm-smi-dev`).
    fn header() -> PathBuf {
        let rocm = std::env::var_os("ROCM_PATH").map(PathBuf::from);
        let roots = rocm
            .into_iter()
            .chain([PathBuf::from("/opt/rocm"), PathBuf::from("/usr")]);
        let tried: Vec<PathBuf> = roots
            .map(|r| r.join("include/rocm_smi/rocm_smi.h"))
            .collect();
        match tried.iter().find(|p| p.is_file()) {
            Some(p) => p.clone(),
            None => panic!(
                "feature rocm: rocm_smi.h not found (tried {tried:?}); install it with \
                 `apt-get install librocm-smi-dev libclang-dev`, or set ROCM_PATH"
            ),
        }
    }

    pub fn generate() {
        println!("cargo:rerun-if-env-changed=ROCM_PATH");
        let header = header();
        println!("cargo:rerun-if-changed={}", header.display());
        let mut b = bindgen::Builder::default()
            .header(header.display().to_string())
            // The library is opened at run time (`--rocm-lib`), so a missing library is an
            // error the agent reports, not a loader failure before main.
            .dynamic_library_name("RocmSmiLib")
            .dynamic_link_require_all(true)
            .layout_tests(false);
        for f in FUNCTIONS {
            b = b.allowlist_function(f);
        }
        // rsmi_dev_temp_metric_get takes the sensor as a plain uint32_t: name its enum.
        b = b.allowlist_type("rsmi_temperature_type_t");
        let bindings = match b.generate() {
            Ok(b) => b,
            Err(e) => panic!(
                "feature rocm: bindgen failed on {} ({e}); is libclang installed \
                 (`apt-get install libclang-dev`)?",
                header.display()
            ),
        };
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings
            .write_to_file(out.join("rocm_smi.rs"))
            .expect("feature rocm: cannot write the generated bindings to OUT_DIR");
    }
}
