//! [`Array`]: one MLX array owned by Rust.

use std::ffi::c_int;
use std::fmt;
use std::panic::Location;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::last_error;
use crate::sys::{self, mlxs_array};
use crate::{Dtype, Element, Error, Result};

/// An MLX array: a node of a lazy computation graph, or its computed data.
///
/// Ops build the graph; nothing is computed until the data is needed ([`crate::eval`],
/// [`Array::to_vec`], [`Array::item`], printing) or asked for. `Clone` shares the node
/// (a reference-count bump), it does not copy data. Dropping the last handle to a node
/// releases it and, once no graph refers to it, its memory.
///
/// An op that fails yields a *failed* array that carries the [`Error`] (op, operand
/// shapes and dtypes, the caller's line) instead of panicking; ops on it fail with the
/// same error, which surfaces as `Err` when data is read or evaluated. A failed array
/// describes itself as an empty `float32` scalar: check [`Array::error`] when in doubt.
///
/// # Threads
///
/// `Array` is `Send` and `Sync`: MLX's array handles are reference counted atomically and
/// building graphs from shared inputs (weights used by a thread pool) is safe. Evaluation
/// and data reads are serialized process-wide, because MLX's scheduler and default streams
/// are process-wide state.
pub struct Array {
    repr: Repr,
}

enum Repr {
    /// A handle we own, and its entry in the step-loop registry if a loop tracks it.
    Live(NonNull<mlxs_array>, Option<crate::registry::TrackId>),
    Failed(Arc<Error>),
}

// SAFETY: an `mlxs_array` is an `mlx::core::array`, a shared pointer with atomic reference
// counts; the node it points to is immutable once built except for evaluation, which this
// crate serializes behind `eval_lock::EVAL_LOCK`.
unsafe impl Send for Array {}
// SAFETY: as above; `&Array` only reads metadata or builds new nodes that reference it.
unsafe impl Sync for Array {}

/// Live handles ([`Repr::Live`]) of the process: one more for each made by
/// [`Array::from_raw`] (every live handle, clones included, is made there), one fewer for
/// each dropped.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Live `Array` handles in the process (see [`crate::memory::live_arrays`]).
pub(crate) fn live_handles() -> usize {
    LIVE.load(Ordering::Relaxed)
}

impl Drop for Array {
    fn drop(&mut self) {
        if let Repr::Live(ptr, tracked) = self.repr {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            if let Some(id) = tracked {
                crate::registry::untrack(id);
            }
            // SAFETY: we own this handle and drop it once.
            unsafe { sys::mlxs_array_free(ptr.as_ptr()) }
        }
    }
}

impl Clone for Array {
    fn clone(&self) -> Array {
        match &self.repr {
            // SAFETY: `ptr` is a live handle; the clone is a new handle to the same node.
            Repr::Live(ptr, _) => unsafe { Array::from_raw(sys::mlxs_array_clone(ptr.as_ptr())) },
            Repr::Failed(error) => Array {
                repr: Repr::Failed(Arc::clone(error)),
            },
        }
    }
}

impl AsRef<Array> for Array {
    fn as_ref(&self) -> &Array {
        self
    }
}

impl Array {
    /// Takes ownership of a handle the shim just returned.
    ///
    /// # Safety
    /// `ptr` is a live handle that nothing else owns (or null, which the shim never
    /// returns on success; it becomes a failed array rather than undefined behaviour).
    pub(crate) unsafe fn from_raw(ptr: *mut mlxs_array) -> Array {
        match NonNull::new(ptr) {
            Some(ptr) => {
                LIVE.fetch_add(1, Ordering::Relaxed);
                Array {
                    repr: Repr::Live(ptr, crate::registry::track(ptr.as_ptr())),
                }
            }
            None => Array::failed(Error::Runtime {
                op: "shim",
                message: "the shim returned no array".into(),
                location: Location::caller(),
            }),
        }
    }

    pub(crate) fn failed(error: Error) -> Array {
        Array {
            repr: Repr::Failed(Arc::new(error)),
        }
    }

    /// The live handle, or the error this array carries.
    pub(crate) fn raw(&self) -> Result<*const mlxs_array, &Arc<Error>> {
        match &self.repr {
            Repr::Live(ptr, _) => Ok(ptr.as_ptr()),
            Repr::Failed(error) => Err(error),
        }
    }

