//! Slurm options, shared by every command that takes them: the option table type and the
//! getopt parser over it, the error, and one value parser per kind of value. sbatch builds
//! its table from these; srun, salloc and `scontrol update` take the same values and reuse
//! the parsers (and, where the option is the same, the table entries).
//!
//! # Layout
//! - [`table`]: [`table::OptionSpec`] and [`table::Table`].
//! - [`getopt`]: getopt_long over a table.
//! - [`error`]: [`OptError`], Slurm's wording.
//! - value parsers: [`array`], [`job_id`], [`count`], [`gres`], [`signal`], [`dependency`],
//!   [`switches`], [`export`], [`container`], [`name`], [`select`]; time limits and memory sizes are
//!   [`crate::duration`] and [`crate::memory`].

pub mod array;
pub mod container;
pub mod count;
pub mod dependency;
pub mod error;
pub mod export;
pub mod getopt;
pub mod gres;
pub mod job_id;
pub mod name;
pub mod select;
pub mod signal;
pub mod switches;
pub mod table;

pub use error::OptError;
