//! A stable text form of a lazy graph, for debugging and snapshot tests.

use std::ptr;

use crate::array_list::ArrayList;
use crate::error::check;
use crate::sys;
use crate::{Array, Result};

/// The graph that computes `outputs`, one line per node, inputs before their users:
///
/// ```text
/// %0 = input : float32[2, 3]
/// %1 = Exp(%0) : float32[2, 3]
/// %2 = Add(%1, %0) : float32[2, 3]
/// return %2
/// ```
///
/// Nodes are numbered by a depth-first walk from the outputs, so the same graph prints the
/// same text in every run. Leaves (arrays without an op: data, evaluated arrays) print as
/// `input`.
#[track_caller]
pub fn dump_graph(outputs: &[&Array]) -> Result<String> {
    let list = ArrayList::of(outputs.iter().copied())?;
    let mut s = ptr::null();
    let mut len = 0usize;
    let _guard = crate::eval_lock::lock();
    // SAFETY: live list; on success the shim points `s` at `len` bytes of a thread-local
    // string that stays valid until its next call on this thread, and we copy it at once.
    check("dump_graph", unsafe {
        sys::mlxs_graph_dump(list.as_ptr(), &mut s, &mut len)
    })?;
    // SAFETY: see above.
    let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
    Ok(String::from_utf8_lossy(bytes).into_owned())
}
