//! The `mlx` crate: what users depend on. It fronts the workspace: today the runtime
//! ([`Array`], ops, evaluation, memory, IO); the macros crate joins it here.
//!
//! The README follows; its examples run as doctests.
#![doc = include_str!("../README.md")]

pub use mlx_runtime::*;
