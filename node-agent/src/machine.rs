//! CPU count and memory of the host, offered to jobs unless configured otherwise, and the
//! CPUs step tasks can be bound to (`--cpu-bind`), with their cores, sockets and NUMA
//! nodes as Linux reports them under `/sys`.

use berth_policies::cpu_bind::{Cpu, MAX_CPUS};
use std::path::Path;

/// Online CPUs.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Total memory in MiB, from `/proc/meminfo` (0 when unreadable).
pub fn memory_mb() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// This host's short name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

/// The CPUs this agent may run tasks on (its own affinity, so a cpuset the agent was
/// started in bounds its tasks too), each with its core, socket and NUMA node.
pub fn bindable_cpus() -> Vec<Cpu> {
    cpus_under(Path::new("/sys/devices/system"), &allowed_cpus())
}

/// The CPU ids of this process's affinity.
pub fn allowed_cpus() -> Vec<u32> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..MAX_CPUS)
        .filter(|&id| unsafe { libc::CPU_ISSET(id as usize, &set) })
        .collect()
}

/// `ids` with their topology read from `sys` (`/sys/devices/system`): core and socket
/// from `cpu/cpuN/topology`, the NUMA node from `node/nodeM/cpulist` (the socket where
/// there is none, as Slurm takes it).
pub fn cpus_under(sys: &Path, ids: &[u32]) -> Vec<Cpu> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let number = |p: std::path::PathBuf| read(&p).and_then(|t| t.trim().parse::<u32>().ok());
    let mut ldom_of = std::collections::BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(sys.join("node")) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(n) = name
                .strip_prefix("node")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            for id in read(&entry.path().join("cpulist"))
                .map(|l| cpu_list(&l))
                .unwrap_or_default()
            {
                ldom_of.insert(id, n);
            }
        }
    }
    ids.iter()
        .map(|&id| {
            let topo = sys.join(format!("cpu/cpu{id}/topology"));
            let socket = number(topo.join("physical_package_id")).unwrap_or(0);
            Cpu {
                id,
                core: number(topo.join("core_id")).unwrap_or(id),
                socket,
                ldom: ldom_of.get(&id).copied().unwrap_or(socket),
            }
        })
        .collect()
}

/// A kernel CPU list (`0-3,8,10-11`); what does not parse is left out.
pub fn cpu_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            out.extend(a..=b.min(MAX_CPUS - 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_is_read_from_sys_with_sockets_standing_in_for_numa() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        for (id, core, socket) in [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)] {
            let t = sys.join(format!("cpu/cpu{id}/topology"));
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("core_id"), format!("{core}\n")).unwrap();
            std::fs::write(t.join("physical_package_id"), format!("{socket}\n")).unwrap();
        }
        std::fs::create_dir_all(sys.join("node/node0")).unwrap();
        std::fs::write(sys.join("node/node0/cpulist"), "0-1\n").unwrap();
        let cpus = cpus_under(sys, &[0, 1, 2, 3, 9]);
        let got: Vec<(u32, u32, u32, u32)> = cpus
            .iter()
            .map(|c| (c.id, c.core, c.socket, c.ldom))
            .collect();
        // CPU 9 has no topology files: its own core, socket 0; 2 and 3 lie in no NUMA
        // node listed, so their socket stands in.
        assert_eq!(
            got,
            vec![
                (0, 0, 0, 0),
                (1, 1, 0, 0),
                (2, 0, 1, 1),
                (3, 1, 1, 1),
                (9, 9, 0, 0)
            ]
        );
        assert_eq!(cpu_list("0-2,5,x,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(cpu_list(""), Vec::<u32>::new());
    }

    #[test]
    fn this_process_may_run_on_some_cpu() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        assert_eq!(bindable_cpus().len(), allowed.len());
    }
}
