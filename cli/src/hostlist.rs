//! Slurm host lists: `node[1-3,5],gpu01` ⇄ `node1 node2 node3 node5 gpu01`.
//!
//! squeue, sinfo and scontrol print node sets in this compressed form and users paste them
//! back (`scontrol show hostnames`, `--nodelist`), so both directions must agree with Slurm:
//! the numeric suffix of a name is what gets ranged, and zero padding is part of the name
//! (`n[01-03]` is `n01 n02 n03`, never `n1`). This is the compressing half; expansion
//! lives in `berth_policies::topology::hostlist` (topology.conf needs it), and the tests
//! here check that the two round-trip.

use std::collections::BTreeSet;

/// A host name split as Slurm ranges it: `prefix` + optional decimal `digits` at the end.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HostName {
    prefix: String,
    number: Option<u64>,
    /// How many digits the name carries (`01` is 2), to keep zero padding.
    digits: usize,
}

impl HostName {
    fn new(name: &str) -> HostName {
        let start = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, digits) = name.split_at(start);
        match digits.parse::<u64>() {
            Ok(number) => HostName {
                prefix: prefix.to_string(),
                number: Some(number),
                digits: digits.len(),
            },
            // No digits, or too many for u64: keep the name whole and never range it.
            Err(_) => HostName {
                prefix: name.to_string(),
                number: None,
                digits: 0,
            },
        }
    }

    /// Zero padding this name needs to be printed back exactly (0: none).
    fn pad(&self) -> usize {
        match self.number {
            Some(n) if n.to_string().len() < self.digits => self.digits,
            _ => 0,
        }
    }
}

/// A run of consecutive numbers printed with one padding width.
struct Run {
    first: u64,
    last: u64,
    pad: usize,
}

impl Run {
    fn render(&self) -> String {
        let pad = self.pad;
        if self.first == self.last {
            format!("{:0pad$}", self.first)
        } else {
            format!("{:0pad$}-{:0pad$}", self.first, self.last)
        }
    }

    /// Whether `name` continues this run: the next number, printed the same way.
    fn extends(&self, number: u64, name: &HostName) -> bool {
        let printed = format!("{:0pad$}", number, pad = self.pad);
        number == self.last + 1 && printed.len() == name.digits
    }
}

/// Compresses host names into Slurm's ranged form, sorted by prefix then number, without
/// duplicates: `["n3","n1","n2","gpu01"]` → `gpu01,n[1-3]`. Empty input gives `""`.
pub fn compress(hosts: &[String]) -> String {
    let names: BTreeSet<HostName> = hosts.iter().map(|h| HostName::new(h)).collect();
    let mut groups: Vec<(String, Vec<Run>)> = Vec::new();
    for name in names {
        let Some(number) = name.number else {
            groups.push((name.prefix, Vec::new()));
            continue;
        };
        let same_prefix =
            matches!(groups.last(), Some((p, runs)) if *p == name.prefix && !runs.is_empty());
        if !same_prefix {
            groups.push((name.prefix.clone(), Vec::new()));
        }
        let runs = &mut groups.last_mut().expect("a group was just ensured").1;
        match runs.last_mut() {
            Some(run) if run.extends(number, &name) => run.last = number,
            _ => runs.push(Run {
                first: number,
                last: number,
                pad: name.pad(),
            }),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(prefix, runs)| match runs.as_slice() {
            [] => prefix.clone(),
            [run] if run.first == run.last => format!("{prefix}{}", run.render()),
            runs => {
                let inner: Vec<String> = runs.iter().map(Run::render).collect();
                format!("{prefix}[{}]", inner.join(","))
            }
        })
        .collect();
    parts.join(",")
}

/// A sort key that orders host names as Slurm does: by prefix, then by number
/// (`n2` before `n10`), then by padding.
pub fn natural_key(name: &str) -> (String, Option<u64>, usize) {
    let HostName {
        prefix,
        number,
        digits,
    } = HostName::new(name);
    (prefix, number, digits)
}

/// Compresses numbers the way Slurm prints GPU indexes (`IDX:0-2,5`): sorted, deduplicated,
/// consecutive runs joined with `-`.
pub fn compress_numbers(numbers: &[u32]) -> String {
    let set: BTreeSet<u32> = numbers.iter().copied().collect();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for n in set {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    // Expansion lives in policies (topology.conf needs it); compress must round-trip with it.
    use berth_policies::topology::hostlist::expand;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compresses_like_slurm() {
        let cases: &[(&[&str], &str)] = &[
            (&[], ""),
            (&["node1"], "node1"),
            (&["node1", "node2", "node3"], "node[1-3]"),
            (&["node3", "node1", "node2", "node5"], "node[1-3,5]"),
            (
                &["node1", "node2", "node3", "node5", "gpu01"],
                "gpu01,node[1-3,5]",
            ),
            (&["n01", "n02", "n03"], "n[01-03]"),
            (&["n09", "n10", "n11"], "n[09-11]"),
            (&["n9", "n10"], "n[9-10]"),
            (&["n1", "n01"], "n[1,01]"),
            (&["login", "n1", "n1"], "login,n1"),
            (&["a", "b"], "a,b"),
            (&["rack1-n3", "rack1-n4"], "rack1-n[3-4]"),
            (&["n001", "n002", "n010"], "n[001-002,010]"),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = compress(&names(input));
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }

    #[test]
    fn expands_and_round_trips() {
        let cases: &[(&str, &[&str])] = &[
            ("node1", &["node1"]),
            ("node[1-3]", &["node1", "node2", "node3"]),
            (
                "node[1-3,5],gpu01",
                &["node1", "node2", "node3", "node5", "gpu01"],
            ),
            ("n[01-03]", &["n01", "n02", "n03"]),
            ("n[09-11]", &["n09", "n10", "n11"]),
            ("r[1-2]n[1-2]", &["r1n1", "r1n2", "r2n1", "r2n2"]),
            ("n[7]", &["n7"]),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = expand(input);
            if got.as_ref() != Ok(&names(want)) {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
            // Compressing the expansion and expanding again gives the same set.
            let again = expand(&compress(&names(want))).expect("compress output expands");
            let (mut a, mut b) = (again, names(want));
            a.sort();
            b.sort();
            if a != b {
                panic!("#{i}: round trip: want {b:?}, got {a:?}");
            }
        }
    }

    #[test]
    fn rejects_bad_lists() {
        let cases: &[(&str, &str)] = &[
            ("n[1-3", "unbalanced"),
            ("n1-3]", "unbalanced"),
            ("n[[1]]", "unbalanced"),
            ("n[5-3]", "backwards"),
            ("n[a-b]", "bad range"),
            ("n[1-]", "bad range"),
            ("n[]", "bad range"),
            ("n[1,,2]", "bad range"),
            ("a,,b", "empty name"),
            ("n[1-99999999]", "more than"),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = expand(input).map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn compresses_gpu_indexes() {
        let cases: &[(&[u32], &str)] = &[
            (&[], ""),
            (&[0], "0"),
            (&[2, 0, 1], "0-2"),
            (&[0, 1, 2, 5, 7, 8], "0-2,5,7-8"),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            let got = compress_numbers(input);
            if got != *want {
                panic!("#{i}: want {want:?}, got {got:?}");
            }
        }
    }
}
