//! Real distributed launchers, unmodified, on two simulated nodes of `berth dev`, with
//! berth's binary on PATH as `srun` and `scontrol`:
//! - Open MPI's `mpirun` (Debian's openmpi-bin) inside `sbatch -N 2 --ntasks-per-node=2`
//!   reads the allocation from `SLURM_NODELIST`/`SLURM_TASKS_PER_NODE`, starts its
//!   `orted` daemons through `srun` as it does under Slurm, and an mpi4py all-reduce over
//!   the 4 ranks gives 1+2+3+4.
//! - A torchrun-style launch: `MASTER_ADDR` from `scontrol show hostnames`, one rank per
//!   node through `srun --ntasks-per-node=1`, ranks meeting at the master's TCP store.
//!
//! Both simulated nodes are this one host, which Open MPI cannot know: its shared-memory
//! transport names its segment files by the real host name, so ranks of "two nodes" would
//! share one file. The job therefore picks the TCP transport over loopback
//! (`OMPI_MCA_btl=self,tcp`, `..._if_include=lo`), as a site sets MCA parameters for its
//! network; on real nodes nothing is set. Skipped with a printed reason when the Debian
//! packages cannot be installed.

use berth_tests::{bin, free_port, poll, sbatch};
use std::path::Path;

const ALLREDUCE: &str = r#"
from mpi4py import MPI
import os
c = MPI.COMM_WORLD
s = c.allreduce(c.Get_rank() + 1, op=MPI.SUM)
print(f"rank {c.Get_rank()}/{c.Get_size()} on {os.environ.get('SLURMD_NODENAME')} sum {s}", flush=True)
"#;

/// A rendezvous as torchrun's c10d store does it: rank 0 listens on MASTER_ADDR:PORT,
/// every rank sends its rank, rank 0 answers each with the world's sum.
const RENDEZVOUS: &str = r#"
import os, socket, time
rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port)); srv.listen(world)
    peers = [srv.accept()[0] for _ in range(world - 1)]
    total = sum(int(p.recv(16)) for p in peers)
    for p in peers: p.sendall(str(total).encode())
    print(f"rank 0 of {world} on {os.environ['SLURMD_NODENAME']} master {addr} total {total}", flush=True)
else:
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port)); break
        except OSError: time.sleep(0.1)
    s.sendall(str(rank).encode())
    print(f"rank {rank} of {world} on {os.environ['SLURMD_NODENAME']} master {addr} total {s.recv(16).decode()}", flush=True)
"#;

/// A directory with berth's binary as srun and scontrol, for PATH.
fn tools(dir: &Path) -> String {
    for name in ["srun", "scontrol"] {
        std::os::unix::fs::symlink(bin("berth"), dir.join(name)).expect("tool symlink");
    }
    format!("{}:/usr/bin:/bin", dir.display())
}

#[test]
fn mpirun_starts_its_daemons_through_srun_and_the_ranks_all_reduce() {
    if let Err(why) = berth_tests::ensure_debian_packages(&["openmpi-bin", "python3-mpi4py"]) {
        println!("SKIPPED mpirun_starts_its_daemons_through_srun_and_the_ranks_all_reduce: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let path = tools(dir);
    let (_dev, server) = berth_tests::two_node_dev(dir);
    std::fs::write(dir.join("allreduce.py"), ALLREDUCE).expect("program");
    let script = dir.join("mpi.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n\
             export PATH={path}\n\
             export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n\
             export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo\n\
             mpirun -np 4 /usr/bin/python3 {}/allreduce.py\n\
             echo mpirun rc=$?\n",
            dir.display()
        ),
    )
    .expect("script");
    let out = dir.join("out.txt");
    let id = sbatch(
        dir,
        &server,
        &[
            "-N",
            "2",
            "--ntasks-per-node=2",
            "-t",
            "5",
            "-o",
            out.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
        ],
    );
    let text = poll(&format!("job {id}'s mpirun ends"), 90, || {
        let t = std::fs::read_to_string(&out).ok()?;
        t.contains("mpirun rc=").then_some(t)
    });
    for want in [
        "rank 0/4 on node1 sum 10\n",
        "rank 1/4 on node1 sum 10\n",
        "rank 2/4 on node2 sum 10\n",
        "rank 3/4 on node2 sum 10\n",
        "mpirun rc=0\n",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
}

#[test]
fn a_torchrun_style_launch_runs_one_rank_per_node_around_the_first_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let path = tools(dir);
    let (_dev, server) = berth_tests::two_node_dev(dir);
    std::fs::write(dir.join("rdzv.py"), RENDEZVOUS).expect("program");
    let script = dir.join("train.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n\
             export PATH={path}\n\
             export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -1)\n\
             export MASTER_PORT={}\n\
             srun --ntasks-per-node=1 /usr/bin/python3 {}/rdzv.py\n\
             echo srun rc=$?\n",
            free_port(),
            dir.display()
        ),
    )
    .expect("script");
    let out = dir.join("out.txt");
    let id = sbatch(
        dir,
        &server,
        &[
            "-N",
            "2",
            "-t",
            "5",
            "-o",
            out.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
        ],
    );
    let text = poll(&format!("job {id}'s ranks end"), 60, || {
        let t = std::fs::read_to_string(&out).ok()?;
        t.contains("srun rc=").then_some(t)
    });
    for want in [
        "rank 0 of 2 on node1 master node1 total 1\n",
        "rank 1 of 2 on node2 master node1 total 1\n",
        "srun rc=0\n",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
}
