//! `scontrol update NodeName=… State=…`: draining nodes and resuming them, in Slurm's
//! words (update_node.c in 22.05), and resuming one GPU of a node (`Gpu=`, berth's own).
//!
//! berthd serves the change (`DrainNode`, operator role) and records who drained the node
//! from the proven identity; the CLI only checks what Slurm's client checks before it sends
//! anything: the words, the state, and that a drain has a reason.

use berth_policies::topology::hostlist;

/// `scontrol update NodeName=N Gpu=G State=RESUME`: the node and the GPU (UUID or index)
/// to mark healthy again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuResume {
    /// Node name.
    pub node: String,
    /// GPU UUID or NVML index on that node.
    pub gpu: String,
}

/// Parses the words after `scontrol update`. Keys are case-insensitive, as in Slurm
/// (`NodeName=` or `Node=`, `Gpu=`, `State=`); berth updates only a GPU's health.
///
/// # Errors
/// A message naming the word that is missing, repeated, unknown or unsupported.
pub fn parse_gpu_resume(words: &[&str]) -> Result<GpuResume, String> {
    let (mut node, mut gpu, mut state) = (None, None, None);
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("invalid update word {w:?} (want Key=Value)"));
        };
        if v.is_empty() {
            return Err(format!("{k}= needs a value"));
        }
        let slot = match k.to_ascii_lowercase().as_str() {
            "nodename" | "node" => &mut node,
            "gpu" => &mut gpu,
            "state" => &mut state,
            _ => {
                return Err(format!(
                    "update key {k:?} is not supported by berth (NodeName=, Gpu=, State=RESUME)"
                ))
            }
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("{k}= given twice"));
        }
    }
    let node = node.ok_or("update needs NodeName=")?;
    if node.contains(',') || node.contains('[') {
        return Err(format!("NodeName={node}: name one node"));
    }
    let gpu = gpu.ok_or("berth updates GPUs only: add Gpu=UUID|INDEX")?;
    match state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("resume") => Ok(GpuResume { node, gpu }),
        Some(other) => Err(format!(
            "State={other}: only State=RESUME is supported for a GPU"
        )),
        None => Err("update needs State=RESUME".into()),
    }
}

/// What an update asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUpdate {
    /// `Gpu=G State=RESUME`: mark one GPU healthy again.
    GpuResume(GpuResume),
    /// `State=DRAIN Reason=…` (`drain`), or `State=RESUME|UNDRAIN` (not `drain`), on each
    /// of `nodes` (a host list such as `n[1-4]` is expanded).
    Drain {
        /// Node names, in the list's order.
        nodes: Vec<String>,
        /// Drain (true) or resume (false).
        drain: bool,
        /// Why (required to drain).
        reason: String,
    },
}

/// The states Slurm's scontrol lists when it does not know the one given.
const VALID_STATES: &str = "NoResp DRAIN FAIL FUTURE RESUME POWER_DOWN POWER_UP UNDRAIN";

/// Slurm's state names that berth does not act on (it has no DOWN/FAIL/power states of a
/// node that an operator sets; DRAIN stops new work, as those would).
const NOT_IN_BERTH: &[&str] = &[
    "NORESP",
    "CANCEL_REBOOT",
    "FAIL",
    "FUTURE",
    "POWER_DOWN",
    "POWER_DOWN_ASAP",
    "POWER_DOWN_FORCE",
    "POWER_UP",
    "DOWN",
    "IDLE",
    "ALLOCATED",
    "MIXED",
    "UNKNOWN",
];

/// Parses the words after `scontrol update` (keys case-insensitive, as in Slurm).
///
/// # Errors
/// Slurm's messages: `Invalid input: …  Request aborted`, the valid states for an unknown
/// one, `You must specify a reason when DOWNING or DRAINING a node. Request denied`,
/// `No changes specified`; berth's for what it does not do.
pub fn parse_node_update(words: &[&str]) -> Result<NodeUpdate, String> {
    let has = |key: &str| {
        words.iter().any(|w| {
            w.split_once('=')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(key))
        })
    };
    if has("gpu") {
        return parse_gpu_resume(words).map(NodeUpdate::GpuResume);
    }
    let (mut node, mut state, mut reason) = (None, None, None);
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("Invalid input: {w}  Request aborted"));
        };
        let slot = match k.to_ascii_lowercase().as_str() {
            "nodename" | "node" => &mut node,
            "state" => &mut state,
            "reason" => &mut reason,
            _ => {
                return Err(format!(
                    "Update of this parameter is not supported: {w}\nRequest aborted \
                     (berth updates NodeName=, State=, Reason= and Gpu=)"
                ))
            }
        };
        if slot.replace(v.to_string()).is_some() {
            return Err(format!("{k}= given twice"));
        }
    }
    let node = node
        .filter(|n| !n.is_empty())
        .ok_or("update needs NodeName=")?;
    let nodes = hostlist::expand(&node)
        .map_err(|e| format!("Invalid node name specified ({node}: {e})"))?;
    let Some(state) = state else {
        return Err("No changes specified".into());
    };
    let drain = state_is_drain(&state)?;
    // Slurm strips the quotes a shell left around a reason.
    let reason = reason
        .map(|r| r.trim_matches('"').trim_matches('\'').to_string())
        .unwrap_or_default();
    if drain && reason.trim().is_empty() {
        return Err(
            "You must specify a reason when DOWNING or DRAINING a node. Request denied".into(),
        );
    }
    Ok(NodeUpdate::Drain {
        nodes,
        drain,
        reason,
    })
}

