//! `scontrol show hostnames` / `show hostlist`: host list conversions, local as in Slurm
//! (no berthd needed), for launchers that want `MASTER_ADDR` from `SLURM_JOB_NODELIST`.

/// `scontrol show hostnames [LIST]` (one name a line, in the list's order) and `show
/// hostlist [NAMES]` (the names compressed, sorted); with no argument, the list in
/// `SLURM_JOB_NODELIST` (`env`), as in Slurm.
///
/// # Errors
/// No list at all, more than one argument, or a list that does not parse.
pub fn show_hosts(what: &str, args: &[&str], env: Option<&str>) -> anyhow::Result<String> {
    let list = match args {
        [one] => one.to_string(),
        [] => env
            .filter(|v| !v.is_empty())
            .ok_or_else(|| anyhow::anyhow!("host list is empty"))?
            .to_string(),
        _ => anyhow::bail!("show {what} takes one host list, got {}", args.len()),
    };
    let names = berth_policies::topology::hostlist::expand(&list)
        .map_err(|why| anyhow::anyhow!("Invalid hostlist: {list}: {why}"))?;
    if names.is_empty() {
        anyhow::bail!("host list is empty");
    }
    Ok(if what == "hostnames" {
        names.iter().map(|n| format!("{n}\n")).collect()
    } else {
        format!("{}\n", crate::hostlist::compress(&names))
    })
}

#[cfg(test)]
mod host_tests {
    use super::show_hosts;

    #[test]
    fn hostnames_expand_in_order_and_hostlist_compresses() {
        assert_eq!(
            show_hosts("hostnames", &["n[1-3],gpu01"], None).unwrap(),
            "n1\nn2\nn3\ngpu01\n"
        );
        assert_eq!(
            show_hosts("hostnames", &[], Some("x[01-02]")).unwrap(),
            "x01\nx02\n",
            "SLURM_JOB_NODELIST when no list is given"
        );
        assert_eq!(
            show_hosts("hostlist", &["n3,n1,n2,gpu01"], None).unwrap(),
            "gpu01,n[1-3]\n"
        );
    }

    #[test]
    fn bad_host_lists_are_refused() {
        let table: [(&[&str], Option<&str>, &str); 4] = [
            (&["n[3-1]"], None, "Invalid hostlist: n[3-1]"),
            (&[], None, "host list is empty"),
            (&[], Some(""), "host list is empty"),
            (&["a", "b"], None, "takes one host list"),
        ];
        for (i, (args, env, want)) in table.into_iter().enumerate() {
            match show_hosts("hostnames", args, env) {
                Err(e) if e.to_string().contains(want) => {}
                got => panic!("#{i}: want {want:?}, got {got:?}"),
            }
        }
    }
}
