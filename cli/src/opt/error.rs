//! Why an option or its value was refused: one enum shared by every command that parses
//! Slurm options (sbatch today; srun, salloc and `scontrol update` reuse it), worded as
//! Slurm words it where Slurm has a message.

use crate::duration::DurationError;
use crate::memory::MemError;
use thiserror::Error;

/// An option, or an option's value, that cannot be taken. Nothing was submitted.
#[derive(Debug, Error)]
pub enum OptError {
    /// Not an option of this command at all.
    #[error("unrecognized option '{0}'")]
    UnrecognizedOption(String),
    /// A long-option prefix that matches several options.
    #[error("option '{option}' is ambiguous; possibilities: {candidates}")]
    AmbiguousOption {
        /// What the user wrote.
        option: String,
        /// The matching options.
        candidates: String,
    },
    /// A real Slurm option berth does not implement yet.
    #[error("option {0} is not supported by berth yet")]
    UnsupportedOption(String),
    /// An option that needs a value came last.
    #[error("option '{0}' requires an argument")]
    MissingArgument(String),
    /// `--flag=value` for an option that takes none.
    #[error("option '{0}' doesn't allow an argument")]
    UnexpectedArgument(String),
    /// A bad `--time`.
    #[error("Invalid --time specification: {value} ({reason})")]
    InvalidTime {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: DurationError,
    },
    /// A bad `--mem`.
    #[error("invalid --mem value '{value}': {reason}")]
    InvalidMem {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: MemError,
    },
    /// A bad `--dependency`.
    #[error("Invalid dependency specification '{value}': {reason}")]
    InvalidDependency {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad `--array` (Slurm's message begins so).
    #[error("Invalid job array specification '{value}': {reason}")]
    InvalidArray {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad `--signal`.
    #[error("Invalid --signal specification '{value}': {reason}")]
    InvalidSignal {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A count that is not a number.
    #[error("Invalid numeric value \"{value}\" for {option}")]
    InvalidNumber {
        /// The option, e.g. `--nodes`.
        option: String,
        /// The value given.
        value: String,
    },
    /// A count of zero where at least one is needed.
    #[error("Invalid {option} value \"{value}\": must be at least 1")]
    ZeroCount {
        /// The option, e.g. `--nodes`.
        option: String,
        /// The value given.
        value: String,
    },
    /// Any other bad value.
    #[error("invalid {option} value '{value}': {reason}")]
    InvalidValue {
        /// The option.
        option: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid Slurm value that berth cannot honour yet.
    #[error("{option}={value}: {what} is not supported by berth yet")]
    UnsupportedValue {
        /// The option.
        option: String,
        /// The value given.
        value: String,
        /// The feature the value needs.
        what: String,
    },
    /// A fraction of a GPU (`--gpus=0.5`) that cannot be honoured as written.
    #[error("invalid GPU fraction {given}: {reason}")]
    Fraction {
        /// The option as written (`--gpus=1.5`).
        given: String,
        /// What is wrong.
        reason: String,
    },
    /// `-h/--help/--usage`: the caller prints its usage text and exits 0.
    #[error("help requested")]
    HelpRequested,
    /// `-V/--version`: the caller prints its version and exits 0.
    #[error("version requested")]
    VersionRequested,
}

impl OptError {
    /// [`OptError::InvalidValue`] for `option` (e.g. `--gres`) and `value`.
    pub fn invalid(option: &str, value: &str, reason: impl Into<String>) -> OptError {
        OptError::InvalidValue {
            option: option.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// [`OptError::UnsupportedValue`] for `option` and `value`.
    pub fn unsupported(option: &str, value: &str, what: impl Into<String>) -> OptError {
        OptError::UnsupportedValue {
            option: option.to_string(),
            value: value.to_string(),
            what: what.into(),
        }
    }
}