/// DRAIN (true) or RESUME/UNDRAIN (false); Slurm matches a prefix of 3 letters or more.
fn state_is_drain(state: &str) -> Result<bool, String> {
    let s = state.to_ascii_uppercase();
    let is = |name: &str| s.len() >= 3 && name.starts_with(&s);
    if is("DRAIN") {
        return Ok(true);
    }
    if is("RESUME") || is("UNDRAIN") {
        return Ok(false);
    }
    if s.len() >= 3 && NOT_IN_BERTH.iter().any(|n| n.starts_with(&s)) {
        return Err(format!(
            "State={state} is not supported by berth (DRAIN, RESUME or UNDRAIN)"
        ));
    }
    Err(format!(
        "Invalid input: State={state}\nRequest aborted\nValid states are: {VALID_STATES}\n\
         Not all states are valid given a node's prior state"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(nodes: &[&str], drain: bool, reason: &str) -> NodeUpdate {
        NodeUpdate::Drain {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            drain,
            reason: reason.into(),
        }
    }

    #[test]
    fn drains_and_resumes_as_slurm_spells_them() {
        let table: [(&[&str], NodeUpdate); 5] = [
            (
                &["NodeName=n1", "State=DRAIN", "Reason=bad fan"],
                drain(&["n1"], true, "bad fan"),
            ),
            (
                &["nodename=n[1-3]", "state=dra", "reason=\"maint\""],
                drain(&["n1", "n2", "n3"], true, "maint"),
            ),
            (&["NodeName=n1", "State=RESUME"], drain(&["n1"], false, "")),
            (&["Node=n2", "State=undrain"], drain(&["n2"], false, "")),
            (
                &["NodeName=n1", "Gpu=3", "State=RESUME"],
                NodeUpdate::GpuResume(GpuResume {
                    node: "n1".into(),
                    gpu: "3".into(),
                }),
            ),
        ];
        for (words, want) in table {
            assert_eq!(parse_node_update(words), Ok(want), "{words:?}");
        }
    }

    #[test]
    fn bad_updates_get_slurms_messages() {
        let table: [(&[&str], &str); 8] = [
            (
                &["NodeName=n1", "State=DRAIN"],
                "You must specify a reason when DOWNING or DRAINING a node. Request denied",
            ),
            (
                &["NodeName=n1", "State=DRAIN", "Reason="],
                "You must specify a reason",
            ),
            (&["NodeName=n1"], "No changes specified"),
            (
                &["NodeName=n1", "State=XYZ"],
                "Valid states are: NoResp DRAIN",
            ),
            (&["NodeName=n1", "State=DR"], "Invalid input: State=DR"),
            (
                &["NodeName=n1", "State=DOWN", "Reason=x"],
                "not supported by berth",
            ),
            (
                &["NodeName=n1", "Weight=3"],
                "Update of this parameter is not supported: Weight=3",
            ),
            (
                &["NodeName=n1", "drain"],
                "Invalid input: drain  Request aborted",
            ),
        ];
        for (words, want) in table {
            match parse_node_update(words) {
                Err(e) if e.contains(want) => {}
                got => panic!("{words:?}: want {want:?}, got {got:?}"),
            }
        }
        assert!(parse_node_update(&["State=DRAIN", "Reason=x"]).is_err());
        assert!(parse_node_update(&["NodeName=n[1-", "State=RESUME"]).is_err());
    }

    #[test]
    fn gpu_resume_parses_and_refuses_bad_input() {
        let ok = parse_gpu_resume(&["NodeName=node1", "Gpu=3", "State=RESUME"]);
        assert_eq!(
            ok,
            Ok(GpuResume {
                node: "node1".into(),
                gpu: "3".into()
            })
        );
        let ok = parse_gpu_resume(&["node=n2", "state=resume", "gpu=GPU-abc"]);
        assert_eq!(ok.map(|r| r.gpu), Ok("GPU-abc".to_string()));
        let bad: [(&[&str], &str); 8] = [
            (&["Gpu=3", "State=RESUME"], "NodeName="),
            (&["NodeName=n1", "State=RESUME"], "Gpu="),
            (&["NodeName=n1", "Gpu=3"], "State=RESUME"),
            (
                &["NodeName=n1", "Gpu=3", "State=DRAIN"],
                "only State=RESUME",
            ),
            (
                &["NodeName=n1", "Gpu=3", "State=RESUME", "Reason=x"],
                "not supported",
            ),
            (
                &["NodeName=n1", "NodeName=n2", "Gpu=3", "State=RESUME"],
                "twice",
            ),
            (&["NodeName=n[1-2]", "Gpu=3", "State=RESUME"], "one node"),
            (&["NodeName=n1", "Gpu=", "State=RESUME"], "needs a value"),
        ];
        for (i, (words, want)) in bad.iter().enumerate() {
            match parse_gpu_resume(words) {
                Err(e) if e.contains(want) => {}
                got => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
        assert!(parse_gpu_resume(&["resume"]).is_err());
    }
}
