//! pyxis's container options: `--container-image`, `--container-mounts`,
//! `--container-workdir`, `--container-env`.

use crate::opt::export::valid_var_name;
use crate::opt::OptError;

/// `--container-image`: a local path (made absolute later). Registry references
/// (`nvcr.io#nvidia/pytorch:24.01`, `docker://…`) would need a puller berth does not have.
///
/// # Errors
/// Empty, or a registry reference.
pub fn parse_container_image(value: &str) -> Result<String, OptError> {
    let invalid = |reason: &str| OptError::invalid("--container-image", value, reason);
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.contains('#') || value.contains("://") {
        return Err(invalid(
            "registry images are not supported: give the path of an OCI image layout \
             (e.g. from `skopeo copy docker://IMAGE oci:DIR`), an OCI archive or a rootfs \
             directory",
        ));
    }
    Ok(value.to_string())
}

/// `--container-mounts=SRC:DST[:FLAGS][,…]`, each entry checked by the agent's own parser
/// (the node checks again, against its deny list).
///
/// # Errors
/// The first entry the agent's parser refuses.
pub fn parse_container_mounts(value: &str) -> Result<Vec<String>, OptError> {
    let entries: Vec<String> = value.split(',').map(str::to_string).collect();
    for e in &entries {
        berth_agent::oci::mounts::parse(e)
            .map_err(|err| OptError::invalid("--container-mounts", value, err.to_string()))?;
    }
    Ok(entries)
}

/// `--container-workdir`: an absolute path inside the container.
///
/// # Errors
/// A relative path.
pub fn parse_container_workdir(value: &str) -> Result<String, OptError> {
    if !value.starts_with('/') {
        return Err(OptError::invalid(
            "--container-workdir",
            value,
            "must be an absolute path inside the container",
        ));
    }
    Ok(value.to_string())
}

/// `--container-env=NAME[,NAME...]`.
///
/// # Errors
/// A word that is not a variable name.
pub fn parse_container_env(value: &str) -> Result<Vec<String>, OptError> {
    let names: Vec<String> = value.split(',').map(str::to_string).collect();
    if let Some(bad) = names.iter().find(|n| !valid_var_name(n)) {
        return Err(OptError::invalid(
            "--container-env",
            value,
            format!("{bad:?} is not a variable name"),
        ));
    }
    Ok(names)
}
