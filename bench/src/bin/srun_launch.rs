//! `srun` launch latency across N nodes: how long from starting the `srun` process until
//! its first task runs, and until every task has run and srun has exited.
//!
//! Starts `berth dev --nodes N --insecure` (the `berth` binary next to this one, or
//! `--berth PATH`; simulated nodes, all agents in that process), holds an N-node job
//! (`sbatch -N N --wrap 'sleep 3600'`), then R times runs `berth srun --jobid ID -N N
//! -n N date +%s%N`: each task prints the wall clock it started at; the first task's start
//! minus the moment srun was spawned is the launch latency (same host, same clock). The
//! whole run covers parsing, the step's Raft entry, the launch to every agent, the tasks'
//! output streamed back and srun's exit.
//!
//! `cargo build --release --workspace && target/release/srun_launch [NODES] [RUNS]
//! [--berth PATH]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Kills `berth dev` when the benchmark ends, however it ends.
struct Dev(std::process::Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--berth"))
        .map(|(_, a)| a)
        .collect();
    let nodes: usize = positional.first().map_or(Ok(8), |a| a.parse())?;
    let runs: usize = positional.get(1).map_or(Ok(20), |a| a.parse())?;
    let berth = berth_bench::berth_cli::berth_binary(&args)?;
    let state = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let _dev = Dev(Command::new(&berth)
        .args(["dev", "--insecure", "--http-listen", "off", "--nodes"])
        .arg(nodes.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?);
    let tool = |args: &[&str]| {
        Command::new(&berth)
            .args(args)
            .env("BERTH_SERVER", &server)
            .current_dir(state.path())
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = tool(&["sinfo", "-h", "-N", "-o", "%N %t"])?;
        let idle = String::from_utf8_lossy(&o.stdout).matches(" idle").count();
        if idle >= nodes {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "berth dev never had {nodes} idle nodes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = nodes.to_string();
    let o = tool(&["sbatch", "--parsable", "-N", &n, "--wrap", "sleep 3600"])?;
    anyhow::ensure!(
        o.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let job = String::from_utf8_lossy(&o.stdout).trim().to_string();
    loop {
        let o = tool(&["squeue", "-h", "-j", &job, "-o", "%t"])?;
        if String::from_utf8_lossy(&o.stdout).trim() == "R" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "job {job} never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..runs {
        let spawned = now_ns();
        let start = Instant::now();
        let o = tool(&["srun", "--jobid", &job, "-N", &n, "-n", &n, "date", "+%s%N"])?;
        let took = start.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            o.status.success(),
            "srun: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let starts: Vec<u128> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        anyhow::ensure!(
            starts.len() == nodes,
            "{} task lines, want {nodes}",
            starts.len()
        );
        let earliest = starts.iter().min().copied().unwrap_or(spawned);
        first.push(earliest.saturating_sub(spawned) as f64 / 1e6);
        whole.push(took);
    }
    first.sort_by(f64::total_cmp);
    whole.sort_by(f64::total_cmp);
    println!("srun -N {nodes} -n {nodes} date, {runs} runs, berth dev (simulated nodes, one host)");
    println!(
        "first task running: median {:.1} ms, p90 {:.1} ms, worst {:.1} ms",
        percentile(&first, 0.5),
        percentile(&first, 0.9),
        first[first.len() - 1]
    );
    println!(
        "srun wall (all tasks ran, output back, exit): median {:.1} ms, p90 {:.1} ms",
        percentile(&whole, 0.5),
        percentile(&whole, 0.9)
    );
    let _ = tool(&["scancel", &job]);
    Ok(())
}