    /// The error this array carries, if an op that built it failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.repr {
            Repr::Live(..) => None,
            Repr::Failed(error) => Some(error),
        }
    }

    /// `Ok` for a live array, the carried error otherwise.
    pub fn check(&self) -> Result<&Array> {
        match &self.repr {
            Repr::Live(..) => Ok(self),
            Repr::Failed(error) => Err(Error::clone(error)),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self.raw() {
            Ok(ptr) => {
                // SAFETY: live handle.
                let code = unsafe { sys::mlxs_array_dtype(ptr) };
                // The shim maps every dtype of the MLX it was compiled against to a code
                // of `Dtype::ALL`; `F32` stands in only if MLX gains a dtype we don't know.
                Dtype::from_code(code).unwrap_or(Dtype::F32)
            }
            Err(_) => Dtype::F32,
        }
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[i32] {
        match self.raw() {
            // SAFETY: the shape lives inside the node this handle keeps alive, and a node's
            // shape never changes, so the slice is valid for as long as `&self`.
            Ok(ptr) => unsafe {
                let ndim = sys::mlxs_array_ndim(ptr);
                if ndim == 0 {
                    &[]
                } else {
                    std::slice::from_raw_parts(sys::mlxs_array_shape(ptr), ndim)
                }
            },
            Err(_) => &[],
        }
    }

    /// The size of one axis; negative axes count from the end. `None` if out of range.
    pub fn dim(&self, axis: i32) -> Option<i32> {
        let shape = self.shape();
        let n = shape.len() as i32;
        let axis = if axis < 0 { axis + n } else { axis };
        usize::try_from(axis)
            .ok()
            .and_then(|a| shape.get(a))
            .copied()
    }

    /// The number of axes.
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// The number of elements.
    pub fn size(&self) -> usize {
        match self.raw() {
            // SAFETY: live handle.
            Ok(ptr) => unsafe { sys::mlxs_array_size(ptr) },
            Err(_) => 0,
        }
    }

    /// The bytes of the array's elements.
    pub fn nbytes(&self) -> usize {
        match self.raw() {
            // SAFETY: live handle.
            Ok(ptr) => unsafe { sys::mlxs_array_nbytes(ptr) },
            Err(_) => 0,
        }
    }

    /// Whether the data has been computed (or scheduled by [`crate::async_eval`]), so that
    /// no pending graph hangs off this array.
    pub fn is_evaluated(&self) -> bool {
        match self.raw() {
            Ok(ptr) => {
                // Evaluation on another thread writes the status this reads.
                let _guard = crate::eval_lock::lock();
                // SAFETY: live handle.
                unsafe { sys::mlxs_array_is_evaluated(ptr) != 0 }
            }
            Err(_) => false,
        }
    }

    /// Evaluates the array and copies its elements out, row-major.
    ///
    /// `T` must be the array's element type exactly; convert with [`Array::astype`] first.
    #[track_caller]
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.read("to_vec", Location::caller())
    }

    /// The single element of a one-element array (any shape), evaluated.
    #[track_caller]
    pub fn item<T: Element>(&self) -> Result<T> {
        let location = Location::caller();
        if let Some(error) = self.error() {
            return Err(error.clone());
        }
        if self.size() != 1 {
            return Err(Error::Op {
                op: "item",
                operands: describe(&[self]),
                message: format!(
                    "item() needs exactly one element, the array has {}",
                    self.size()
                ),
                location,
            });
        }
        let values = self.read::<T>("item", location)?;
        Ok(values[0])
    }

    /// The raw bytes of the evaluated array, row-major.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let ptr = self.raw().map_err(|e| Error::clone(e))?;
        let mut out = allocate::<u8>(self.nbytes(), "to_bytes", Location::caller())?;
        let _guard = crate::eval_lock::lock();
        // SAFETY: `out` has exactly `nbytes` bytes, which the shim checks.
        let status = unsafe { sys::mlxs_array_read(ptr, out.as_mut_ptr().cast(), out.len()) };
        crate::error::check("to_bytes", status)?;
        Ok(out)
    }

    fn read<T: Element>(
        &self,
        op: &'static str,
        location: &'static Location<'static>,
    ) -> Result<Vec<T>> {
        let ptr = self.raw().map_err(|e| Error::clone(e))?;
        let dtype = self.dtype();
        if dtype != T::DTYPE {
            return Err(Error::DtypeMismatch {
                op,
                expected: T::DTYPE,
                found: dtype,
                location,
            });
        }
        let len = self.size();
        if T::DTYPE == Dtype::Bool {
            // MLX's bool bytes are 0 or 1 for everything it computes; normalize anyway, as a
            // Rust `bool` of any other value is undefined behaviour.
            let mut bytes = allocate::<u8>(len, op, location)?;
            self.read_into(ptr, bytes.as_mut_ptr().cast(), len, op, location)?;
            let mut out = allocate::<T>(len, op, location)?;
            for (slot, byte) in out.iter_mut().zip(bytes) {
                // SAFETY: `T` is `bool` (its dtype is Bool), and 0/1 are valid bools.
                *slot = unsafe { std::mem::transmute_copy::<u8, T>(&u8::from(byte != 0)) };
            }
            return Ok(out);
        }
        let mut out = allocate::<T>(len, op, location)?;
        self.read_into(
            ptr,
            out.as_mut_ptr().cast(),
            len * std::mem::size_of::<T>(),
            op,
            location,
        )?;
        Ok(out)
    }

    fn read_into(
        &self,
        ptr: *const mlxs_array,
        dst: *mut std::ffi::c_void,
        nbytes: usize,
        op: &'static str,
        location: &'static Location<'static>,
    ) -> Result<()> {
        let _guard = crate::eval_lock::lock();
        // SAFETY: `dst` has room for `nbytes` bytes, which the shim checks against the array.
        let status = unsafe { sys::mlxs_array_read(ptr, dst, nbytes) };
        if status != 0 {
            return Err(Error::Runtime {
                op,
                message: last_error(),
                location,
            });
        }
        Ok(())
    }
}

