//! Compiles `proto/berth/v1/*.proto` and the vendored kubelet device-plugin API
//! (`proto/k8s/deviceplugin/v1beta1/api.proto`, package `v1beta1`) with the protoc shipped by
//! `protoc-bin-vendored`, so a fresh machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the env.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_protos(
            &[
                "proto/berth/v1/berth.proto",
                "proto/berth/v1/accounting.proto",
                "proto/k8s/deviceplugin/v1beta1/api.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
