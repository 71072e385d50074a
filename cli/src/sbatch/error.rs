//! Why a submission was refused: an option's error ([`OptError`]), or the script's, a
//! directive's, an environment variable's, or a request that does not hold together.

use crate::opt::OptError;
use std::io;
use thiserror::Error;

/// Why a submission was refused. Nothing was submitted; messages follow Slurm's wording
/// where Slurm has one.
#[derive(Debug, Error)]
pub enum SbatchError {
    /// An option or its value (help and version requests included).
    #[error(transparent)]
    Option(#[from] OptError),
    /// GPU options that ask for different things.
    #[error("conflicting GPU requests: {0}")]
    GpuConflict(String),
    /// A MIG request that cannot be honoured as written.
    #[error("invalid MIG request {given}: {reason}")]
    Mig {
        /// The option as written (`--gres=gpu:1g.10gb:0`).
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// `--gpus` (a total) that does not split evenly over the nodes.
    #[error("--gpus={gpus} cannot be split evenly over {nodes} nodes; use --gpus-per-node to ask for GPUs on each node")]
    GpusNotDivisible {
        /// The total asked for.
        gpus: u32,
        /// The node count.
        nodes: u32,
    },
    /// Fewer tasks than nodes: some node would run nothing.
    #[error("--ntasks={ntasks} is less than --nodes={nodes}: every node needs at least one task")]
    TasksBelowNodes {
        /// Tasks asked for.
        ntasks: u32,
        /// Nodes asked for.
        nodes: u32,
    },
    /// The script file could not be read.
    #[error("Unable to open file {path}: {error}")]
    ScriptRead {
        /// The path as given.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// Standard input could not be read.
    #[error("unable to read the batch script from standard input: {0}")]
    StdinRead(io::Error),
    /// An empty script.
    #[error("Batch script is empty!")]
    EmptyScript,
    /// A script without a `#!` line.
    #[error(
        "This does not look like a batch script.  The first line must start with #! followed by the path to an interpreter.\nFor instance: #!/bin/sh"
    )]
    NotBatchScript,
    /// A script saved with Windows line ends, which the interpreter would choke on.
    #[error("Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX line breaks (\\n).")]
    DosLineBreaks,
    /// `--wrap` together with a script path or script arguments.
    #[error("--wrap cannot be combined with a script or script arguments (got '{0}')")]
    WrapWithScript(String),
    /// `--wrap` inside a script.
    #[error("--wrap is only allowed on the command line, not in a #SBATCH directive")]
    WrapInScript,
    /// An `#SBATCH` line that does not parse as options.
    #[error("line {line}: malformed #SBATCH directive ({reason}): {text}")]
    MalformedDirective {
        /// 1-based line number in the script.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// An error in an option given by an `#SBATCH` line.
    #[error("line {line}: #SBATCH directive: {error}")]
    Directive {
        /// 1-based line number in the script.
        line: usize,
        /// The option's error.
        error: Box<SbatchError>,
    },
    /// An error in an option given by an `SBATCH_*` variable.
    #[error("environment variable {var}: {error}")]
    Environment {
        /// The variable.
        var: String,
        /// The option's error.
        error: Box<SbatchError>,
    },
}

impl SbatchError {
    /// Whether this is a help request (`-h/--help/--usage`) rather than an error: the
    /// caller prints [`super::USAGE`] and exits 0.
    pub fn is_help(&self) -> bool {
        matches!(self, SbatchError::Option(OptError::HelpRequested))
    }

    /// Whether this is a version request (`-V/--version`) rather than an error.
    pub fn is_version(&self) -> bool {
        matches!(self, SbatchError::Option(OptError::VersionRequested))
    }
}