/// A zeroed vector of `len` elements, or an error if the memory cannot be had (reading an
/// array far larger than memory is a bad input, not a reason to abort).
fn allocate<T: Element>(
    len: usize,
    op: &'static str,
    location: &'static Location<'static>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|e| Error::Runtime {
        op,
        message: format!("cannot allocate {len} elements to read the array into: {e}"),
        location,
    })?;
    out.resize(len, T::default());
    Ok(out)
}

impl fmt::Display for Array {
    /// Prints like MLX (`array([1, 2], dtype=int32)`), evaluating the array.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ptr = match self.raw() {
            Ok(ptr) => ptr,
            Err(error) => return write!(f, "array(<failed: {error}>)"),
        };
        let _guard = crate::eval_lock::lock();
        let mut s = ptr::null();
        let mut len = 0usize;
        // SAFETY: live handle; on success the shim points `s` at `len` bytes of a
        // thread-local string that stays valid until its next call on this thread.
        let status = unsafe { sys::mlxs_array_to_string(ptr, &mut s, &mut len) };
        if status != 0 {
            return write!(f, "array(<evaluation failed: {}>)", last_error());
        }
        // SAFETY: see above.
        let bytes = unsafe { std::slice::from_raw_parts(s.cast::<u8>(), len) };
        f.write_str(&String::from_utf8_lossy(bytes))
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `float32[2, 3], int32[]`: the operands of an op, for error messages.
pub(crate) fn describe(arrays: &[&Array]) -> String {
    arrays
        .iter()
        .map(|a| match a.error() {
            Some(_) => "<failed>".to_string(),
            None => format!("{}{:?}", a.dtype(), a.shape()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The most inputs any single-output op of the shim takes.
const MAX_INPUTS: usize = 8;

/// Builds one array through the shim.
///
/// `inputs` are the op's array operands (`None` for an absent optional one); `call` gets
/// their raw handles (null for `None`) and the out-parameter. If an input already failed,
/// its error is passed on without calling MLX; if MLX rejects the op, the result is a
/// failed array naming the op, the operands and the caller's line.
#[track_caller]
pub(crate) fn op(
    name: &'static str,
    inputs: &[Option<&Array>],
    call: impl FnOnce(&[*const mlxs_array], *mut *mut mlxs_array) -> c_int,
) -> Array {
    debug_assert!(inputs.len() <= MAX_INPUTS);
    let mut raws = [ptr::null::<mlxs_array>(); MAX_INPUTS];
    for (slot, input) in raws.iter_mut().zip(inputs) {
        if let Some(array) = input {
            match array.raw() {
                Ok(ptr) => *slot = ptr,
                Err(error) => {
                    return Array {
                        repr: Repr::Failed(Arc::clone(error)),
                    }
                }
            }
        }
    }
    let mut out = ptr::null_mut();
    let status = call(&raws[..inputs.len()], &mut out);
    if status == 0 {
        // SAFETY: on success the shim hands us a new handle we own.
        unsafe { Array::from_raw(out) }
    } else {
        let present: Vec<&Array> = inputs.iter().flatten().copied().collect();
        Array::failed(Error::Op {
            op: name,
            operands: describe(&present),
            message: last_error(),
            location: Location::caller(),
        })
    }
}

/// A failed array for an argument this crate rejects before calling MLX.
#[track_caller]
pub(crate) fn invalid(name: &'static str, inputs: &[&Array], message: impl Into<String>) -> Array {
    if let Some(error) = inputs.iter().find_map(|a| a.raw().err()) {
        return Array {
            repr: Repr::Failed(Arc::clone(error)),
        };
    }
    Array::failed(Error::Op {
        op: name,
        operands: describe(inputs),
        message: message.into(),
        location: Location::caller(),
    })
}
