//! The process-wide eval lock.
//!
//! A leaf module, so that `Array` (which takes the lock to read data) does not depend on
//! `eval`, which needs `ArrayList`, which needs `Array`.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

/// Serializes everything that evaluates graphs or walks them: evaluation, data reads,
/// compiled calls (tracing walks the graphs of captured arrays) and graph dumps. MLX's
/// `eval` detaches the nodes it computes, so a concurrent walk of the same nodes would read
/// freed memory. Building new nodes needs no lock: it reads only shapes and dtypes.
static EVAL_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds `EVAL_LOCK` (a traced body may evaluate, and must not
    /// deadlock on the lock its compiled call holds).
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Holds the eval lock, unless this thread already held it when it asked.
pub(crate) struct EvalGuard(Option<MutexGuard<'static, ()>>);

impl Drop for EvalGuard {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            HELD.with(|h| h.set(false));
        }
    }
}

pub(crate) fn lock() -> EvalGuard {
    if HELD.with(Cell::get) {
        return EvalGuard(None);
    }
    // A panic while holding the lock cannot leave MLX half-updated (the shim catches its
    // exceptions), so a poisoned lock is still good to use.
    let guard = EVAL_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    HELD.with(|h| h.set(true));
    EvalGuard(Some(guard))
}
