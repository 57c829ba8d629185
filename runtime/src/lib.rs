//! The runtime of the `mlx` crate: MLX arrays, ops, evaluation, devices, memory and IO,
//! bound through a small C++ shim over MLX's C++ API.
//!
//! # Arrays are lazy
//!
//! Ops on [`Array`]s build a graph; nothing is computed until data is needed
//! ([`Array::to_vec`], [`Array::item`], printing) or [`eval`] is called:
//!
//! ```
//! use mlx_runtime::{Array, Dtype};
//!
//! let x = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
//! let y = (&x * 2.0 + 1.0).sum(-1, false);
//! assert_eq!(y.to_vec::<f32>().unwrap(), vec![8.0, 16.0]);
//! # let _ = Dtype::F32;
//! ```
//!
//! # Errors read like math
//!
//! An op that MLX rejects yields a failed array instead of panicking; everything built on
//! it fails the same way, and the error (op, operand shapes and dtypes, the line that
//! asked for it) comes out as `Err` where data is read:
//!
//! ```
//! use mlx_runtime::Array;
//!
//! let a = Array::zeros(&[2, 3], mlx_runtime::Dtype::F32);
//! let b = Array::zeros(&[4, 5], mlx_runtime::Dtype::F32);
//! let c = a.matmul(&b).exp() + 1.0; // no `?` needed on each line
//! let err = c.to_vec::<f32>().unwrap_err().to_string();
//! assert!(err.contains("matmul(float32[2, 3], float32[4, 5])"), "{err}");
//! ```
//!
//! # Step loops manage memory
//!
//! [`steps`] runs each iteration of a loop in a frame, evaluates what the iteration carried
//! out at its end and frees the rest, so model code never calls keep, free or eval; see
//! [`scope`] for how, and for a guide from manual `Keep`/`Free`/`Eval`/`AsyncEval` code.
//!
//! # Devices
//!
//! [`backend`] says what the linked MLX was built for, [`gpu_available`] whether a GPU is
//! there now, and [`preferred_device`] is the GPU where there is one, else the CPU; see
//! [`Device`].
//!
//! # Compiled functions
//!
//! [`Compiled`] traces a function of arrays with MLX's `compile`, once per input signature,
//! and replays the recorded graph; [`dump_graph`] prints a graph as stable text.

pub mod compile;
pub mod fast;
pub mod graph;
pub mod io;
pub mod memory;
pub mod module;
pub mod ops;
pub mod random;
pub mod scope;

mod array;
mod array_list;
mod creation;
mod device;
mod dtype;
mod error;
mod eval;
mod eval_lock;
mod graph_dump;
mod load_report;
mod registry;
mod sys;
mod trace_depth;

pub use array::Array;
pub use compile::Compiled;
pub use creation::Scalar;
pub use device::{
    backend, default_device, gpu_available, gpu_count, preferred_device, set_default_device,
    Backend, Device, DeviceInfo, DeviceProperty, ParseDeviceError,
};
pub use dtype::{Dtype, Element};
pub use error::{Error, Result};
pub use eval::{async_eval, eval, synchronize};
pub use graph_dump::dump_graph;
pub use module::Module;
pub use ops::{concatenate, stack, where_, Axes, ALL};
pub use scope::{steps, Steps};

/// The MLX library this crate runs on.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    /// MLX's version string, as the library reports it.
    pub mlx_version: String,
    /// Where the build found MLX (`MLX_DIR`, the Python mlx package, the pinned wheel).
    pub origin: &'static str,
    /// The directory of `libmlx`.
    pub lib_dir: &'static str,
    /// The BLAS behind float32 matmul on the CPU (OpenBLAS's own description when linked).
    pub blas: String,
    /// What the library was built for (`cpu`, `cuda`, `metal`). Whether a GPU is there to
    /// run on is [`gpu_available`]'s question, asked of the machine.
    pub backend: Backend,
}

/// Which MLX this binary runs on, and where it came from.
pub fn build_info() -> BuildInfo {
    // SAFETY: the shim returns MLX's static NUL-terminated version string.
    let version = unsafe { std::ffi::CStr::from_ptr(sys::mlxs_version()) };
    // SAFETY: the shim returns a static NUL-terminated description.
    let blas = unsafe { std::ffi::CStr::from_ptr(sys::mlxs_blas()) };
    BuildInfo {
        mlx_version: version.to_string_lossy().into_owned(),
        origin: env!("MLX_RS_ORIGIN"),
        lib_dir: env!("MLX_RS_LIBDIR"),
        blas: blas.to_string_lossy().trim().to_string(),
        backend: backend(),
    }
}
