//! Computing arrays (where they run: `device.rs`).

use crate::array_list::ArrayList;
use crate::error::check;
use crate::eval_lock::lock;
use crate::sys;
use crate::{Array, Result};

/// Computes `arrays` (and whatever they depend on), waiting for the result.
///
/// Returns the error of the first failed array, if any.
#[track_caller]
pub fn eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    run("eval", arrays, sys::mlxs_eval)
}

/// Schedules the computation of `arrays` and returns at once; reading their data later
/// waits for it. Lets the CPU build the next graph while this one computes.
#[track_caller]
pub fn async_eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    run("async_eval", arrays, sys::mlxs_async_eval)
}

#[track_caller]
fn run<'a>(
    op: &'static str,
    arrays: impl IntoIterator<Item = &'a Array>,
    call: unsafe extern "C" fn(*const sys::mlxs_vec) -> i32,
) -> Result<()> {
    let list = ArrayList::of(arrays)?;
    let _guard = lock();
    // SAFETY: live list of live handles.
    check(op, unsafe { call(list.as_ptr()) })
}

/// Waits until everything scheduled on the default stream has finished.
#[track_caller]
pub fn synchronize() -> Result<()> {
    let _guard = lock();
    // SAFETY: no arguments.
    check("synchronize", unsafe { sys::mlxs_synchronize() })
}

impl Array {
    /// Computes this array (see [`eval`]).
    #[track_caller]
    pub fn eval(&self) -> Result<()> {
        eval([self])
    }
}
