//! sbatch's parse tests: option forms, defaults, errors, directives, environment, GPU
//! requests, each as a table checked against Slurm's behaviour.

use super::directives::split_words;
use super::options::{ENV_OPTIONS, SBATCH, SUPPORTED, UNSUPPORTED};
use super::*;
use crate::opt::getopt;
use crate::opt::OptError;
use berth_proto::v1::DependencyCondition;

fn lookup_long(name: &str) -> Result<&'static crate::opt::table::OptionSpec<opts::Opts>, OptError> {
    getopt::lookup_long(&SBATCH, name)
}

fn lookup_short(
    letter: char,
) -> Result<&'static crate::opt::table::OptionSpec<opts::Opts>, OptError> {
    getopt::lookup_short(&SBATCH, letter)
}

#[test]
fn dependency_specs_parse_and_bad_ones_fail() {
    let c = |kind: &str, job_id| DependencyCondition {
        kind: kind.into(),
        job_id,
        ..Default::default()
    };
    // (value, Ok(conditions) or Err(part of the message))
    let cases: Vec<(&str, Result<Vec<DependencyCondition>, &str>)> = vec![
        ("afterok:12", Ok(vec![c("afterok", 12)])),
        (
            "afterok:12:13,afterany:14",
            Ok(vec![c("afterok", 12), c("afterok", 13), c("afterany", 14)]),
        ),
        (
            "after:1,afternotok:2",
            Ok(vec![c("after", 1), c("afternotok", 2)]),
        ),
        ("", Err("empty")),
        ("afterok", Err("is not TYPE:JOBID")),
        ("afterok:", Err("\"\" is not a job id")),
        ("afterok:0", Err("\"0\" is not a job id")),
        ("afterok:x", Err("\"x\" is not a job id")),
        ("afterok:-3", Err("is not a job id")),
        ("afterok:1+10", Err("+TIME")),
        ("afterok:1?afterany:2", Err("'?'")),
        ("singleton", Ok(vec![c("singleton", 0)])),
        (
            "afterok:12_3:13,aftercorr:14",
            Ok(vec![
                DependencyCondition {
                    kind: "afterok".into(),
                    job_id: 12,
                    array_task_id: Some(3),
                },
                c("afterok", 13),
                c("aftercorr", 14),
            ]),
        ),
        ("afterok:12_x", Err("the task must be one index")),
        ("afterok:12_[1-3]", Err("the task must be one index")),
        ("aftercorr:12_3", Err("names a whole array")),
        ("afterwards:1", Err("type \"afterwards\" is not supported")),
        ("afterok:1,", Err("is not TYPE:JOBID")),
    ];
    assert_cases(cases, parse_dependency);
    let many = format!("afterok:{}", vec!["1"; 65].join(":"));
    assert!(parse_dependency(&many).unwrap_err().contains("at most 64"));
}

#[test]
fn signal_specs_parse_and_bad_ones_fail() {
    let ok = |n, secs, b| {
        Ok(SignalSpec {
            number: n,
            secs,
            batch_only: b,
        })
    };
    let cases: Vec<(&str, Result<SignalSpec, &str>)> = vec![
        ("USR1@120", ok(libc::SIGUSR1, 120, false)),
        ("B:SIGUSR2@30", ok(libc::SIGUSR2, 30, true)),
        ("10", ok(10, 60, false)),
        ("term", ok(libc::SIGTERM, 60, false)),
        ("R:USR1@10", Err("reservation")),
        ("X:USR1", Err("unknown flag")),
        ("USR3@10", Err("unknown signal")),
        ("99", Err("out of range")),
        ("USR1@-5", Err("not a number")),
        ("USR1@70000", Err("not a number")),
        ("", Err("unknown signal")),
    ];
    assert_cases(cases, parse_signal);
}
use std::fs;

/// A temp dir with scripts in it, and a context rooted there.
struct Fixture {
    dir: tempfile::TempDir,
    ctx: SubmitContext,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = [("HOME", "/home/alice"), ("PATH", "/usr/bin"), ("LANG", "C")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ctx = SubmitContext {
            cwd: dir.path().to_path_buf(),
            env,
            user: "alice".to_string(),
            uid: 1000,
            gid: 100,
            host: "login1".to_string(),
        };
        Fixture { dir, ctx }
    }

    fn script(&self, name: &str, body: &str) -> &Self {
        fs::write(self.dir.path().join(name), body).expect("write script");
        self
    }

    fn run(&self, args: &[&str]) -> Result<Submission, SbatchError> {
        self.run_stdin(
            args,
            Err(io::Error::other("stdin not expected in this test")),
        )
    }

