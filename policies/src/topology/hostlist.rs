//! Slurm host-list expansion (`node[001-032,040],gpu1`) for topology.conf.
//!
//! The one expander of the workspace (the CLI's `hostlist` compresses, and its tests check
//! the round trip): the numeric range keeps its zero padding (`n[01-03]` is `n01 n02 n03`),
//! and several bracket groups multiply.

/// Expansions stop here so a typo such as `n[1-1000000000]` cannot exhaust memory.
pub const HOSTS_MAX: usize = 1 << 20;

/// Expands `list` in the order written.
///
/// # Errors
/// A message naming the fault: unbalanced or nested brackets, a range that is not `N` or
/// `N-M` or that goes backwards, an empty name, or more than [`HOSTS_MAX`] names.
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in split_top_level(list)? {
        if item.is_empty() {
            return Err(format!("host list \"{list}\" has an empty name"));
        }
        expand_item(list, item, String::new(), &mut out)?;
    }
    Ok(out)
}

/// Splits on commas outside brackets, checking that brackets balance and do not nest.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let unbalanced = || format!("host list \"{list}\" has unbalanced brackets");
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(unbalanced()),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(unbalanced());
    }
    items.push(&list[start..]);
    Ok(items)
}

fn expand_item(list: &str, item: &str, head: String, out: &mut Vec<String>) -> Result<(), String> {
    let Some(open) = item.find('[') else {
        if out.len() >= HOSTS_MAX {
            return Err(format!(
                "host list \"{list}\" names more than {HOSTS_MAX} hosts"
            ));
        }
        out.push(head + item);
        return Ok(());
    };
    let close = open
        + item[open..]
            .find(']')
            .ok_or_else(|| format!("host list \"{list}\" has unbalanced brackets"))?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    for range in ranges.split(',') {
        let bad = || format!("host list \"{list}\": bad range \"{range}\"");
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) || lo.len() > 18 || hi.len() > 18 {
            return Err(bad());
        }
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| bad())?,
            hi.parse().map_err(|_| bad())?,
        );
        if b < a {
            return Err(format!(
                "host list \"{list}\": range \"{range}\" goes backwards"
            ));
        }
        if b - a >= HOSTS_MAX as u64 {
            return Err(format!(
                "host list \"{list}\" names more than {HOSTS_MAX} hosts"
            ));
        }
        for n in a..=b {
            let name = format!("{head}{prefix}{n:0width$}", width = lo.len());
            expand_item(list, rest, name, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_ranges_padding_and_products() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("a", vec!["a"]),
            ("n[1-3],x", vec!["n1", "n2", "n3", "x"]),
            ("n[08-10]", vec!["n08", "n09", "n10"]),
            ("r[1-2]g[1-2]", vec!["r1g1", "r1g2", "r2g1", "r2g2"]),
            ("n[1,3-4]", vec!["n1", "n3", "n4"]),
        ];
        for (i, (list, want)) in cases.into_iter().enumerate() {
            let got = expand(list).unwrap();
            assert_eq!(got, want, "#{i}: {list}");
        }
    }

    #[test]
    fn refuses_bad_lists() {
        for bad in [
            "n[1-3",
            "n]1[",
            "n[[1]]",
            "n[3-1]",
            "n[a-b]",
            "n[]",
            "a,,b",
            "",
            "n[1-2000000]",
        ] {
            assert!(expand(bad).is_err(), "{bad} should be refused");
        }
    }
}
