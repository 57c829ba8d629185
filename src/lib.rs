//! The `mlx` crate: what users depend on. It fronts the workspace: the runtime
//! ([`Array`], ops, evaluation, step loops, compiled functions, IO) and the macros
//! (`#[derive(Module)]`).
//!
//! The README follows; its examples run as doctests.
#![doc = include_str!("../README.md")]

pub use mlx_macros::{graph, Module};
pub use mlx_runtime::*;