    fn run_stdin(
        &self,
        args: &[&str],
        stdin: io::Result<String>,
    ) -> Result<Submission, SbatchError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut stdin = Some(stdin.map(String::into_bytes));
        let mut read = || stdin.take().expect("stdin read once");
        parse_submission(&args, &self.ctx, &mut read)
    }

    /// Each `(args, want)` of `bad`, with `job.sh` appended, is refused with an error
    /// containing `want`.
    fn assert_refused_with_job_sh(&self, bad: &[(&[&str], &str)]) {
        for (i, (args, want)) in bad.iter().enumerate() {
            let mut all = args.to_vec();
            all.push("job.sh");
            let got = self
                .run(&all)
                .map(|s| summary(&s.spec))
                .map_err(|e| e.to_string());
            match &got {
                Err(msg) if msg.contains(want) => {}
                _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
            }
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

/// Each `(input, want)`: `parse(input)` gives the `Ok` value, or an error containing
/// the `Err` text.
fn assert_cases<T: PartialEq + std::fmt::Debug>(
    cases: Vec<(&str, Result<T, &str>)>,
    parse: impl Fn(&str) -> Result<T, String>,
) {
    for (i, (v, want)) in cases.into_iter().enumerate() {
        match (parse(v), want) {
            (Ok(got), Ok(w)) if got == w => {}
            (Err(got), Err(w)) if got.contains(w) => {}
            (got, w) => panic!("#{i} {v:?}: want {w:?}, got {got:?}"),
        }
    }
}

/// The resource and naming fields of a spec on one line, for table tests.
fn summary(spec: &JobSpec) -> String {
    format!(
        "name={} N={} n={} c={} t={} mem={} gpu={}:{} p={} A={} q={} H={} o={} e={} args={:?}",
        spec.name,
        spec.nodes,
        spec.ntasks,
        spec.cpus_per_task,
        spec.time_limit_secs,
        spec.mem_mb,
        spec.gpu_type,
        spec.gpus_per_node,
        spec.partition,
        spec.account,
        spec.qos,
        spec.hold,
        spec.stdout,
        spec.stderr,
        spec.args
    )
}

const DEFAULTS: &str = "name=job.sh N=1 n=1 c=1 t=0 mem=0 gpu=:0 p= A= q= H=false o= e= args=[]";

#[test]
fn option_forms() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\necho hi\n");
    let d = |over: &[&str]| -> String {
        // DEFAULTS with some `key=value` fields replaced.
        let mut fields: Vec<String> = DEFAULTS.split(' ').map(str::to_string).collect();
        for o in over {
            let key = o.split('=').next().unwrap_or_default();
            let slot = fields
                .iter_mut()
                .find(|f| f.starts_with(&format!("{key}=")))
                .expect("known field");
            *slot = o.to_string();
        }
        fields.join(" ")
    };
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["job.sh"], d(&[])),
        (vec!["-N2", "job.sh"], d(&["N=2", "n=2"])),
        (vec!["-N", "2", "job.sh"], d(&["N=2", "n=2"])),
        (vec!["--nodes=2", "job.sh"], d(&["N=2", "n=2"])),
        (vec!["--nodes", "2", "job.sh"], d(&["N=2", "n=2"])),
        (vec!["--nodes=3-3", "job.sh"], d(&["N=3", "n=3"])),
        (vec!["-N2", "-n8", "job.sh"], d(&["N=2", "n=8"])),
        (vec!["-J", "name", "job.sh"], d(&["name=name"])),
        (vec!["-Jname", "job.sh"], d(&["name=name"])),
        (vec!["--job-name=a b", "job.sh"], d(&["name=a b"])),
        (vec!["--job=x", "job.sh"], d(&["name=x"])),
        (vec!["--part=gpu", "job.sh"], d(&["p=gpu"])),
        (vec!["-t", "1:00:00", "job.sh"], d(&["t=3600"])),
        (vec!["--time=2-0", "job.sh"], d(&["t=172800"])),
        (vec!["-t", "UNLIMITED", "job.sh"], d(&["t=0"])),
        (vec!["--mem=16G", "job.sh"], d(&["mem=16384"])),
        (vec!["-c", "4", "job.sh"], d(&["c=4"])),
        (vec!["--cpus-per-task=4", "job.sh"], d(&["c=4"])),
        (
            vec!["-p", "gpu", "-A", "proj", "-q", "high", "job.sh"],
            d(&["p=gpu", "A=proj", "q=high"]),
        ),
        (vec!["-H", "job.sh"], d(&["H=true"])),
        (vec!["--hold", "job.sh"], d(&["H=true"])),
        (vec!["-Hp", "gpu", "job.sh"], d(&["H=true", "p=gpu"])),
        (
            vec!["-o", "out-%j.txt", "-e", "err-%j.txt", "job.sh"],
            d(&["o=out-%j.txt", "e=err-%j.txt"]),
        ),
        (
            vec!["job.sh", "-N", "2", "--x"],
            d(&["args=[\"-N\", \"2\", \"--x\"]"]),
        ),
        (vec!["--", "job.sh", "a"], d(&["args=[\"a\"]"])),
        (vec!["-N1", "-N", "3", "job.sh"], d(&["N=3", "n=3"])),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let got = f.run(args).map(|s| summary(&s.spec));
        if got.as_ref().ok() != Some(want) {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
}

#[test]
fn spec_fields_and_defaults() {
    let f = Fixture::new();
    fs::create_dir(f.dir.path().join("sub")).expect("mkdir");
    f.script("sub/job.sh", "#!/bin/bash\nexit 0\n");
    let sub = f
        .run(&["--parsable", "-D", "work", "./sub/job.sh", "x"])
        .expect("parses");
    let cwd = f.ctx.cwd.to_string_lossy().into_owned();
    let spec = &sub.spec;
    let got = (
        sub.parsable,
        spec.name.as_str(),
        spec.command.clone(),
        spec.work_dir.clone(),
        spec.submit_dir.clone(),
        spec.script.as_str(),
        spec.export_all,
        spec.env.len(),
        (
            spec.user.as_str(),
            spec.uid,
            spec.gid,
            spec.submit_host.as_str(),
        ),
    );
    let want = (
        true,
        "job.sh",
        f.path("sub/job.sh"),
        format!("{cwd}/work"),
        cwd.clone(),
        "#!/bin/bash\nexit 0\n",
        true,
        3,
        ("alice", 1000, 100, "login1"),
    );
    if got != want {
        panic!("want {want:?}, got {got:?}");
    }
    let abs = f.run(&["-D", "/abs/dir", "sub/job.sh"]).expect("parses");
    assert_eq!(abs.spec.work_dir, "/abs/dir");
    assert!(!abs.parsable);
}

/// Command lines and the error each must give (a table, so kept out of the test body).
const OPTION_ERRORS: &[(&[&str], &str)] = &[
    (&["--foo", "job.sh"], "unrecognized option '--foo'"),
    (&["-z", "job.sh"], "unrecognized option '-z'"),
    (
        &["--array=0-", "job.sh"],
        "Invalid job array specification '0-': 0-: the range has no last index",
    ),
    (
        &["-a", "5-1", "job.sh"],
        "Invalid job array specification '5-1': 5-1: 1 is below 5",
    ),
    (
        &["--array=1-%2", "job.sh"],
        "Invalid job array specification '1-%2'",
    ),
    (
        &["--dependency=afterok:1?afterany:2", "job.sh"],
        "Invalid dependency specification 'afterok:1?afterany:2': '?'",
    ),
    (
        &["-d", "afterburstbuffer:1", "job.sh"],
        "dependency type \"afterburstbuffer\" is not supported",
    ),
    // Bad values of the node-selection options, with Slurm 22.05's words.
    (
        &["--mail-type=bogus", "job.sh"],
        "Invalid --mail-type specification",
    ),
    (
        &["--exclusive=bogus", "job.sh"],
        "Invalid --exclusive specification",
    ),
    (
        &["--constraint=a&", "job.sh"],
        "Invalid feature specification",
    ),
    (&["-C", "[a|b", "job.sh"], "Invalid feature specification"),
    (
        &["--nodes=8-2", "job.sh"],
        "Maximum node count 2 is less than minimum node count 8",
    ),
    (
        &["--nodes=1,2", "job.sh"],
        "\"1,2\" is not a valid node count",
    ),
    (
        &["--mem-per-cpu=-1", "job.sh"],
        "Invalid --mem-per-cpu specification",
    ),
    (&["--mem=16GiB", "job.sh"], "invalid --mem value '16GiB'"),
    (
        &["--exclude=node[3-1]", "job.sh"],
        "Invalid node name specified",
    ),
    (&["-w", "n[1-", "job.sh"], "Invalid node name specified"),
    (
        &["-w", "n[1-2]", "-N", "1", "job.sh"],
        "invalid number of nodes (-N 2-1)",
    ),
    (&["--mincpus=0", "job.sh"], "Invalid --mincpus value \"0\""),
    (
        &["--ntasks-per-node=x", "job.sh"],
        "Invalid numeric value \"x\" for --ntasks-per-node",
    ),
    (
        &["--tasks-per-node=0", "job.sh"],
        "Invalid --tasks-per-node value \"0\"",
    ),
    (
        &["--cpus-per-gpu=0", "-G", "1", "job.sh"],
        "Invalid --cpus-per-gpu value \"0\"",
    ),
    (
        &["-L", "matlab:x", "job.sh"],
        "Invalid license specification",
    ),
    (
        &["--begin=bogus", "job.sh"],
        "Invalid time specification (pos=0): bogus",
    ),
    (&["--deadline=now+", "job.sh"], "Invalid time specification"),
    (
        &["--hint=bogus", "job.sh"],
        "unrecognized --hint argument \"bogus\", see --hint=help",
    ),
    (
        &["--distribution=bogus", "job.sh"],
        "Invalid --distribution specification",
    ),
    (
        &["--gres-flags=bogus", "job.sh"],
        "Invalid --gres-flags specification",
    ),
    (
        &["--mem-per-gpu=10G", "job.sh"],
        "Requested mem_per_tres=gres:gpu:10240 but did not request any GPU.",
    ),
    (
        &["--mem-per-cpu=4G", "--mem=8G", "job.sh"],
        "--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive.",
    ),
    (
        &["--gpus-per-socket=1", "job.sh"],
        "option --gpus-per-socket is not supported",
    ),
    (&["--reboot", "job.sh"], "option --reboot is not supported"),
    (&["--wait", "job.sh"], "option --wait is not supported"),
    (
        &["--mail", "job.sh"],
        "option '--mail' is ambiguous; possibilities: '--mail-type' '--mail-user'",
    ),
    (&["--gp=1", "job.sh"], "ambiguous"),
    (&["--time"], "option '--time' requires an argument"),
    (&["-t"], "option '-t' requires an argument"),
    (
        &["--hold=yes", "job.sh"],
        "option '--hold' doesn't allow an argument",
    ),
    (
        &["--time=1:2:3:4", "job.sh"],
        "Invalid --time specification: 1:2:3:4",
    ),
    (
        &["-t", "abc", "job.sh"],
        "Invalid --time specification: abc",
    ),
    (&["--mem=12X", "job.sh"], "invalid --mem value '12X'"),
    (
        &["--nodes=abc", "job.sh"],
        "Invalid numeric value \"abc\" for --nodes",
    ),
    (
        &["-N", "0", "job.sh"],
        "Invalid --nodes value \"0\": must be at least 1",
    ),
    (&["-N", "-2", "job.sh"], "\"-2\" is not a valid node count"),
    (&["-n", "0", "job.sh"], "Invalid --ntasks value \"0\""),
    (
        &["-c", "0", "job.sh"],
        "Invalid --cpus-per-task value \"0\"",
    ),
    (
        &["-c", "1.5", "job.sh"],
        "Invalid numeric value \"1.5\" for --cpus-per-task",
    ),
    (
        &["-N", "2", "-n", "1", "job.sh"],
        "--ntasks=1 is less than --nodes=2",
    ),
    (
        &["-p", "a,b", "job.sh"],
        "a list of partitions is not supported",
    ),
    (
        &["-J", "", "job.sh"],
        "invalid --job-name value '': must not be empty",
    ),
    (&["--help"], "help requested"),
    (&["-V"], "version requested"),
    (&["--", "--notascript"], "Unable to open file --notascript"),
];

/// Runs each case and checks that it fails with a message containing the expected text.
fn expect_errors(f: &Fixture, cases: &[(&[&str], &str)]) {
    for (i, (args, want)) in cases.iter().enumerate() {
        let got = f
            .run(args)
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        match &got {
            Err(msg) if msg.contains(want) => {}
            _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn option_errors_name_the_option() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\ntrue\n");
    expect_errors(&f, OPTION_ERRORS);
}

#[test]
fn wrap_and_stdin_scripts() {
    let f = Fixture::new();
    let wrap = f.run(&["--wrap", "echo hello"]).expect("wrap parses");
    let want = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\necho hello\n";
    assert_eq!(
        (
            wrap.spec.script.as_str(),
            wrap.spec.name.as_str(),
            wrap.spec.command.as_str()
        ),
        (want, "wrap", "(wrap)")
    );
    let stdin = f
        .run_stdin(
            &["-N", "1"],
            Ok("#!/bin/sh\n#SBATCH -J fromstdin\ntrue\n".into()),
        )
        .expect("stdin");
    assert_eq!(
        (stdin.spec.name.as_str(), stdin.spec.command.as_str()),
        ("fromstdin", "")
    );
    let stdin = f
        .run_stdin(&[], Ok("#!/bin/sh\ntrue\n".into()))
        .expect("stdin");
    assert_eq!(stdin.spec.name, "sbatch");
}

#[test]
fn a_script_that_is_not_utf8_travels_byte_for_byte() {
    let f = Fixture::new();
    // Latin-1 "café" in a comment and an echo: Slurm runs such scripts unchanged.
    let body: &[u8] = b"#!/bin/sh\n#SBATCH -J latin\n# caf\xe9\necho caf\xe9\n";
    fs::write(f.dir.path().join("latin.sh"), body).expect("write");
    let s = f.run(&["latin.sh"]).expect("submit");
    assert_eq!(s.spec.name, "latin");
    assert_eq!(s.spec.script_bytes, body);
    assert!(s.spec.script.contains("caf\u{fffd}"), "{}", s.spec.script);
    // A UTF-8 script carries no second copy.
    f.script("utf8.sh", "#!/bin/sh\necho café\n");
    assert!(f
        .run(&["utf8.sh"])
        .expect("submit")
        .spec
        .script_bytes
        .is_empty());
}

#[test]
fn bad_scripts() {
    let f = Fixture::new();
    f.script("empty.sh", "")
        .script("plain.sh", "echo hi\n")
        .script("dos.sh", "#!/bin/sh\r\necho hi\r\n");
    let cases: Vec<(Vec<&str>, io::Result<String>, &str)> = vec![
        (
            vec!["missing.sh"],
            Ok(String::new()),
            "Unable to open file missing.sh: ",
        ),
        (
            vec!["empty.sh"],
            Ok(String::new()),
            "Batch script is empty!",
        ),
        (
            vec!["plain.sh"],
            Ok(String::new()),
            "This does not look like a batch script.  The first line must start with #!",
        ),
        (vec!["dos.sh"], Ok(String::new()), "DOS line breaks"),
        (vec![], Ok(String::new()), "Batch script is empty!"),
        (
            vec![],
            Ok("echo hi\n".into()),
            "This does not look like a batch script",
        ),
        (
            vec![],
            Err(io::Error::other("closed")),
            "unable to read the batch script from standard input: closed",
        ),
        (
            vec!["--wrap", "true", "plain.sh"],
            Ok(String::new()),
            "--wrap cannot be combined with a script or script arguments (got 'plain.sh')",
        ),
        (
            vec!["--wrap="],
            Ok(String::new()),
            "invalid --wrap value '': must not be empty",
        ),
    ];
    for (i, (args, stdin, want)) in cases.into_iter().enumerate() {
        let got = f
            .run_stdin(&args, stdin)
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        match &got {
            Err(msg) if msg.contains(want) => {}
            _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn switches_and_gpus_per_task() {
    let f = Fixture::new();
    // (args, want (gpus per node, type, switches, wait secs) or an error fragment)
    type Want = Result<(u32, &'static str, u32, u64), &'static str>;
    let cases: Vec<(Vec<&str>, Want)> = vec![
        (vec!["-N2", "--switches=1"], Ok((0, "", 1, 300))),
        (vec!["-N2", "--switches=2@5:00"], Ok((0, "", 2, 300))),
        (vec!["-N2", "--switches=1@1"], Ok((0, "", 1, 60))),
        (
            vec!["-N2", "-n8", "--gpus-per-task=h100:2"],
            Ok((8, "h100", 0, 0)),
        ),
        (vec!["-n3", "--gpus-per-task=1"], Ok((3, "", 0, 0))),
        (vec!["--switches=0"], Err("at least 1")),
        (vec!["--switches=x"], Err("Invalid numeric value")),
        (vec!["--switches=1@"], Err("max-wait")),
        (vec!["--switches=1@-3"], Err("max-wait")),
        (vec!["--switches=@5"], Err("Invalid numeric value")),
        (
            vec!["-N2", "-n3", "--gpus-per-task=1"],
            Err("does not divide"),
        ),
        (
            vec!["--gpus-per-task=1", "--gres=gpu:1"],
            Err("cannot be combined"),
        ),
        (vec!["--gpus-per-task=h100:"], Err("Invalid numeric value")),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let mut all = vec!["--wrap", "true"];
        all.extend(args.iter());
        let got = f.run(&all).map(|s| {
            let sp = s.spec;
            (
                sp.gpus_per_node,
                sp.gpu_type,
                sp.switches,
                sp.switches_wait_secs,
            )
        });
        match (&got, want) {
            (Ok((g, t, sw, w)), Ok(want)) if (*g, t.as_str(), *sw, *w) == want => {}
            (Err(e), Err(frag)) if e.to_string().contains(frag) => {}
            _ => panic!("#{i} {args:?}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn directives() {
    let f = Fixture::new();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "#!/bin/sh\n#SBATCH -N 2\n#SBATCH --time=10\ntrue\n",
            &[],
            "N=2 n=2 c=1 t=600",
        ),
        // Blank lines and comments keep the header open; the first command ends it.
        (
            "#!/bin/sh\n\n# setup\n#SBATCH -J early\necho\n#SBATCH -J late\n",
            &[],
            "name=early N=1",
        ),
        (
            "#!/bin/sh\n#SBATCH --job-name=\"my job\" --partition 'gpu'\ntrue\n",
            &[],
            "name=my job N=1 n=1 c=1 t=0 mem=0 gpu=:0 p=gpu ",
        ),
        (
            "#!/bin/sh\n#SBATCH -J x # a comment\n#SBATCH -J y#z\n",
            &[],
            "name=y#z N=1",
        ),
        ("#!/bin/sh\n#SBATCH\t-N3\n", &[], "name=s.sh N=3"),
        // Plain comments that look like directives are comments.
        (
            "#!/bin/sh\n# SBATCH -N 9\n##SBATCH -N 9\n #SBATCH -N 9\n",
            &[],
            "name=s.sh N=1",
        ),
        // The command line wins over the script.
        (
            "#!/bin/sh\n#SBATCH -N 2 -J script\n",
            &["-N", "4"],
            "name=script N=4",
        ),
        (
            "#!/bin/sh\n#SBATCH -N 2\n#SBATCH -N 3\n",
            &[],
            "name=s.sh N=3",
        ),
    ];
    for (i, (script, args, want)) in cases.iter().enumerate() {
        f.script("s.sh", script);
        let mut all: Vec<&str> = args.to_vec();
        all.push("s.sh");
        let got = f.run(&all).map(|s| summary(&s.spec));
        match &got {
            Ok(summary) if summary.contains(want) => {}
            _ => panic!("#{i}: want ...{want:?}..., got {got:?}"),
        }
    }
    f.script("s.sh", "#!/bin/sh\ntrue\n#SBATCH -N 2\n");
    let warned = f.run(&["s.sh"]).expect("parses");
    assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
    assert!(
        warned.warnings[0].starts_with("line 3: #SBATCH after the first command is ignored"),
        "{:?}",
        warned.warnings
    );
}

#[test]
fn malformed_directives_name_the_line() {
    let f = Fixture::new();
    let cases: &[(&str, &str)] = &[
        (
            "#!/bin/sh\n#SBATCH\n",
            "line 2: malformed #SBATCH directive (no option given)",
        ),
        (
            "#!/bin/sh\n#SBATCH   # only a comment\n",
            "line 2: malformed #SBATCH directive (no option given)",
        ),
        (
            "#!/bin/sh\n\n#SBATCH foo\n",
            "line 3: malformed #SBATCH directive ('foo' is not an option): #SBATCH foo",
        ),
        (
            "#!/bin/sh\n#SBATCH -N 2 extra\n",
            "line 2: malformed #SBATCH directive ('extra' is not an option)",
        ),
        (
            "#!/bin/sh\n#SBATCH -J \"open\n",
            "line 2: malformed #SBATCH directive (unterminated \" quote)",
        ),
        ("#!/bin/sh\n#SBATCH -J 'open\n", "unterminated ' quote"),
        (
            "#!/bin/sh\n#SBATCH-N2\n",
            "line 2: malformed #SBATCH directive (expected a space after #SBATCH)",
        ),
        (
            "#!/bin/sh\n#SBATCH --array=1-4:0\n",
            "line 2: #SBATCH directive: Invalid job array specification '1-4:0': 1-4:0: step must be at least 1",
        ),
        (
            "#!/bin/sh\n#SBATCH --time\n",
            "line 2: #SBATCH directive: option '--time' requires an argument",
        ),
        (
            "#!/bin/sh\n#SBATCH -t 1:2:3:4\n",
            "line 2: #SBATCH directive: Invalid --time specification: 1:2:3:4",
        ),
        (
            "#!/bin/sh\n#SBATCH --wrap=true\n",
            "line 2: #SBATCH directive: --wrap is only allowed on the command line",
        ),
        (
            "#!/bin/sh\n#SBATCH --bogus\n",
            "line 2: #SBATCH directive: unrecognized option '--bogus'",
        ),
    ];
    for (i, (script, want)) in cases.iter().enumerate() {
        f.script("s.sh", script);
        let got = f
            .run(&["s.sh"])
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        match &got {
            Err(msg) if msg.contains(want) => {}
            _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn gpu_options() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\ntrue\n");
    let ok: &[(&[&str], (u32, &str))] = &[
        (&["--gres=gpu"], (1, "")),
        (&["--gres=gpu:2"], (2, "")),
        (&["--gres=gpu:h100"], (1, "h100")),
        (&["--gres=gpu:h100:4"], (4, "h100")),
        (&["--gres=none"], (0, "")),
        (&["--gpus-per-node=2"], (2, "")),
        (&["--gpus-per-node=a100:2"], (2, "a100")),
        (&["-G", "4"], (4, "")),
        (&["-G4", "-N", "2"], (2, "")),
        (&["--gpus=h100:8", "-N2"], (4, "h100")),
        (&["--gres=gpu:h100:2", "--gpus-per-node=2"], (2, "h100")),
        (&["--gres=gpu:2", "--gpus-per-node=h100:2"], (2, "h100")),
        (&["--gpus-per-node=2", "--gpus=4", "-N", "2"], (2, "")),
        (&["--gpus=0"], (0, "")),
    ];
    for (i, (args, want)) in ok.iter().enumerate() {
        let mut all = args.to_vec();
        all.push("job.sh");
        let got = f
            .run(&all)
            .map(|s| (s.spec.gpus_per_node, s.spec.gpu_type))
            .map_err(|e| e.to_string());
        if got != Ok((want.0, want.1.to_string())) {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
    let bad: &[(&[&str], &str)] = &[
        (&["-G", "3", "-N", "2"], "--gpus=3 cannot be split evenly over 2 nodes; use --gpus-per-node"),
        (&["--gres=gpu:2", "--gpus-per-node=4"], "conflicting GPU requests: --gres=gpu:2 and --gpus-per-node=4 ask for different GPU counts per node"),
        (&["--gres=gpu:a100:2", "--gpus-per-node=h100:2"], "ask for different GPU types"),
        (&["--gpus=h100:2", "--gres=gpu:a100:2"], "ask for different GPU types"),
        (&["--gpus-per-node=2", "--gpus=2", "-N", "2"], "--gpus=2 asks for 2 GPUs in total but --gpus-per-node=2 on 2 node(s) is 4"),
        (&["--gres=mps:100"], "--gres=mps:100: GRES 'mps' (only gpu) is not supported by berth yet"),
        (&["--gres=gpu:1,gpu:a100:1"], "more than one GRES entry is not supported"),
        (&["--gres=gpu:h100:2:x"], "invalid --gres value 'gpu:h100:2:x'"),
        (&["--gres=gpu:h100:-1"], "invalid --gres value"),
        (&["--gres="], "invalid --gres value ''"),
        (&["--gpus=abc"], "Invalid numeric value \"abc\" for --gpus"),
        (&["--gpus=:2"], "invalid --gpus value ':2'"),
        (&["--gpus-per-node=h100:2,a100:1"], "more than one GPU type per job is not supported"),
    ];
    f.assert_refused_with_job_sh(bad);
}

#[test]
fn gpu_fractions() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\ntrue\n");
    // (args, (GPUs per node, type, milli))
    type Want = (u32, &'static str, u32);
    let ok: &[(&[&str], Want)] = &[
        (&["--gpus=0.5"], (1, "", 500)),
        (&["--gpus=.25"], (1, "", 250)),
        (&["--gpus=h100:0.125"], (1, "h100", 125)),
        (&["--gpus-per-node=0.3"], (1, "", 300)),
        (&["--gres=gpu:0.5"], (1, "", 500)),
        (&["--gres=gpu:l40s:0.75"], (1, "l40s", 750)),
        (&["--gres=gpu:0.5", "--gpus=0.5"], (1, "", 500)),
        (&["--gres=gpu:h100:0.5", "--gpus=0.5"], (1, "h100", 500)),
        (&["--gpus=0.001"], (1, "", 1)),
        (&["--gpus=1"], (1, "", 0)),
    ];
    for (i, (args, want)) in ok.iter().enumerate() {
        let mut all = args.to_vec();
        all.push("job.sh");
        let got = f
            .run(&all)
            .map(|s| (s.spec.gpus_per_node, s.spec.gpu_type, s.spec.gpu_milli))
            .map_err(|e| e.to_string());
        if got != Ok((want.0, want.1.to_string(), want.2)) {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
    let bad: &[(&[&str], &str)] = &[
        (
            &["--gpus=0.0"],
            "invalid GPU fraction --gpus=0.0: a fraction must be above 0",
        ),
        (&["--gres=gpu:0.000"], "a fraction must be above 0"),
        (
            &["--gpus=1.5"],
            "invalid GPU fraction --gpus=1.5: a fraction is of one GPU (below 1)",
        ),
        (
            &["--gpus=2.0"],
            "2 is whole GPUs: write it without a decimal point",
        ),
        (&["--gpus=0.0005"], "at most 3 decimals"),
        (&["--gpus=0.5x"], "expected a decimal number of GPUs"),
        (&["--gpus=."], "expected a decimal number of GPUs"),
        (&["--gpus=0..5"], "expected a decimal number of GPUs"),
        (
            &["--gres=gpu:h100:0.5.1"],
            "expected a decimal number of GPUs",
        ),
        (
            &["--gpus=half"],
            "Invalid numeric value \"half\" for --gpus",
        ),
        (&["--gpus=1g.10gb:0.5"], "'1g.10gb' is a MIG profile"),
        (&["--gres=gpu:3g.40gb:0.5"], "'3g.40gb' is a MIG profile"),
        (
            &["--gres=gpu:1g.10gb:1", "--gpus=0.5"],
            "conflicting GPU requests: --gpus=0.5 and --gres=gpu:1g.10gb:1 ask for different GPUs",
        ),
        (&["--gpus=0.5", "--gres=gpu:0.25"], "ask for different GPUs"),
        (
            &["--gpus=h100:0.5", "--gres=gpu:a100:0.5"],
            "ask for different GPUs",
        ),
        (
            &["--gpus=0.5", "--gpus-per-node=1"],
            "ask for different GPUs",
        ),
        (
            &["--gpus=0.5", "-N", "2"],
            "a fraction is of one GPU on one node, not on 2 nodes",
        ),
        (&["--gpus-per-task=0.5"], "--gpus-per-task takes whole GPUs"),
    ];
    f.assert_refused_with_job_sh(bad);
}

#[test]
fn mig_options() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\ntrue\n");
    f.script("mig.sh", "#!/bin/sh\n#SBATCH --gres=gpu:3g.40gb:2\ntrue\n");
    // (args, (whole GPUs per node, GRES type, MIG profile, slices per node))
    type Want = (u32, &'static str, &'static str, u32);
    let ok: &[(&[&str], Want)] = &[
        (&["--gres=gpu:1g.10gb:1", "job.sh"], (0, "", "1g.10gb", 1)),
        (&["--gres=gpu:1g.10gb", "job.sh"], (0, "", "1g.10gb", 1)),
        (&["--gpus=3g.40gb:2", "job.sh"], (0, "", "3g.40gb", 2)),
        (
            &["--gpus=3g.40gb:2", "-N2", "job.sh"],
            (0, "", "3g.40gb", 1),
        ),
        (
            &["--gpus-per-node=2g.20gb:1", "job.sh"],
            (0, "", "2g.20gb", 1),
        ),
        (
            &["--gres=gpu:1g.5gb+me:1", "job.sh"],
            (0, "", "1g.5gb+me", 1),
        ),
        (
            &[
                "--gres=gpu:2g.20gb:3",
                "--gpus-per-node=2g.20gb:3",
                "job.sh",
            ],
            (0, "", "2g.20gb", 3),
        ),
        (&["mig.sh"], (0, "", "3g.40gb", 2)),
        // The command line wins over the script's directive, whole GPUs included.
        (&["--gres=gpu:h100:1", "mig.sh"], (1, "h100", "", 0)),
    ];
    for (i, (args, want)) in ok.iter().enumerate() {
        let got = f
            .run(args)
            .map(|s| {
                let s = s.spec;
                (s.gpus_per_node, s.gpu_type, s.mig_profile, s.mig_per_node)
            })
            .map_err(|e| e.to_string());
        let want = (want.0, want.1.to_string(), want.2.to_string(), want.3);
        if got != Ok(want.clone()) {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
    let bad: &[(&[&str], &str)] = &[
        (
            &["--gres=gpu:1g.10:1"],
            "invalid MIG request --gres=gpu:1g.10:1: '1g.10' is not a MIG profile name",
        ),
        (&["--gpus=3g.40GB:1"], "'3g.40GB' is not a MIG profile name"),
        (&["--gres=gpu:0g.10gb:1"], "not a MIG profile name"),
        (
            &["--gres=gpu:1g.10gb:0"],
            "invalid MIG request --gres=gpu:1g.10gb:0: the slice count must be at least 1",
        ),
        (&["--gpus=1g.10gb:0"], "the slice count must be at least 1"),
        (
            &["--gres=gpu:1g.10gb:1", "--gpus-per-node=h100:1"],
            "--gres=gpu:1g.10gb:1 asks for MIG slices and --gpus-per-node=h100:1 for whole GPUs",
        ),
        (
            &["--gres=gpu:1g.10gb:1", "--gpus-per-node=1"],
            "asks for MIG slices and --gpus-per-node=1 for whole GPUs",
        ),
        (
            &["--gres=gpu:2", "--gpus=3g.40gb:2"],
            "--gpus=3g.40gb:2 asks for MIG slices and --gres=gpu:2 for whole GPUs",
        ),
        (
            &["--gres=gpu:1g.10gb:1", "--gpus-per-node=3g.40gb:1"],
            "ask for different GPU types",
        ),
        (
            &["--gpus=3g.40gb:3", "-N2"],
            "--gpus=3 cannot be split evenly over 2 nodes",
        ),
    ];
    f.assert_refused_with_job_sh(bad);
}

#[test]
fn export_variants() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\n#SBATCH --export=NONE\ntrue\n");
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let all = env(&[("HOME", "/home/alice"), ("LANG", "C"), ("PATH", "/usr/bin")]);
    let mut all_plus = all.clone();
    all_plus.insert("FOO".into(), "bar".into());
    all_plus.insert("LANG".into(), "en".into());
    let cases: Vec<(&str, BTreeMap<String, String>, bool)> = vec![
        ("--export=ALL", all.clone(), true),
        ("--export=NONE", env(&[]), false),
        ("--export=ALL,FOO=bar,LANG=en", all_plus.clone(), true),
        ("--export=FOO=bar,LANG=en,ALL", all_plus, true),
        (
            "--export=HOME,FOO=bar,UNSET",
            env(&[("FOO", "bar"), ("HOME", "/home/alice")]),
            false,
        ),
        ("--export=FOO=a=b", env(&[("FOO", "a=b")]), false),
    ];
    for (i, (option, want_env, want_all)) in cases.iter().enumerate() {
        let got = f
            .run(&[option, "job.sh"])
            .map(|s| (s.spec.env, s.spec.export_all))
            .map_err(|e| e.to_string());
        if got != Ok((want_env.clone(), *want_all)) {
            panic!("#{i}: want {:?}, got {got:?}", (want_env, want_all));
        }
    }
    // Without --export on the command line the script's NONE applies.
    let script_only = f.run(&["job.sh"]).expect("parses");
    assert_eq!(
        (script_only.spec.env.len(), script_only.spec.export_all),
        (0, false)
    );
    let bad: &[(&str, &str)] = &[
        ("--export=", "invalid --export value '': must not be empty"),
        (
            "--export=NONE,FOO=1",
            "NONE cannot be combined with variables",
        ),
        ("--export=1BAD=x", "'1BAD' is not a variable name"),
        ("--export=ALL,,X", "'' is not a variable name"),
        (
            "--export=NIL",
            "--export=NIL: NIL is not supported by berth yet",
        ),
    ];
    for (i, (option, want)) in bad.iter().enumerate() {
        let got = f
            .run(&[option, "job.sh"])
            .map(|s| summary(&s.spec))
            .map_err(|e| e.to_string());
        match &got {
            Err(msg) if msg.contains(want) => {}
            _ => panic!("#{i}: want error containing {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn environment_variables() {
    let mut f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\n#SBATCH -p script -t 5\ntrue\n");
    f.ctx
        .env
        .insert("SBATCH_PARTITION".into(), "envpart".into());
    f.ctx.env.insert("SBATCH_TIMELIMIT".into(), "".into());
    let got = f
        .run(&["job.sh"])
        .map(|s| summary(&s.spec))
        .expect("parses");
    assert!(
        got.contains("t=300 mem=0 gpu=:0 p=envpart "),
        "env overrides script: {got}"
    );
    let got = f
        .run(&["-p", "cli", "job.sh"])
        .map(|s| summary(&s.spec))
        .expect("parses");
    assert!(got.contains("p=cli "), "command line overrides env: {got}");
    f.ctx.env.insert("SBATCH_ACCTG_FREQ".into(), "x".into());
    let err = f
        .run(&["job.sh"])
        .map(|s| summary(&s.spec))
        .map_err(|e| e.to_string());
    let want =
        "environment variable SBATCH_ACCTG_FREQ: option --acctg-freq is not supported by berth yet";
    assert_eq!(err, Err(want.to_string()));
    f.ctx.env.remove("SBATCH_ACCTG_FREQ");
    f.ctx.env.insert("SBATCH_TIMELIMIT".into(), "soon".into());
    let err = f
        .run(&["job.sh"])
        .map(|s| summary(&s.spec))
        .map_err(|e| e.to_string());
    assert!(
        matches!(&err, Err(m) if m.starts_with("environment variable SBATCH_TIMELIMIT: Invalid --time specification: soon")),
        "{err:?}"
    );
}

#[test]
fn every_option_table_entry_is_reachable() {
    // Each name resolves to itself (no entry shadows another), and none is in both tables.
    for spec in SUPPORTED {
        let (long, short) = (spec.long, spec.short);
        assert!(
            matches!(lookup_long(long), Ok(found) if found.long == long),
            "--{long}"
        );
        assert!(
            !UNSUPPORTED.iter().any(|u| u.0 == long),
            "--{long} in both tables"
        );
        if let Some(letter) = short {
            assert!(
                matches!(lookup_short(letter), Ok(found) if found.long == long),
                "-{letter}"
            );
        }
    }
    for (long, short) in UNSUPPORTED {
        assert!(
            matches!(lookup_long(long), Err(OptError::UnsupportedOption(_))),
            "--{long}"
        );
        if let Some(letter) = short {
            assert!(
                matches!(lookup_short(*letter), Err(OptError::UnsupportedOption(_))),
                "-{letter}"
            );
        }
    }
    for (var, long) in ENV_OPTIONS {
        assert!(
            lookup_long(long).is_ok() || UNSUPPORTED.iter().any(|u| u.0 == *long),
            "{var} -> --{long}"
        );
    }
}

#[test]
fn splits_directive_words() {
    let cases: &[(&str, Result<&[&str], &str>)] = &[
        (" -N 2", Ok(&["-N", "2"])),
        (
            "  --job-name=\"a b\" -p 'x y'",
            Ok(&["--job-name=a b", "-p", "x y"]),
        ),
        (" -J a\\ b", Ok(&["-J", "a b"])),
        (" -J '' -N1", Ok(&["-J", "", "-N1"])),
        (" -J \"say \\\"hi\\\"\"", Ok(&["-J", "say \"hi\""])),
        (" -N 2 # four nodes was too many", Ok(&["-N", "2"])),
        (" -J a#b", Ok(&["-J", "a#b"])),
        (" ", Ok(&[])),
        (" -J 'x", Err("unterminated ' quote")),
        (" -J x\\", Err("backslash at end of line")),
    ];
    for (i, (input, want)) in cases.iter().enumerate() {
        let got = split_words(input);
        let want = want
            .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(str::to_string);
        if got != want {
            panic!("#{i}: want {want:?}, got {got:?}");
        }
    }
}
#[test]
fn container_options_as_pyxis_names_them() {
    let f = Fixture::new();
    f.script(
        "c.sh",
        "#!/bin/sh\n#SBATCH --container-image=img\n#SBATCH --container-workdir=/w\ntrue\n",
    );
    let sub = f
        .run(&[
            "--container-mounts=/data:/data:ro+rprivate,/scratch",
            "--container-env=HOME,LANG",
            "c.sh",
        ])
        .expect("parses");
    let s = &sub.spec;
    assert_eq!(
        s.container_image,
        f.path("img"),
        "relative to the submit dir"
    );
    assert_eq!(s.container_workdir, "/w");
    assert_eq!(s.container_mounts, ["/data:/data:ro+rprivate", "/scratch"]);
    assert_eq!(s.container_env, ["HOME", "LANG"]);
    let over = f
        .run(&["--container-image=/abs/img", "c.sh"])
        .expect("parses");
    assert_eq!(
        over.spec.container_image, "/abs/img",
        "the command line wins"
    );
    f.script("plain.sh", "#!/bin/sh\ntrue\n");
    let plain = f.run(&["plain.sh"]).expect("parses");
    assert!(
        plain.spec.container_image.is_empty(),
        "no image: process runtime"
    );
    expect_errors(
        &f,
        &[
            (&["--container-image=", "plain.sh"], "must not be empty"),
            (
                &["--container-image=nvcr.io#nvidia/pytorch:24.01", "plain.sh"],
                "registry images are not supported",
            ),
            (
                &["--container-image=docker://busybox", "plain.sh"],
                "registry",
            ),
            (
                &[
                    "--container-image=/i",
                    "--container-mounts=data:/x",
                    "plain.sh",
                ],
                "SRC must be an absolute path",
            ),
            (
                &[
                    "--container-image=/i",
                    "--container-mounts=/a:/b:ro+bogus",
                    "plain.sh",
                ],
                "unknown flag",
            ),
            (
                &[
                    "--container-image=/i",
                    "--container-workdir=rel",
                    "plain.sh",
                ],
                "must be an absolute path",
            ),
            (
                &["--container-image=/i", "--container-env=A-B", "plain.sh"],
                "not a variable name",
            ),
            (
                &["--container-mounts=/a:/b", "plain.sh"],
                "need --container-image",
            ),
        ],
    );
}

/// The options scripts in the wild use most (each refused by berth before it read them),
/// as Slurm 22.05 takes them: the spec fields they land in.
#[test]
fn node_selection_options_land_in_the_spec() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\ntrue\n");
    let run = |args: &[&str]| f.run(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).spec;
    let s = run(&["--ntasks-per-node=4", "-N", "2", "job.sh"]);
    assert_eq!((s.nodes, s.ntasks, s.ntasks_per_node), (2, 8, 4));
    let s = run(&["--tasks-per-node=2", "-n", "6", "job.sh"]);
    assert_eq!((s.nodes, s.ntasks, s.ntasks_per_node), (3, 6, 2));
    let s = run(&["-n", "8", "job.sh"]);
    assert_eq!((s.nodes, s.nodes_max, s.use_min_nodes), (1, 8, true));
    let s = run(&["--nodes=2-8", "--use-min-nodes", "job.sh"]);
    assert_eq!((s.nodes, s.nodes_max, s.use_min_nodes), (2, 8, true));
    let s = run(&["--mem-per-cpu=4G", "--mincpus=8", "job.sh"]);
    assert_eq!((s.mem_per_cpu_mb, s.min_cpus_node, s.mem_mb), (4096, 8, 0));
    for m in ["16GB", "16gb", "16Gb", "16G"] {
        assert_eq!(run(&[&format!("--mem={m}"), "job.sh"]).mem_mb, 16384, "{m}");
    }
    let s = run(&["--mem=0", "job.sh"]);
    assert!(s.mem_whole_node && s.mem_mb == 0);
    let s = run(&[
        "--mem-per-gpu=10G",
        "--cpus-per-gpu=3",
        "--gpus-per-node=2",
        "job.sh",
    ]);
    assert_eq!(
        (s.mem_per_gpu_mb, s.cpus_per_gpu, s.gpus_per_node),
        (10240, 3, 2)
    );
    let s = run(&[
        "-C",
        "h100&ib",
        "-w",
        "gpu[001-002]",
        "-x",
        "gpu003",
        "job.sh",
    ]);
    assert_eq!(s.constraint, "h100&ib");
    assert_eq!(s.req_nodes, ["gpu001", "gpu002"]);
    assert_eq!(s.exc_nodes, ["gpu003"]);
    assert_eq!(s.nodes, 2, "-w without -N takes as many nodes as it names");
    assert_eq!(run(&["--exclusive", "job.sh"]).oversubscribe, "NO");
    assert_eq!(run(&["--exclusive=user", "job.sh"]).oversubscribe, "USER");
    assert_eq!(run(&["-s", "job.sh"]).oversubscribe, "YES");
    let s = run(&["-L", "matlab:2,comsol", "--reservation=maint", "job.sh"]);
    let l: Vec<(String, u32)> = s
        .licenses
        .iter()
        .map(|l| (l.name.clone(), l.count))
        .collect();
    assert_eq!(l, [("matlab".to_string(), 2), ("comsol".to_string(), 1)]);
    assert_eq!(s.reservation, "maint");
    let s = run(&["--mail-type=fail,end", "--mail-user=a@b.org", "job.sh"]);
    assert_eq!(
        (s.mail_type.as_str(), s.mail_user.as_str()),
        ("END,FAIL", "a@b.org")
    );
    let s = run(&[
        "--nice=5",
        "--comment=hi",
        "--gpu-bind=closest",
        "--gres-flags=enforce-binding",
        "--hint=nomultithread",
        "-m",
        "block:cyclic",
        "--spread-job",
        "-k",
        "--no-requeue",
        "--begin=2030-01-01T10:00:00",
        "--deadline=2030-01-02",
        "job.sh",
    ]);
    assert_eq!(s.nice, 5);
    assert_eq!(s.comment, "hi");
    assert_eq!(s.gpu_bind, "closest");
    assert_eq!(s.gres_flags, "enforce-binding");
    assert_eq!(s.hint, "nomultithread");
    assert_eq!(s.distribution, "block:cyclic");
    assert!(s.spread_job && s.no_kill);
    assert_eq!(s.requeue, Some(false));
    assert!(s.begin_time_ms > 1_893_000_000_000 && s.deadline_ms > s.begin_time_ms);
    assert!(!run(&["job.sh"]).time_limit_set);
    assert!(run(&["-t", "10", "job.sh"]).time_limit_set);
    // A directive sets what the command line does not.
    f.script(
        "d.sh",
        "#!/bin/sh\n#SBATCH --ntasks-per-node=2\n#SBATCH -C \"h100|a100\"\ntrue\n",
    );
    let s = run(&["-N", "3", "d.sh"]);
    assert_eq!((s.ntasks, s.constraint.as_str()), (6, "h100|a100"));
}

#[test]
fn open_mode_appends_or_truncates() {
    let f = Fixture::new();
    f.script("job.sh", "#!/bin/sh\n#SBATCH --open-mode=append\ntrue\n");
    let cases: &[(&[&str], bool)] = &[
        (&["job.sh"], true),
        (&["--open-mode=truncate", "job.sh"], false),
        (&["--open-mode=t", "job.sh"], false),
        (&["--open-mode=APP", "job.sh"], true),
    ];
    for (i, (args, want)) in cases.iter().enumerate() {
        let got = f.run(args).expect("parses").spec.open_append;
        assert_eq!(got, *want, "#{i} {args:?}");
    }
    f.script("plain.sh", "#!/bin/sh\ntrue\n");
    assert!(!f.run(&["plain.sh"]).expect("parses").spec.open_append);
    let keyed = f.run(&["--wckey=submitit", "plain.sh"]).expect("parses");
    assert_eq!(keyed.spec.wckey, "submitit");
    expect_errors(
        &f,
        &[
            (
                &["--open-mode=x", "plain.sh"],
                "Invalid --open-mode specification",
            ),
            (
                &["--open-mode=appendx", "plain.sh"],
                "Invalid --open-mode specification",
            ),
            (
                &["--open-mode=", "plain.sh"],
                "Invalid --open-mode specification",
            ),
            (&["--wckey=", "plain.sh"], "--wckey"),
        ],
    );
}
