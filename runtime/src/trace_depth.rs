//! How deep this thread is in traced bodies.
//!
//! A leaf module, so that the step-loop registry (which must not track tracers) does not
//! depend on `compile`, which needs `ArrayList` and `Array`, which need the registry.

use std::cell::Cell;

thread_local! {
    /// Depth of traces running on this thread (a traced body may call compiled functions).
    static TRACING: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is inside a traced body: arrays created now are MLX's tracers.
pub fn is_tracing() -> bool {
    TRACING.with(|t| t.get() > 0)
}

/// Marks this thread as tracing until dropped.
pub(crate) struct Tracing;

impl Tracing {
    pub(crate) fn enter() -> Tracing {
        TRACING.with(|t| t.set(t.get() + 1));
        Tracing
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        TRACING.with(|t| t.set(t.get() - 1));
    }
}
