//! srun's side of task I/O: the listener each node's agent streams its tasks' output and
//! exits to, and the sink that writes them to the terminal (labelled with `-l`) or to the
//! `-o`/`-e` files, and collects the exits.
//!
//! srun listens and agents connect, as slurmstepd connects back to srun: the output never
//! passes through berthd (the Raft leader's time is the whole cluster's), and nodes need no
//! listening port of their own.

use berth_proto::v1::{self as pb, step_io::Frame, step_io_service_server as server};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

/// Serves `Attach`: checks each stream's first frame (the step and its key), then passes
/// every frame on.
pub struct IoService {
    /// Frames for the sink.
    pub frames: mpsc::Sender<pb::StepIo>,
    /// The key agents must present.
    pub key: String,
}

#[tonic::async_trait]
impl server::StepIoService for IoService {
    async fn attach(
        &self,
        req: Request<Streaming<pb::StepIo>>,
    ) -> Result<Response<pb::StepIoDone>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty I/O stream"))??;
        if first.io_key != self.key {
            return Err(Status::permission_denied("wrong step I/O key"));
        }
        while let Some(frame) = inbound.next().await {
            let frame = frame?;
            if self.frames.send(frame).await.is_err() {
                break; // srun is finishing: the rest is dropped
            }
        }
        Ok(Response::new(pb::StepIoDone {}))
    }
}

/// Where one stream (stdout or stderr) goes.
enum Target {
    Terminal {
        stderr: bool,
    },
    Files {
        pattern: String,
        open: HashMap<PathBuf, std::fs::File>,
    },
}

/// What `%` patterns in `-o`/`-e` expand from.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Job id (%j).
    pub job_id: u64,
    /// Step id (%s).
    pub step_id: u32,
    /// Node name → index in the step (%N, %n).
    pub node_index: BTreeMap<String, u32>,
    /// Array job id and task index (%A, %a) when the job is an array task.
    pub array: Option<(u64, u32)>,
    /// `--open-mode=append` (or the job's `SLURM_OPEN_MODE`): files are appended to, so a
    /// step writing into its batch job's output file keeps what is there.
    pub append: bool,
}

/// Expands `pattern` for `task` on `node`: %t task, %n node index, %N node name, %s step,
/// %j job, %A array job (the job outside arrays), %a array task, %u user, %% a percent sign; a width (`%3t`) pads with zeros, as Slurm does.
///
/// # Errors
/// An unknown `%` letter, named.
pub fn expand(pattern: &str, names: &Names, node: &str, task: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        let w: usize = width.parse().unwrap_or(0);
        let num = |n: u64| format!("{n:0w$}");
        match chars.next() {
            Some('%') => out.push('%'),
            Some('t') => out.push_str(&num(u64::from(task))),
            Some('n') => out.push_str(&num(u64::from(
                names.node_index.get(node).copied().unwrap_or(0),
            ))),
            Some('N') => out.push_str(node),
            Some('s') => out.push_str(&num(u64::from(names.step_id))),
            Some('j') | Some('J') => out.push_str(&num(names.job_id)),
            Some('A') => out.push_str(&num(names.array.map_or(names.job_id, |a| a.0))),
            // Slurm's NO_VAL - 1 outside arrays, as sbatch's %a.
            Some('a') => out.push_str(&num(u64::from(names.array.map_or(4_294_967_294, |a| a.1)))),
            Some('u') => out.push_str(&std::env::var("USER").unwrap_or_default()),
            Some(other) => return Err(format!("unknown %{other} in output pattern {pattern:?}")),
            None => return Err(format!("output pattern {pattern:?} ends in %")),
        }
    }
    Ok(out)
}

/// Longest piece of one line held back waiting for its newline.
pub const LINE_MAX: usize = 64 * 1024;

/// Writes frames where they belong and records each task's exit.
pub struct Sink {
    label: bool,
    /// `-u`: chunks are written as they arrive; otherwise whole lines, so the lines of
    /// tasks writing at once never interleave mid-line (Slurm's default too).
    unbuffered: bool,
    out: Target,
    err: Target,
    names: Names,
    /// Part of a line per (task, stderr), held until its newline (or [`LINE_MAX`]).
    partial: HashMap<(u32, bool), Vec<u8>>,
    /// Exit of each task that ended: (node, exit code, signal).
    pub exits: BTreeMap<u32, (String, i32, i32)>,
}

