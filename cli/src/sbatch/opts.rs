//! [`Opts`]: where sbatch options land, one source at a time (command line, `SBATCH_*`
//! environment, `#SBATCH` directives), before the sources are merged and turned into a
//! `JobSpec`.
//!
//! The fields are listed once, in the `opts!` invocation: the struct and its merge
//! ([`Opts::overlaid_by`]) are generated from that list, so adding an option cannot forget
//! its precedence.

use crate::opt::export::Export;
use crate::opt::gres::GpuRequest;
use crate::opt::signal::SignalSpec;
use berth_proto::v1::{ArraySpec, DependencyCondition};

/// Declares `Opts` with its valued fields (`Option<T>`, `None` = not given) and its flags
/// (`bool`, set by any source), and `overlaid_by`.
macro_rules! opts {
    (
        values { $($(#[$vdoc:meta])* $field:ident: $ty:ty,)* }
        flags { $($(#[$fdoc:meta])* $flag:ident,)* }
    ) => {
        /// Options from one source (command line, environment, script).
        #[derive(Debug, Clone, Default)]
        pub struct Opts {
            $($(#[$vdoc])* pub $field: Option<$ty>,)*
            $($(#[$fdoc])* pub $flag: bool,)*
        }

        impl Opts {
            /// `self` with every option `top` gives replaced by `top`'s (lists such as
            /// `--export` are replaced whole, not merged); flags set in either stay set.
            pub fn overlaid_by(self, top: Opts) -> Opts {
                Opts {
                    $($field: top.$field.or(self.$field),)*
                    $($flag: top.$flag || self.$flag,)*
                }
            }
        }
    };
}

opts! {
    values {
        /// `-J`.
        job_name: String,
        /// `-o`.
        output: String,
        /// `-e`.
        error: String,
        /// `--open-mode`: true for append, false for truncate.
        open_append: bool,
        /// `--wckey`.
        wckey: String,
        /// `-t`, seconds (0: unlimited).
        time_secs: u64,
        /// `-G/--gpus`.
        gpus: GpuRequest,
        /// `--gres`.
        gres: GpuRequest,
        /// `--gpus-per-node`.
        gpus_per_node: GpuRequest,
        /// `--gpus-per-task`.
        gpus_per_task: GpuRequest,
        /// `--switches=N[@WAIT]`: (N, wait seconds if given).
        switches: (u32, Option<u64>),
        /// `-c`.
        cpus_per_task: u32,
        /// `--mem`, MiB.
        mem_mb: u64,
        /// `-N`.
        nodes: u32,
        /// `-n`.
        ntasks: u32,
        /// `-p`.
        partition: String,
        /// `-A`.
        account: String,
        /// `-q`.
        qos: String,
        /// `--requeue` (true) / `--no-requeue` (false).
        requeue: bool,
        /// `--signal`.
        signal: SignalSpec,
        /// `-d`.
        dependencies: Vec<DependencyCondition>,
        /// `-a/--array`.
        array: ArraySpec,
        /// `-D`.
        chdir: String,
        /// `--export`.
        export: Export,
        /// `--wrap`.
        wrap: String,
        /// `--container-image`.
        container_image: String,
        /// `--container-mounts`.
        container_mounts: Vec<String>,
        /// `--container-workdir`.
        container_workdir: String,
        /// `--container-env`.
        container_env: Vec<String>,
        /// `--nodes=MIN-MAX`: the most (0: no range; set with `nodes`).
        nodes_max: u32,
        /// `-C/--constraint`, as given.
        constraint: String,
        /// `-w/--nodelist`, expanded.
        req_nodes: Vec<String>,
        /// `-x/--exclude`, expanded.
        exc_nodes: Vec<String>,
        /// `--ntasks-per-node` / `--tasks-per-node`.
        ntasks_per_node: u32,
        /// `--mincpus`.
        min_cpus: u32,
        /// `--mem-per-cpu`, MiB (0: all of each node's memory).
        mem_per_cpu_mb: u64,
        /// `--mem-per-gpu`, MiB.
        mem_per_gpu_mb: u64,
        /// `--cpus-per-gpu`.
        cpus_per_gpu: u32,
        /// `--exclusive[=user|mcs]` (`NO`, `USER`, `MCS`) or `--oversubscribe` (`YES`).
        oversubscribe: String,
        /// `-L/--licenses`.
        licenses: Vec<berth_proto::v1::LicenseRequest>,
        /// `--reservation`.
        reservation: String,
        /// `--mail-type`, canonical.
        mail_type: String,
        /// `--mail-user`.
        mail_user: String,
        /// `--begin`, ms since the epoch.
        begin_ms: u64,
        /// `--deadline`, ms since the epoch.
        deadline_ms: u64,
        /// `--nice`.
        nice: i32,
        /// `--comment`.
        comment: String,
        /// `--gpu-bind`.
        gpu_bind: String,
        /// `--gres-flags`.
        gres_flags: String,
        /// `--hint`.
        hint: String,
        /// `-m/--distribution`.
        distribution: String,
        /// `-k/--no-kill`.
        no_kill: bool,
    }
    flags {
        /// `--parsable`.
        parsable,
        /// `-H`.
        hold,
        /// `--use-min-nodes`.
        use_min_nodes,
        /// `--spread-job`.
        spread_job,
    }
}
