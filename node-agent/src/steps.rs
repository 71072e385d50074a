//! Job steps on this node: the tasks of an `srun` that berthd placed here, each started
//! in its own process group with the step's environment and its share of the job's GPUs,
//! its stdout and stderr streamed to srun's I/O listener as they come, and the worst exit
//! among them reported to berthd once all have ended.
//!
//! Unlike batch scripts, step tasks live in the agent's memory only: they are the agent's
//! children and die with it (`PR_SET_PDEATHSIG`), because nobody would be left to carry
//! their output to srun. berthd fails a step whose node's agent re-registers without it,
//! so srun never waits on tasks that are gone.

use crate::job_env;
use berth_policies::cpu_bind::{self, CpuBind};
use berth_proto::v1::{self as pb, step_io::Frame, step_io_service_client::StepIoServiceClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// Step ends kept for re-sending at the next registration (berthd ignores repeats).
const ENDED_KEPT: usize = 256;
/// How long an agent tries to reach srun's I/O listener before failing the step here.
const IO_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Largest chunk of output in one frame.
const CHUNK_BYTES: usize = 32 << 10;
/// Exit code of a task whose program could not be started (Slurm's, for a failed execve).
const EXEC_FAILED: i32 = 2;

type Key = (u64, u32);

#[derive(Default)]
struct Table {
    /// Running steps: each one's kill switch.
    running: BTreeMap<Key, watch::Sender<bool>>,
    /// The CPUs each running bound step's tasks hold here (`--cpu-bind`), so the next
    /// step's automatic binding starts on others.
    bound: BTreeMap<Key, BTreeSet<u32>>,
    ended: VecDeque<pb::StepEnd>,
}

/// The steps running on this node.
#[derive(Clone)]
pub struct Steps {
    table: Arc<Mutex<Table>>,
    ends: mpsc::UnboundedSender<pb::StepEnd>,
    kill_grace: Duration,
    node: String,
    /// The cluster key (a secure agent): a step runs only as the identity berthd sealed
    /// onto its job, as a batch launch does ([`crate::launch_identity`]).
    launch_key: Option<Arc<berth_auth::key::ClusterKey>>,
    /// An MPS-shared node's limits and daemons: step tasks run under them as the batch
    /// script does.
    mps: Option<Arc<StepMps>>,
}

/// The MPS settings of an MPS-shared node (`--gpu-sharing mps`), for step tasks.
#[derive(Debug, Clone, Default)]
pub struct StepMps {
    /// Shares per GPU.
    pub replicas: u32,
    /// Framebuffer MiB by GPU UUID.
    pub memory_mb: BTreeMap<String, u64>,
    /// The daemons' directories by GPU UUID (empty when the agent runs none).
    pub dirs: BTreeMap<String, crate::mps::MpsDirs>,
}

impl Steps {
    /// Steps of node `node`, SIGTERM → SIGKILL after `kill_grace`; each step's end is sent
    /// on the returned receiver (for berthd).
    pub fn new(
        node: &str,
        kill_grace: Duration,
        launch_key: Option<Arc<berth_auth::key::ClusterKey>>,
    ) -> (Steps, mpsc::UnboundedReceiver<pb::StepEnd>) {
        let (ends, rx) = mpsc::unbounded_channel();
        let steps = Steps {
            table: Arc::default(),
            ends,
            kill_grace,
            node: node.to_string(),
            launch_key,
            mps: None,
        };
        (steps, rx)
    }

    /// Runs step tasks under `mps` from now on (an MPS-shared node).
    pub fn with_mps(mut self, mps: StepMps) -> Steps {
        self.mps = Some(Arc::new(mps));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts this node's tasks of `step`; a step already running here is left alone
    /// (berthd may send a launch twice).
    pub fn launch(&self, job: pb::Job, step: pb::Step) {
        let key = (step.job_id, step.step_id);
        let (kill_tx, kill_rx) = watch::channel(false);
        {
            let mut t = self.lock();
            if t.running.contains_key(&key) || t.ended.iter().any(|e| (e.job_id, e.step_id) == key)
            {
                return;
            }
            t.running.insert(key, kill_tx);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let end = run(&this, job, step, kill_rx).await;
            tracing::info!(
                job = end.job_id,
                step = end.step_id,
                code = end.exit_code,
                "step ended"
            );
            {
                let mut t = this.lock();
                t.running.remove(&key);
                t.bound.remove(&key);
                if t.ended.len() == ENDED_KEPT {
                    t.ended.pop_front();
                }
                t.ended.push_back(end.clone());
            }
            let _ = this.ends.send(end);
        });
    }

    /// Stops step `step_id` of job `job_id` (every step of it when `None`).
    pub fn kill(&self, job_id: u64, step_id: Option<u32>) {
        for ((j, s), tx) in self.lock().running.iter() {
            if *j == job_id && step_id.is_none_or(|id| id == *s) {
                let _ = tx.send(true);
            }
        }
    }

    /// Steps whose tasks run here now.
    pub fn running(&self) -> Vec<pb::StepRef> {
        self.lock()
            .running
            .keys()
            .map(|(job_id, step_id)| pb::StepRef {
                job_id: *job_id,
                step_id: *step_id,
            })
            .collect()
    }

    /// The latest step ends (for re-sending at registration).
    pub fn ended(&self) -> Vec<pb::StepEnd> {
        self.lock().ended.iter().cloned().collect()
    }

    /// The CPU set of each of this node's tasks of step `key` under `bind` (empty sets
    /// when unbound), held until the step ends.
    fn bind(
        &self,
        key: Key,
        bind: &CpuBind,
        tasks: usize,
        cpus_per_task: u32,
    ) -> Result<Vec<Vec<u32>>, cpu_bind::CpuBindError> {
        if bind.kind == cpu_bind::BindKind::None {
            return Ok(vec![Vec::new(); tasks]);
        }
        // The topology is read from /sys before the table is locked.
        let cpus = crate::machine::bindable_cpus();
        let mut t = self.lock();
        let taken: BTreeSet<u32> = t
            .bound
            .iter()
            .filter(|(k, _)| **k != key)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let sets = cpu_bind::task_cpus(bind, &cpus, &taken, tasks, cpus_per_task)?;
        let held: BTreeSet<u32> = sets.iter().flatten().copied().collect();
        if !held.is_empty() {
            t.bound.insert(key, held);
        }
        Ok(sets)
    }
}

/// One frame about `task` of the step.
fn frame(step: &pb::Step, node: &str, task: u32, f: Frame) -> pb::StepIo {
    pb::StepIo {
        job_id: step.job_id,
        step_id: step.step_id,
        node: node.to_string(),
        task_id: task,
        frame: Some(f),
        ..Default::default()
    }
}

/// Runs this node's tasks of `step` to their end and returns the end to report.
async fn run(
    steps: &Steps,
    job: pb::Job,
    step: pb::Step,
    mut kill_rx: watch::Receiver<bool>,
) -> pb::StepEnd {
    let node = steps.node.as_str();
    let mut end = pb::StepEnd {
        job_id: step.job_id,
        step_id: step.step_id,
        ..Default::default()
    };
    let spec = step.spec.clone().unwrap_or_default();
    let Some(here) = step.nodes.iter().find(|n| n.node == node).cloned() else {
        end.reason = format!("launch sent to {node}, which runs none of its tasks");
        return end;
    };
    let io = match connect_io(&spec.io_addr, &spec.io_cert).await {
        Ok(io) => io,
        Err(e) => {
            end.exit_code = 1;
            end.reason = format!("cannot reach srun at {}: {e}", spec.io_addr);
            return end;
        }
    };
    let (tx, rx) = mpsc::channel::<pb::StepIo>(1024);
    let hello = pb::StepIo {
        job_id: step.job_id,
        step_id: step.step_id,
        io_key: spec.io_key.clone(),
        node: node.to_string(),
        ..Default::default()
    };
    let _ = tx.send(hello).await;
    let mut client = io;
    let stream = tokio::spawn(async move { client.attach(ReceiverStream::new(rx)).await });
    // Before any task starts: a step of a job whose sealed identity is missing or forged
    // runs nothing, and srun hears why.
    let job_spec = job.spec.clone().unwrap_or_default();
    let first = here.task_ids.first().copied().unwrap_or(0);
    let refused = |why: String| frame(&step, node, first, Frame::LaunchError(why));
    let checked = crate::launch_identity::check(steps.launch_key.as_deref(), &job_spec)
        .map_err(|e| format!("launch refused: {e}"))
        .and_then(|run_as| {
            // berthd checked the value; what this host's CPUs can give is known here only.
            let bind = match spec.cpu_bind.as_str() {
                "" => CpuBind::default(),
                v => cpu_bind::parse(v).map_err(|e| format!("launch refused on {node}: {e}"))?,
            };
            steps
                .bind(
                    (step.job_id, step.step_id),
                    &bind,
                    here.task_ids.len(),
                    spec.cpus_per_task,
                )
                .map(|sets| (run_as, bind, sets))
                .map_err(|e| format!("launch refused on {node}: {e}"))
        });
    let (run_as, bind, cpu_sets) = match checked {
        Ok(c) => c,
        Err(why) => {
            let _ = tx.send(refused(why.clone())).await;
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(10), stream).await;
            end.exit_code = 1;
            end.reason = why;
            return end;
        }
    };
    let mut children = Vec::new();
    let mut waits = tokio::task::JoinSet::new();
    for (local, task) in here.task_ids.iter().enumerate() {
        let mut env = task_env(&job, &step, &here, local, *task);
        crate::launch_identity::scrub(&mut env);
        if let Some(mps) = &steps.mps {
            let gpus = task_gpus(&here, spec.gpus_per_task, local);
            env.extend(task_mps(&job, node, &gpus, mps));
        }
        if !spec.cpu_bind.is_empty() {
            env.extend(
                cpu_bind::env(&bind, &cpu_sets)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v)),
            );
        }
        let cpus = &cpu_sets[local];
        match spawn_task(&spec, env, &run_as, cpus) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0) as i32;
                children.push(pid);
                if bind.verbose {
                    let shown = if cpus.is_empty() {
                        crate::machine::allowed_cpus()
                    } else {
                        cpus.clone()
                    };
                    let line =
                        cpu_bind::verbose_line(&bind, node, *task, local, pid as u32, &shown);
                    let _ = tx
                        .send(frame(&step, node, *task, Frame::Stderr(line.into_bytes())))
                        .await;
                }
                let out = child.stdout.take();
                let err = child.stderr.take();
                let (tx, step2, node2, task) = (tx.clone(), step.clone(), node.to_string(), *task);
                waits.spawn(async move {
                    let o = pump(out, tx.clone(), &step2, &node2, task, true);
                    let e = pump(err, tx.clone(), &step2, &node2, task, false);
                    let (_, _, status) = tokio::join!(o, e, child.wait());
                    let (code, signal) = exit_of(status);
                    let exit = pb::TaskExit {
                        exit_code: code,
                        signal,
                    };
                    let _ = tx
                        .send(frame(&step2, &node2, task, Frame::Exit(exit)))
                        .await;
                    (code, signal)
                });
            }
            Err(e) => {
                let msg = format!(
                    "berth-agent: error: {node}: task {task}: cannot run {}: {e}\n",
                    spec.argv[0]
                );
                let _ = tx
                    .send(frame(&step, node, *task, Frame::Stderr(msg.into_bytes())))
                    .await;
                let exit = pb::TaskExit {
                    exit_code: EXEC_FAILED,
                    signal: 0,
                };
                let _ = tx.send(frame(&step, node, *task, Frame::Exit(exit))).await;
                merge_exit(&mut end, EXEC_FAILED, 0);
            }
        }
    }
    drop(tx);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut warn = warning(&job, crate::supervisor::now_ms());
    loop {
        let sigkill = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let warned = async {
            match warn {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = warned => {
                if let Some((_, sig)) = warn.take() {
                    tracing::info!(job = step.job_id, step = step.step_id, signal = %sig, "time limit warning");
                    signal_all(&children, sig);
                }
            }
            done = waits.join_next() => {
                let Some(done) = done else { break };
                let (code, signal) = done.unwrap_or((1, 0));
                merge_exit(&mut end, code, signal);
                if (code != 0 || signal != 0) && spec.kill_on_bad_exit && kill_at.is_none() {
                    signal_all(&children, Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + steps.kill_grace);
                }
            }
            changed = kill_rx.changed(), if kill_at.is_none() => {
                if changed.is_ok() && *kill_rx.borrow() {
                    signal_all(&children, Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + steps.kill_grace);
                }
            }
            _ = sigkill => {
                signal_all(&children, Signal::SIGKILL);
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
        }
    }
    // Every frame is queued; let the stream drain to srun (bounded: srun may be gone).
    let _ = tokio::time::timeout(Duration::from_secs(10), stream).await;
    end
}

/// `--signal=SIG@SECS` (without `B:`): when, by this agent's clock, and which signal the
/// step's tasks get SECS before the job's time limit (counted from its start as berthd
/// recorded it). `None` without a signal or a time limit, or with `B:` (the batch shell
/// alone gets it: see the supervisor).
pub fn warning(job: &pb::Job, now_ms: u64) -> Option<(tokio::time::Instant, Signal)> {
    let spec = job.spec.as_ref()?;
    if spec.signal_secs == 0 || spec.time_limit_secs == 0 || spec.signal_batch_only {
        return None;
    }
    let sig = Signal::try_from(spec.signal).unwrap_or(Signal::SIGTERM);
    let at_ms = job
        .start_time_ms
        .saturating_add(spec.time_limit_secs.saturating_mul(1000))
        .saturating_sub(u64::from(spec.signal_secs) * 1000);
    let wait = Duration::from_millis(at_ms.saturating_sub(now_ms));
    Some((tokio::time::Instant::now() + wait, sig))
}

/// Keeps the worst exit (a signal counts as 128 + its number, as srun ranks them).
fn merge_exit(end: &mut pb::StepEnd, code: i32, signal: i32) {
    let rank = |c: i32, s: i32| if s != 0 { 128 + s } else { c };
    if rank(code, signal) > rank(end.exit_code, end.signal) {
        end.exit_code = code;
        end.signal = signal;
    }
}

fn signal_all(pids: &[i32], sig: Signal) {
    for pid in pids.iter().filter(|p| **p > 0) {
        let group = Pid::from_raw(-pid);
        let _ = kill(group, Signal::SIGCONT);
        let _ = kill(group, sig);
    }
}

fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> (i32, i32) {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, 0),
            (None, Some(sig)) => (0, sig),
            (None, None) => (1, 0),
        },
        Err(_) => (1, 0),
    }
}