impl Sink {
    /// A sink for `-l` (`label`) and the `-o`/`-e` patterns (`None`: the terminal; `-e`
    /// defaults to `-o`, as in Slurm).
    pub fn new(
        label: bool,
        unbuffered: bool,
        output: Option<String>,
        error: Option<String>,
        names: Names,
    ) -> Sink {
        let error = error.or_else(|| output.clone());
        let target = |p: Option<String>, stderr| match p {
            Some(pattern) => Target::Files {
                pattern,
                open: HashMap::new(),
            },
            None => Target::Terminal { stderr },
        };
        Sink {
            label,
            unbuffered,
            out: target(output, false),
            err: target(error, true),
            names,
            partial: HashMap::new(),
            exits: BTreeMap::new(),
        }
    }

    /// Takes one frame.
    ///
    /// # Errors
    /// An output file that cannot be opened or written.
    pub fn take(&mut self, f: pb::StepIo) -> Result<(), String> {
        match f.frame {
            Some(Frame::Stdout(b)) => self.write(&f.node, f.task_id, false, &b),
            Some(Frame::Stderr(b)) => self.write(&f.node, f.task_id, true, &b),
            Some(Frame::Exit(e)) => {
                self.flush_task(&f.node, f.task_id)?;
                self.exits
                    .insert(f.task_id, (f.node, e.exit_code, e.signal));
                Ok(())
            }
            Some(Frame::LaunchError(why)) => {
                eprintln!("srun: error: {}: task {}: {why}", f.node, f.task_id);
                self.exits.insert(f.task_id, (f.node, 1, 0));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn write(&mut self, node: &str, task: u32, stderr: bool, bytes: &[u8]) -> Result<(), String> {
        if self.unbuffered && !self.label {
            return self.emit(node, task, stderr, bytes);
        }
        let buf = self.partial.entry((task, stderr)).or_default();
        buf.extend_from_slice(bytes);
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            Some(last_nl) => last_nl + 1,
            // A line longer than LINE_MAX is written in pieces: memory stays bounded.
            None if buf.len() >= LINE_MAX => buf.len(),
            None => return Ok(()),
        };
        let rest = buf.split_off(cut);
        let lines = std::mem::replace(buf, rest);
        let labelled = self.labelled(task, &lines);
        self.emit(node, task, stderr, &labelled)
    }

    /// `lines` with each line prefixed by `task: ` under `-l`.
    fn labelled(&self, task: u32, lines: &[u8]) -> Vec<u8> {
        if !self.label {
            return lines.to_vec();
        }
        let mut labelled = Vec::with_capacity(lines.len() + 8);
        for line in lines.split_inclusive(|b| *b == b'\n') {
            labelled.extend_from_slice(format!("{task}: ").as_bytes());
            labelled.extend_from_slice(line);
        }
        labelled
    }

    /// Writes what is left of a task's last line (no newline at its end).
    fn flush_task(&mut self, node: &str, task: u32) -> Result<(), String> {
        for stderr in [false, true] {
            if let Some(rest) = self
                .partial
                .remove(&(task, stderr))
                .filter(|r| !r.is_empty())
            {
                let labelled = self.labelled(task, &rest);
                self.emit(node, task, stderr, &labelled)?;
            }
        }
        Ok(())
    }

    fn emit(&mut self, node: &str, task: u32, stderr: bool, bytes: &[u8]) -> Result<(), String> {
        let names = self.names.clone();
        let target = if stderr { &mut self.err } else { &mut self.out };
        match target {
            Target::Terminal { stderr: true } => {
                let _ = std::io::stderr().write_all(bytes);
                Ok(())
            }
            Target::Terminal { stderr: false } => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes).and_then(|_| out.flush());
                Ok(())
            }
            Target::Files { pattern, open } => {
                let path = PathBuf::from(expand(pattern, &names, node, task)?);
                if !open.contains_key(&path) {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .append(names.append)
                        .truncate(!names.append)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    open.insert(path.clone(), f);
                }
                let f = open.get_mut(&path).expect("opened above");
                f.write_all(bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

/// The words srun prints for a task killed by `signal` (strsignal's).
pub fn signal_words(signal: i32) -> String {
    match signal {
        1 => "Hangup".into(),
        2 => "Interrupt".into(),
        6 => "Aborted".into(),
        9 => "Killed".into(),
        11 => "Segmentation fault".into(),
        15 => "Terminated".into(),
        n => format!("Signal {n}"),
    }
}
