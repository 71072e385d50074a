//! Environment variables a job may not bring in through `--export`: those that would
//! load code into what the agent starts for the job (`LD_PRELOAD`, `LD_AUDIT`) and the
//! MPS settings the agent sets to enforce a share's limits (`CUDA_MPS_*`). berthd refuses
//! a submit naming one, the CLI leaves them out of an inherited environment (with a
//! warning), and the agent drops any that still arrive. The GPU selection variables
//! (`CUDA_VISIBLE_DEVICES`…) need no entry: the agent always sets them last.

/// Why `name` may not be exported, or `None` when it may.
pub fn denied(name: &str) -> Option<&'static str> {
    match name {
        "LD_PRELOAD" | "LD_AUDIT" => Some("it would load code into the processes the agent starts"),
        n if n.starts_with("CUDA_MPS_") => {
            Some("the agent sets the MPS settings that enforce a GPU share's limits")
        }
        _ => None,
    }
}

/// The first denied variable of `env`, with why.
pub fn first_denied<'a>(
    env: impl IntoIterator<Item = &'a String>,
) -> Option<(&'a str, &'static str)> {
    env.into_iter()
        .find_map(|k| denied(k).map(|why| (k.as_str(), why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_and_mps_settings_are_denied_others_are_not() {
        for n in [
            "LD_PRELOAD",
            "LD_AUDIT",
            "CUDA_MPS_PIPE_DIRECTORY",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
        ] {
            assert!(denied(n).is_some(), "{n}");
        }
        for n in [
            "LD_LIBRARY_PATH",
            "PATH",
            "CUDA_HOME",
            "CUDA_VISIBLE_DEVICES",
            "HOME",
        ] {
            assert!(denied(n).is_none(), "{n}");
        }
    }
}