/// srun's I/O listener at `addr`, over TLS trusting only `cert` (the PEM srun put in the
/// step): output reaches the srun that asked for it, encrypted.
async fn connect_io(
    addr: &str,
    cert: &str,
) -> Result<StepIoServiceClient<tonic::transport::Channel>, String> {
    if cert.is_empty() {
        return Err("the step names no certificate for srun's I/O listener".into());
    }
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert))
        .domain_name(host);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(IO_CONNECT_WAIT);
    let channel = tokio::time::timeout(IO_CONNECT_WAIT, endpoint.connect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(StepIoServiceClient::new(channel))
}

/// Forwards one output pipe of `task` to srun, chunk by chunk, until it closes.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    tx: mpsc::Sender<pb::StepIo>,
    step: &pb::Step,
    node: &str,
    task: u32,
    stdout: bool,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let bytes = buf[..n].to_vec();
                let f = if stdout {
                    Frame::Stdout(bytes)
                } else {
                    Frame::Stderr(bytes)
                };
                // srun gone: keep reading, so the task never blocks on a full pipe.
                let _ = tx.send(frame(step, node, task, f)).await;
            }
        }
    }
}

/// Starts one task: its own process group, stdin from /dev/null, output piped, killed if
/// the agent dies, bound to `cpus` (unless empty), run as the job's (verified) user and
/// groups when the agent is root.
fn spawn_task(
    spec: &pb::StepSpec,
    env: BTreeMap<String, String>,
    run_as: &berth_auth::seal::RunAs,
    cpus: &[u32],
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if !spec.work_dir.is_empty() {
        cmd.current_dir(&spec.work_dir);
    }
    let as_user = (nix::unistd::geteuid().is_root() && run_as.uid != 0).then(|| {
        let mut gids: Vec<libc::gid_t> = run_as.gids.clone();
        gids.push(run_as.gid);
        (run_as.uid, run_as.gid, gids)
    });
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes bits below its size
    // (ids are below berth_policies::cpu_bind::MAX_CPUS, glibc's CPU_SETSIZE).
    let affinity = (!cpus.is_empty()).then(|| {
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &id in cpus {
            unsafe { libc::CPU_SET(id as usize, &mut set) };
        }
        set
    });
    // SAFETY: only async-signal-safe calls (prctl, sched_setaffinity, setgroups, setgid,
    // setuid) on data prepared before the fork, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(set) = &affinity {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, gid, gids)) = &as_user {
                if libc::setgroups(gids.len(), gids.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The environment of task `task` (the `local`-th on this node) of `step`: srun's exported
/// environment, the job's variables as seen on this node, the step's `SLURM_*` variables,
/// and the task's share of the node's GPUs.
pub fn task_env(
    job: &pb::Job,
    step: &pb::Step,
    here: &pb::StepNode,
    local: usize,
    task: u32,
) -> BTreeMap<String, String> {
    let spec = step.spec.clone().unwrap_or_default();
    let mut job = job.clone();
    if let Some(s) = job.spec.as_mut() {
        s.env = spec.env.clone();
    }
    let mut env = job_env::build(&job, &here.node, &[]);
    env.remove("ENVIRONMENT"); // BATCH is the batch script's alone
    let nodes: Vec<&str> = step.nodes.iter().map(|n| n.node.as_str()).collect();
    let per_node: Vec<u32> = step.nodes.iter().map(|n| n.task_ids.len() as u32).collect();
    let per_node = job_env::tasks_per_node(&per_node);
    let gtids: Vec<String> = here.task_ids.iter().map(|t| t.to_string()).collect();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("SLURM_STEP_ID", step.step_id.to_string());
    set("SLURM_STEPID", step.step_id.to_string());
    set("SLURM_PROCID", task.to_string());
    set("SLURM_LOCALID", local.to_string());
    set("SLURM_NODEID", here.node_index.to_string());
    set("SLURM_NTASKS", spec.ntasks.to_string());
    set("SLURM_NPROCS", spec.ntasks.to_string());
    set("SLURM_STEP_NUM_TASKS", spec.ntasks.to_string());
    set("SLURM_STEP_NUM_NODES", nodes.len().to_string());
    set("SLURM_STEP_NODELIST", nodes.join(","));
    set("SLURM_STEP_TASKS_PER_NODE", per_node.clone());
    set("SLURM_TASKS_PER_NODE", per_node);
    set("SLURM_GTIDS", gtids.join(","));
    set("SLURM_CPUS_PER_TASK", spec.cpus_per_task.max(1).to_string());
    let gpus = task_gpus(here, spec.gpus_per_task, local);
    let alloc = job.allocations.iter().find(|a| a.node == here.node);
    let indices: Vec<String> = gpus
        .iter()
        .filter_map(|u| {
            let a = alloc?;
            let i = a.gpu_uuids.iter().position(|g| g == u)?;
            a.gpu_indices.get(i).map(|x| x.to_string())
        })
        .collect();
    let uuids = gpus.join(",");
    set("SLURM_STEP_GPUS", indices.join(","));
    set("GPU_DEVICE_ORDINAL", indices.join(","));
    set("SLURM_GPUS_ON_NODE", gpus.len().to_string());
    for (k, v) in job_env::visible_devices(uuids) {
        set(k, v);
    }
    env
}

/// The MPS variables of a task that sees `gpus` on `node`: the job's share limits over
/// those GPUs, in the task's `CUDA_VISIBLE_DEVICES` order, and the daemon of its first
/// GPU ([`job_env::mps`], [`job_env::mps_dirs`], as for the batch script).
pub fn task_mps(
    job: &pb::Job,
    node: &str,
    gpus: &[String],
    mps: &StepMps,
) -> Vec<(String, String)> {
    // The job as the task sees it: only this node's allocation, with the task's GPUs (the
    // rest of the job, its script included, is not needed to compute the variables).
    let seen = pb::Job {
        allocations: job
            .allocations
            .iter()
            .filter(|a| a.node == node)
            .map(|a| pb::Allocation {
                gpu_uuids: gpus.to_vec(),
                ..a.clone()
            })
            .collect(),
        ..Default::default()
    };
    let mut out = job_env::mps(&seen, node, mps.replicas, &mps.memory_mb);
    out.extend(job_env::mps_dirs(&seen, node, &mps.dirs));
    out
}

/// The GPUs task number `local` on its node sees: its `per_task` slice of the step's GPUs
/// there, or all of them when `per_task` is 0.
pub fn task_gpus(here: &pb::StepNode, per_task: u32, local: usize) -> Vec<String> {
    if per_task == 0 {
        return here.gpu_uuids.clone();
    }
    let start = local * per_task as usize;
    here.gpu_uuids
        .iter()
        .skip(start)
        .take(per_task as usize)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> (pb::Job, pb::Step) {
        let job = pb::Job {
            id: 12,
            spec: Some(pb::JobSpec {
                ntasks: 4,
                ..Default::default()
            }),
            allocations: vec![
                pb::Allocation {
                    node: "n1".into(),
                    gpu_uuids: vec!["G0".into(), "G1".into()],
                    gpu_indices: vec![0, 1],
                    cpus: 2,
                    ..Default::default()
                },
                pb::Allocation {
                    node: "n2".into(),
                    gpu_uuids: vec!["H0".into(), "H1".into()],
                    gpu_indices: vec![4, 5],
                    cpus: 2,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let step = pb::Step {
            job_id: 12,
            step_id: 3,
            spec: Some(pb::StepSpec {
                ntasks: 4,
                gpus_per_task: 1,
                argv: vec!["true".into()],
                env: [("HOME".to_string(), "/h".to_string())].into(),
                ..Default::default()
            }),
            nodes: vec![
                pb::StepNode {
                    node: "n1".into(),
                    task_ids: vec![0, 1],
                    node_index: 0,
                    gpu_uuids: vec!["G0".into(), "G1".into()],
                },
                pb::StepNode {
                    node: "n2".into(),
                    task_ids: vec![2, 3],
                    node_index: 1,
                    gpu_uuids: vec!["H0".into(), "H1".into()],
                },
            ],
            ..Default::default()
        };
        (job, step)
    }

    #[test]
    fn on_an_mps_node_each_task_runs_under_the_jobs_share_of_its_own_gpus() {
        let (job, step) = step();
        let mps = StepMps {
            replicas: 4,
            memory_mb: [("H0".to_string(), 80_000), ("H1".to_string(), 40_000)].into(),
            dirs: [(
                "H1".to_string(),
                crate::mps::MpsDirs {
                    pipe: "/run/mps/H1/pipe".into(),
                    log: "/run/mps/H1/log".into(),
                },
            )]
            .into(),
        };
        // Task 3 is n2's second task: with one GPU per task it sees H1 alone, as ordinal 0.
        let gpus = task_gpus(&step.nodes[1], 1, 1);
        let env: BTreeMap<String, String> = task_mps(&job, "n2", &gpus, &mps).into_iter().collect();
        assert_eq!(env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10000M");
        assert_eq!(env["CUDA_MPS_PIPE_DIRECTORY"], "/run/mps/H1/pipe");
        // Sharing the node's GPUs (no --gpus-per-task): both, in allocation order; H0 has
        // no daemon here, so no pipe is named.
        let all = task_gpus(&step.nodes[1], 0, 1);
        let env: BTreeMap<String, String> = task_mps(&job, "n2", &all, &mps).into_iter().collect();
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=20000M,1=10000M");
        assert!(!env.contains_key("CUDA_MPS_PIPE_DIRECTORY"));
    }

    #[test]
    fn each_task_sees_its_ids_and_only_its_gpus() {
        let (job, step) = step();
        let env = task_env(&job, &step, &step.nodes[1], 1, 3);
        let want = [
            ("SLURM_STEP_ID", "3"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_STEP_NODELIST", "n1,n2"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
            ("SLURMD_NODENAME", "n2"),
            ("SLURM_JOB_ID", "12"),
            ("CUDA_VISIBLE_DEVICES", "H1"),
            ("SLURM_STEP_GPUS", "5"),
            ("HOME", "/h"),
        ];
        for (k, v) in want {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(
            !env.contains_key("ENVIRONMENT"),
            "ENVIRONMENT=BATCH is the batch script's"
        );
    }

    #[test]
    fn without_gpus_per_task_every_task_shares_the_nodes_gpus() {
        let (_, step) = step();
        assert_eq!(task_gpus(&step.nodes[0], 0, 1), ["G0", "G1"]);
        assert_eq!(task_gpus(&step.nodes[0], 1, 1), ["G1"]);
    }

    #[test]
    fn the_worst_exit_wins_and_signals_rank_highest() {
        let mut end = pb::StepEnd::default();
        merge_exit(&mut end, 3, 0);
        merge_exit(&mut end, 1, 0);
        assert_eq!((end.exit_code, end.signal), (3, 0));
        merge_exit(&mut end, 0, 9);
        assert_eq!((end.exit_code, end.signal), (0, 9));
    }
}
