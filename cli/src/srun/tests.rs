//! srun's parsing: options, input variables, the step request, output patterns, and
//! refusals of bad input.

use super::io::{expand, Names, Sink};
use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn options_build_the_step_request() {
    let e = env(&[("SLURM_JOB_ID", "12"), ("HOME", "/h")]);
    let (o, argv) = parse(
        &args(&[
            "-n4",
            "-N",
            "2",
            "--ntasks-per-node=2",
            "-w",
            "node[1-2]",
            "--gpus-per-task=1",
            "-c2",
            "-l",
            "-K",
            "hostname",
            "-f",
        ]),
        &e,
    )
    .unwrap();
    assert_eq!(argv, ["hostname", "-f"], "options end at the program");
    let s = options::step_spec(&o, &argv, &e, "/work");
    assert_eq!((s.ntasks, s.nodes, s.ntasks_per_node), (4, 2, 2));
    assert_eq!(s.nodelist, ["node1", "node2"]);
    assert_eq!((s.gpus_per_task, s.cpus_per_task), (1, 2));
    assert!(o.label && s.kill_on_bad_exit);
    assert_eq!(s.work_dir, "/work");
    assert_eq!(s.env.get("HOME").map(String::as_str), Some("/h"));
    assert_eq!(s.name, "hostname");
    assert_eq!(allocation(&o, &e).unwrap(), Some(12));
}

