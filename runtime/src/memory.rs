//! Memory statistics and limits of MLX's allocator.
//!
//! *Active* memory is held by live arrays; *cache* memory was freed by arrays and is kept
//! for reuse; *peak* is the highest active figure since the last [`reset_peak_memory`].

use crate::error::check;
use crate::sys;
use crate::Result;

fn read(call: unsafe extern "C" fn(*mut usize) -> i32) -> usize {
    let mut out = 0usize;
    // SAFETY: out-parameter. The getters cannot fail for a working allocator; a failure
    // reads as 0 rather than aborting a statistics query.
    let status = unsafe { call(&mut out) };
    if status == 0 {
        out
    } else {
        0
    }
}

/// Bytes held by live arrays.
pub fn active_memory() -> usize {
    read(sys::mlxs_active_memory)
}

/// The most bytes active at once since the process started or [`reset_peak_memory`].
pub fn peak_memory() -> usize {
    // MLX's reset sets its peak to zero, not to what is active; the peak since then is at
    // least what is active now.
    read(sys::mlxs_peak_memory).max(active_memory())
}

/// Bytes freed by arrays and kept by the allocator for reuse.
pub fn cache_memory() -> usize {
    read(sys::mlxs_cache_memory)
}

/// `Array` handles alive now, in every thread: each live (not failed) [`crate::Array`],
/// clones counted once each, including the tracers a graph function holds while it is
/// being traced (they are dropped when the trace ends). Unlike
/// [`crate::scope::live_report`], which counts only the arrays step loops track, this
/// counts every array Rust code holds, so a leak of arrays anywhere shows here as steady
/// growth. Arrays that MLX alone holds (the inputs of a pending graph, a compiled
/// function's recorded graph) are not counted: their memory shows in [`active_memory`].
///
/// One relaxed atomic add and subtract per handle keep the count, so it is always on.
pub fn live_arrays() -> usize {
    crate::array::live_handles()
}

/// Starts a new peak measurement from the current active memory.
#[track_caller]
pub fn reset_peak_memory() -> Result<()> {
    // SAFETY: no arguments.
    check("reset_peak_memory", unsafe {
        sys::mlxs_reset_peak_memory()
    })
}

/// Returns the allocator's cached memory to the system.
#[track_caller]
pub fn clear_cache() -> Result<()> {
    // SAFETY: no arguments.
    check("clear_cache", unsafe { sys::mlxs_clear_cache() })
}

/// The memory limit: past it, MLX waits for running work to free memory before
/// allocating more.
pub fn memory_limit() -> usize {
    read(sys::mlxs_memory_limit)
}

fn set(
    op: &'static str,
    limit: usize,
    call: unsafe extern "C" fn(usize, *mut usize) -> i32,
) -> Result<usize> {
    let mut previous = 0usize;
    // SAFETY: plain value and out-parameter.
    check(op, unsafe { call(limit, &mut previous) })?;
    Ok(previous)
}

/// Sets the memory limit (see [`memory_limit`]); returns the previous one.
#[track_caller]
pub fn set_memory_limit(bytes: usize) -> Result<usize> {
    set("set_memory_limit", bytes, sys::mlxs_set_memory_limit)
}

/// Caps the allocator's cache (0 disables caching); returns the previous cap.
#[track_caller]
pub fn set_cache_limit(bytes: usize) -> Result<usize> {
    set("set_cache_limit", bytes, sys::mlxs_set_cache_limit)
}

/// Sets how much memory may be wired (kept resident; Apple GPUs only, a no-op
/// elsewhere); returns the previous setting.
#[track_caller]
pub fn set_wired_limit(bytes: usize) -> Result<usize> {
    set("set_wired_limit", bytes, sys::mlxs_set_wired_limit)
}
