//! The runtime's error type.
//!
//! An op that MLX rejects does not return `Err` on the spot: it yields an [`Array`] that
//! carries the error (see [`Array::error`]), so model code reads like math. Every later op
//! on that array passes the first error along untouched, and it surfaces as `Err` at the
//! first place that needs data: [`crate::eval`], [`Array::to_vec`], [`Array::item`], and
//! saving.
//!
//! [`Array`]: crate::Array
//! [`Array::error`]: crate::Array::error
//! [`Array::to_vec`]: crate::Array::to_vec
//! [`Array::item`]: crate::Array::item

use std::fmt;
use std::panic::Location;
use std::path::PathBuf;

use crate::Dtype;

/// What went wrong, where in the caller's code, and with which operands.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An op rejected its operands (shape mismatch, bad axis, unsupported dtype, ...).
    #[error("{op}({operands}) at {location}: {message}")]
    Op {
        /// The op's name, as in this crate's API.
        op: &'static str,
        /// The operands' dtypes and shapes, e.g. `float32[2, 3], float32[4]`.
        operands: String,
        /// Why it failed, from MLX or from this crate's own checks.
        message: String,
        /// The line in the caller's code that asked for the op.
        location: &'static Location<'static>,
    },
    /// Data was read back as a Rust type that is not the array's dtype.
    #[error(
        "{op} at {location}: the array is {found}, not {expected} (convert with astype first)"
    )]
    DtypeMismatch {
        /// The reading function.
        op: &'static str,
        /// The dtype the Rust type stands for.
        expected: Dtype,
        /// The array's dtype.
        found: Dtype,
        /// The caller's line.
        location: &'static Location<'static>,
    },
    /// Evaluating, synchronizing, or a device or memory setting failed inside MLX.
    #[error("{op} at {location}: {message}")]
    Runtime {
        /// The failing call.
        op: &'static str,
        /// MLX's message.
        message: String,
        /// The caller's line.
        location: &'static Location<'static>,
    },
    /// A checkpoint does not fit a module: every missing, unexpected and mis-shaped tensor.
    #[error("{0}")]
    Load(crate::load_report::LoadReport),
    /// Reading or writing a file failed, or its content is not what it claims to be.
    #[error("{}{}: {message}", path.display(), TensorSuffix(tensor))]
    File {
        /// The file.
        path: PathBuf,
        /// The tensor concerned, when the problem is one tensor's.
        tensor: Option<String>,
        /// What is wrong.
        message: String,
    },
}

struct TensorSuffix<'a>(&'a Option<String>);

impl fmt::Display for TensorSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, ", tensor `{name}`"),
            None => Ok(()),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn file(
        path: impl Into<PathBuf>,
        tensor: Option<&str>,
        message: impl fmt::Display,
    ) -> Error {
        Error::File {
            path: path.into(),
            tensor: tensor.map(str::to_owned),
            message: message.to_string(),
        }
    }
}

/// The message of the shim's last failure on this thread.
pub(crate) fn last_error() -> String {
    let mut len = 0usize;
    // SAFETY: the shim returns a pointer to a thread-local buffer of `len` bytes that stays
    // valid until the next failing call on this thread; we copy it out at once.
    unsafe {
        let ptr = crate::sys::mlxs_last_error(&mut len);
        if ptr.is_null() || len == 0 {
            return "unknown error".to_string();
        }
        let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len);
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Turns a shim status into a `Result` for calls that produce no array.
#[track_caller]
pub(crate) fn check(op: &'static str, status: std::ffi::c_int) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(Error::Runtime {
            op,
            message: last_error(),
            location: Location::caller(),
        })
    }
}
