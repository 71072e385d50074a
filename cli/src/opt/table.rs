//! An option table: one entry per option a command takes (long name, short letter, whether
//! it takes a value, the setter that parses the value and stores it in the command's
//! request, and the `scontrol show job` field where users read it back), plus the real
//! Slurm options the command refuses by name.
//!
//! The table is data, so the parser ([`crate::opt::getopt`]), the `SBATCH_*` environment
//! reader, the reachability test and the conformance table in the docs all read the same
//! list, and sbatch, srun and salloc can share entries.

use crate::opt::OptError;

/// Whether an option takes a value (getopt's `no_argument`, `required_argument`,
/// `optional_argument`). An optional value is only taken from `--opt=value` (or `-Xvalue`),
/// never from the next word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// A flag.
    None,
    /// `--opt=value`, `--opt value`, `-Xvalue`, `-X value`.
    Required,
    /// `--opt` or `--opt=value`.
    Optional,
}

/// Parses an option's value and stores it in `T`. It gets the long name the option was
/// found under (for messages: an alias is named as the user wrote it) and the value
/// (`None` for a flag, or an optional value left out).
pub type Setter<T> = fn(&mut T, &'static str, Option<&str>) -> Result<(), OptError>;

/// One option.
pub struct OptionSpec<T: 'static> {
    /// Long name without the dashes (`nodes`).
    pub long: &'static str,
    /// Short letter (`N`), if any.
    pub short: Option<char>,
    /// Whether it takes a value.
    pub arg: Arg,
    /// The `scontrol show job` key the option is read back under (`NumNodes`); empty when
    /// it has none (`--parsable`, `--help`).
    pub show_job: &'static str,
    /// Parses and stores the value.
    pub set: Setter<T>,
}

/// Builds an [`OptionSpec`] (keeps tables one line per option).
pub const fn opt<T>(
    long: &'static str,
    short: Option<char>,
    arg: Arg,
    show_job: &'static str,
    set: Setter<T>,
) -> OptionSpec<T> {
    OptionSpec {
        long,
        short,
        arg,
        show_job,
        set,
    }
}

/// Every option of one command.
pub struct Table<T: 'static> {
    /// The options berth implements.
    pub options: &'static [OptionSpec<T>],
    /// Real Slurm options (from the command's man page) that berth refuses by name: long
    /// name and short letter.
    pub unsupported: &'static [(&'static str, Option<char>)],
}
