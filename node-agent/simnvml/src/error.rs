//! The crate's one error type. Everything that can fail on the Rust side — reading, parsing
//! and validating a machine description, finding the built library, installing a node — is
//! an [`Error`]. The C side never sees it: the exported functions turn failures into NVML
//! return codes (see `ffi`), because nothing may unwind or allocate errors across the C ABI.

use std::path::PathBuf;

/// Why a simulated machine could not be described, found or installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The text is not JSON of the description schema: bad syntax, a missing or unknown
    /// field, a wrong type. The message carries serde's line and column.
    #[error("machine description is not valid JSON for the schema: {0}")]
    Json(#[from] serde_json::Error),

    /// Well-formed JSON that describes an impossible machine (zero memory, an empty name,
    /// two GPUs with one UUID…). The message names the offending field.
    #[error("invalid machine description: {0}")]
    Invalid(String),

    /// A PCI bus id that is not `DOMAIN:BB:DD.F` in hex.
    #[error("invalid PCI bus id {value:?}: {reason} (want e.g. \"00000000:18:00.0\")")]
    PciBusId {
        /// The text as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file could not be read, written, copied or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A description file was read but its content is bad; `source` says how.
    #[error("{path}: {source}")]
    InFile {
        /// The description file.
        path: PathBuf,
        /// A [`Error::Json`], [`Error::Invalid`] or [`Error::PciBusId`].
        #[source]
        source: Box<Error>,
    },

    /// The built cdylib is not where [`crate::find_library`] looked.
    #[error(
        "simulated NVML library not found (looked for {}); build it with \
         `cargo build -p berth-simnvml` or set BERTH_SIMNVML_LIB to its path",
        display_paths(.searched)
    )]
    LibraryNotFound {
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}
