//! An owned `std::vector<mlx::core::array>` of the shim, for ops that take or return
//! several arrays.

use std::ffi::c_int;
use std::panic::Location;
use std::ptr::{self, NonNull};

use crate::array::describe;
use crate::error::last_error;
use crate::sys::{self, mlxs_vec};
use crate::{Array, Error, Result};

pub(crate) struct ArrayList(NonNull<mlxs_vec>);

impl Drop for ArrayList {
    fn drop(&mut self) {
        // SAFETY: we own the vector and free it once.
        unsafe { sys::mlxs_vec_free(self.0.as_ptr()) }
    }
}

impl ArrayList {
    /// An empty list.
    pub(crate) fn new() -> ArrayList {
        // SAFETY: no arguments; the result is a fresh vector or null.
        match NonNull::new(unsafe { sys::mlxs_vec_new() }) {
            Some(list) => ArrayList(list),
            // Out of memory: abort as Rust's own allocations do.
            None => std::alloc::handle_alloc_error(std::alloc::Layout::new::<[usize; 3]>()),
        }
    }

    /// A list of the given arrays, or the first error one of them carries.
    pub(crate) fn of<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<ArrayList> {
        let list = ArrayList::new();
        for array in arrays {
            let raw = array.raw().map_err(|e| Error::clone(e))?;
            // SAFETY: both handles are live.
            let status = unsafe { sys::mlxs_vec_push(list.0.as_ptr(), raw) };
            crate::error::check("array list", status)?;
        }
        Ok(list)
    }

    pub(crate) fn from_raw(list: NonNull<mlxs_vec>) -> ArrayList {
        ArrayList(list)
    }

    pub(crate) fn as_ptr(&self) -> *const mlxs_vec {
        self.0.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&self) -> *mut mlxs_vec {
        self.0.as_ptr()
    }

    /// New handles to the arrays of a vector the shim lends us.
    ///
    /// # Safety
    /// `list` is a live vector for the duration of the call.
    pub(crate) unsafe fn copy_from(list: *const mlxs_vec) -> Vec<Array> {
        // SAFETY: per the contract; each `get` returns a new handle we own.
        unsafe {
            let len = sys::mlxs_vec_len(list);
            (0..len)
                .map(|i| Array::from_raw(sys::mlxs_vec_get(list, i)))
                .collect()
        }
    }

    pub(crate) fn into_arrays(self) -> Vec<Array> {
        // SAFETY: we own the live vector until `self` drops, after the copies.
        unsafe { Self::copy_from(self.0.as_ptr()) }
    }
}

/// Runs a shim call that returns several arrays. On failure, returns the error instead (a
/// multi-output op cannot tell how many failed arrays to stand in for its outputs).
#[track_caller]
pub(crate) fn op_list(
    name: &'static str,
    inputs: &[&Array],
    call: impl FnOnce(&[*const sys::mlxs_array], *mut *mut mlxs_vec) -> c_int,
) -> Result<Vec<Array>> {
    let mut raws = Vec::with_capacity(inputs.len());
    for input in inputs {
        raws.push(input.raw().map_err(|e| Error::clone(e))?);
    }
    let mut out = ptr::null_mut();
    let status = call(&raws, &mut out);
    match NonNull::new(out) {
        Some(list) if status == 0 => Ok(ArrayList(list).into_arrays()),
        _ => Err(Error::Op {
            op: name,
            operands: describe(inputs),
            message: last_error(),
            location: Location::caller(),
        }),
    }
}