#[test]
fn open_mpis_srun_line_parses() {
    // What Open MPI 4.1's plm/slurm runs (seen with a logging srun on PATH).
    let line = "--ntasks-per-node=1 --kill-on-bad-exit --mpi=none --nodes=1 --nodelist=n2 --ntasks=1 orted -mca ess slurm";
    let e = env(&[
        ("SLURM_JOB_ID", "5"),
        ("SLURM_NNODES", "2"),
        ("SLURM_NTASKS", "4"),
    ]);
    let (o, argv) = parse(&args(&line.split(' ').collect::<Vec<_>>()), &e).unwrap();
    assert_eq!(argv[0], "orted");
    assert_eq!(
        (o.ntasks, o.nodes, o.ntasks_per_node),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(o.nodelist, ["n2"]);
    assert!(o.kill_on_bad_exit);
    // Without --nodes/--nodelist (mpirun's host outside the allocation): SLURM_NNODES.
    let line = "--ntasks-per-node=1 --kill-on-bad-exit --mpi=none --ntasks=2 orted";
    let (o, _) = parse(&args(&line.split(' ').collect::<Vec<_>>()), &e).unwrap();
    assert_eq!((o.ntasks, o.nodes), (Some(2), Some(2)));
}

#[test]
fn the_allocations_counts_apply_only_without_counts_of_its_own() {
    let e = env(&[
        ("SLURM_JOB_ID", "5"),
        ("SLURM_NNODES", "2"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LABELIO", "1"),
    ]);
    let (o, _) = parse(&args(&["true"]), &e).unwrap();
    assert_eq!((o.ntasks, o.nodes), (Some(4), Some(2)));
    assert!(o.label);
    let (o, _) = parse(&args(&["-N1", "true"]), &e).unwrap();
    assert_eq!((o.ntasks, o.nodes), (None, Some(1)));
    let (o, _) = parse(&args(&["-w", "node2", "true"]), &e).unwrap();
    assert_eq!((o.ntasks, o.nodes), (None, None));
}

#[test]
fn export_picks_the_tasks_environment() {
    let e = env(&[
        ("SLURM_JOB_ID", "5"),
        ("A", "1"),
        ("B", "2"),
        ("SLURM_PROCID", "0"),
    ]);
    let (o, argv) = parse(&args(&["--export=NONE", "true"]), &e).unwrap();
    assert!(options::step_spec(&o, &argv, &e, "/").env.is_empty());
    let (o, argv) = parse(&args(&["--export=A,C=3", "true"]), &e).unwrap();
    let s = options::step_spec(&o, &argv, &e, "/");
    assert_eq!(s.env, env(&[("A", "1"), ("C", "3")]));
    let (o, argv) = parse(&args(&["true"]), &e).unwrap();
    let s = options::step_spec(&o, &argv, &e, "/");
    assert!(
        s.env.contains_key("B") && !s.env.contains_key("SLURM_PROCID"),
        "the batch's own ids never leak into tasks"
    );
}

#[test]
fn cpu_bind_is_checked_and_carried_as_typed() {
    let e = env(&[("SLURM_JOB_ID", "5")]);
    let (o, argv) = parse(&args(&["--cpu-bind=verbose,map_cpu:0,1", "true"]), &e).unwrap();
    let s = options::step_spec(&o, &argv, &e, "/");
    assert_eq!(s.cpu_bind, "verbose,map_cpu:0,1");
    // The variable applies when the line gives none; the line wins.
    let bound = env(&[("SLURM_JOB_ID", "5"), ("SLURM_CPU_BIND", "cores")]);
    let (o, _) = parse(&args(&["true"]), &bound).unwrap();
    assert_eq!(o.cpu_bind.as_deref(), Some("cores"));
    let (o, _) = parse(&args(&["--cpu-bind=none", "true"]), &bound).unwrap();
    assert_eq!(o.cpu_bind.as_deref(), Some("none"));
    let bad = env(&[("SLURM_JOB_ID", "5"), ("SLURM_CPU_BIND", "bogus")]);
    let err = parse(&args(&["true"]), &bad).unwrap_err();
    assert!(format!("{err:#}").contains("SLURM_CPU_BIND"), "{err:#}");
    // help: Slurm's list, and nothing run.
    let (o, argv) = parse(&args(&["--cpu-bind=help"]), &e).unwrap();
    assert!(o.help.unwrap().starts_with("CPU bind options:"));
    assert!(argv.is_empty());
}

#[test]
fn bad_input_is_refused_with_the_option_named() {
    let e = env(&[("SLURM_JOB_ID", "5")]);
    let table: &[(&[&str], &str)] = &[
        (&["--bogus", "true"], "unrecognized option '--bogus'"),
        (&["-n", "0", "true"], "--ntasks"),
        (&["-n", "x", "true"], "--ntasks"),
        (&["--mpi=pmix", "true"], "--mpi"),
        (
            &["--cpu-bind=boards", "true"],
            "unrecognized --cpu-bind argument \"boards\"",
        ),
        (&["--cpu-bind=map_cpu", "true"], "missing list"),
        (&["--cpu-bind=mask_cpu:zz", "true"], "--cpu-bind"),
        (&["--pty", "bash"], "--pty is not supported by berth yet"),
        (&["-w", "node[3-1]", "true"], "--nodelist"),
        (&["--kill-on-bad-exit=2", "true"], "0 or 1"),
        (&["-n", "2"], "No command given"),
        (&["--export=NONE,A", "true"], "--export"),
    ];
    for (i, (a, want)) in table.iter().enumerate() {
        match parse(&args(a), &e) {
            Err(err) if format!("{err:#}").contains(want) => {}
            got => panic!("#{i}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn an_allocation_is_a_job_id_or_none_and_job_options_only_shape_a_new_one() {
    let (o, _) = parse(&args(&["true"]), &env(&[])).unwrap();
    assert_eq!(allocation(&o, &env(&[])).unwrap(), None);
    // Job options outside an allocation shape the job srun makes, as sbatch reads them.
    let (o, _) = parse(
        &args(&["-p", "debug", "-t", "5", "-N2", "--mem=1G", "true"]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(allocation(&o, &env(&[])).unwrap(), None);
    assert_eq!(o.job.partition.as_deref(), Some("debug"));
    assert_eq!(o.job.time_secs, Some(300));
    assert_eq!(o.nodes, Some(2));
    assert_eq!(o.job_only, vec!["partition", "time", "mem"]);
    // Inside an allocation they are refused, naming the first.
    let err = allocation(&o, &env(&[("SLURM_JOB_ID", "12")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--partition shapes a new allocation"), "{err}");
    // A bad job value is refused at parse time, in sbatch's words.
    let err = parse(&args(&["-t", "never", "true"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("never"), "{err}");
    let err = allocation(&o, &env(&[("SLURM_JOB_ID", "12abc")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SLURM_JOB_ID=\"12abc\" is not a job id"),
        "{err}"
    );
    let (o, _) = parse(&args(&["--jobid=7", "true"]), &env(&[])).unwrap();
    assert_eq!(
        allocation(&o, &env(&[("SLURM_JOB_ID", "x")])).unwrap(),
        Some(7)
    );
    assert!(parse(&args(&["--jobid=0", "true"]), &env(&[])).is_err());
    let e = env(&[("SLURM_NTASKS", "many")]);
    assert!(
        parse(&args(&["true"]), &e).is_err(),
        "a bad input variable is refused"
    );
}

#[test]
fn output_patterns_expand_per_task_and_node() {
    let names = Names {
        job_id: 12,
        step_id: 3,
        node_index: [("n1".to_string(), 0), ("n2".to_string(), 1)].into(),
        ..Default::default()
    };
    let table = [
        ("out-%j.%s-%t.txt", "n2", 5, "out-12.3-5.txt"),
        ("o-%n-%N", "n2", 0, "o-1-n2"),
        ("%3t%%", "n1", 7, "007%"),
    ];
    for (i, (p, node, task, want)) in table.into_iter().enumerate() {
        assert_eq!(expand(p, &names, node, task).unwrap(), want, "#{i}");
    }
    assert_eq!(expand("%A_%a", &names, "n1", 0).unwrap(), "12_4294967294");
    let task = Names {
        array: Some((10, 2)),
        ..names.clone()
    };
    assert_eq!(
        expand("%A_%a_%t.out", &task, "n1", 0).unwrap(),
        "10_2_0.out"
    );
    assert!(expand("x%q", &names, "n1", 0).is_err());
    assert!(expand("x%", &names, "n1", 0).is_err());
}

#[test]
fn every_job_option_is_sbatchs_with_the_same_letter_and_value() {
    use crate::opt::getopt::lookup_long;
    use crate::sbatch::options::SBATCH;
    for name in crate::srun::options::JOB_OPTIONS {
        let ours = lookup_long(&crate::srun::options::SRUN, name)
            .unwrap_or_else(|e| panic!("srun lacks --{name}: {e}"));
        let theirs =
            lookup_long(&SBATCH, name).unwrap_or_else(|e| panic!("sbatch lacks --{name}: {e}"));
        assert_eq!(
            (ours.short, ours.arg),
            (theirs.short, theirs.arg),
            "--{name}"
        );
    }
}

#[test]
fn lines_of_tasks_writing_at_once_never_interleave_unless_unbuffered() {
    use berth_proto::v1::{self as pb, step_io::Frame};
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = |task: u32, b: &[u8]| pb::StepIo {
        node: "n1".into(),
        task_id: task,
        frame: Some(Frame::Stdout(b.to_vec())),
        ..Default::default()
    };
    let names = || Names {
        job_id: 1,
        step_id: 0,
        node_index: [("n1".to_string(), 0)].into(),
        ..Default::default()
    };
    for (unbuffered, want) in [
        (false, "task 1 done\ntask 0 done\n"),
        (true, "task 0task 1 done\n done\n"),
    ] {
        let path = dir.path().join(format!("out-{unbuffered}"));
        let pattern = Some(path.display().to_string());
        let mut sink = Sink::new(false, unbuffered, pattern, None, names());
        for f in [
            frame(0, b"task 0"),
            frame(1, b"task 1"),
            frame(1, b" done\n"),
            frame(0, b" done\n"),
        ] {
            sink.take(f).unwrap();
        }
        drop(sink);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    }
}

#[test]
fn open_mode_is_append_or_truncate_from_the_line_or_the_job() {
    let (o, _) = parse(&args(&["--open-mode=a", "true"]), &env(&[])).unwrap();
    assert!(o.append);
    let (o, _) = parse(&args(&["true"]), &env(&[("SLURM_OPEN_MODE", "append")])).unwrap();
    assert!(o.append);
    let (o, _) = parse(&args(&["true"]), &env(&[])).unwrap();
    assert!(!o.append);
    assert!(parse(&args(&["--open-mode=sometimes", "true"]), &env(&[])).is_err());
    assert!(parse(&args(&["true"]), &env(&[("SLURM_OPEN_MODE", "x")])).is_err());
}
