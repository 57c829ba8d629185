//! Compiled functions: MLX traces a function of arrays once per input signature and
//! replays the recorded (simplified, fused) graph on later calls.
//!
//! [`Compiled`] is the runtime half of `#[mlx::graph]`. Its body is called with *tracers*:
//! arrays that stand for the inputs while MLX records the graph. A tracer has a shape and a
//! dtype but no data, so the body must not read data (`item`, `to_vec`, `eval`); arrays it
//! creates belong to MLX's trace, and [`is_tracing`] tells code (such as the memory
//! scoping of step loops) not to track them.
//!
//! MLX keys its cache on the inputs' shapes (unless shapeless), ndims and dtypes. Anything
//! else the body depends on must be fixed when the `Compiled` is made: one `Compiled` per
//! value of such static arguments.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe, Location};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::array_list::ArrayList;
use crate::error::last_error;
use crate::sys::{self, mlxs_closure, mlxs_vec};
use crate::trace_depth::Tracing;
use crate::{Array, Error, Result};

pub use crate::trace_depth::is_tracing;

/// The function a [`Compiled`] traces.
pub type Body = dyn Fn(&[Array]) -> Result<Vec<Array>> + Send + Sync;

/// A function compiled by MLX (or run eagerly, see [`set_eager`]).
pub struct Compiled {
    closure: NonNull<mlxs_closure>,
    body: Arc<Body>,
    traces: Arc<AtomicU64>,
}

// SAFETY: the closure is an immutable `std::function` over MLX's compile caches, which are
// per thread; the shim erases this function's entries from every thread's cache it was
// called on when it is freed; calls are serialized by the eval lock; the body is
// `Send + Sync`.
unsafe impl Send for Compiled {}
// SAFETY: as above; `call` takes `&self` and only reads the closure.
unsafe impl Sync for Compiled {}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: we own the closure and free it once; MLX then drops its cache entries and
        // releases the trace context.
        unsafe { sys::mlxs_closure_free(self.closure.as_ptr()) }
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("traces", &self.trace_count())
            .finish_non_exhaustive()
    }
}

struct TraceContext {
    body: Arc<Body>,
    traces: Arc<AtomicU64>,
}

impl Compiled {
    /// Compiles `body`. With `shapeless`, one trace serves inputs of any shape with the
    /// same ndims and dtypes (the body must then not depend on the shapes).
    #[track_caller]
    pub fn new(
        shapeless: bool,
        body: impl Fn(&[Array]) -> Result<Vec<Array>> + Send + Sync + 'static,
    ) -> Result<Compiled> {
        let body: Arc<Body> = Arc::new(body);
        let traces = Arc::new(AtomicU64::new(0));
        let context = Box::into_raw(Box::new(TraceContext {
            body: Arc::clone(&body),
            traces: Arc::clone(&traces),
        }));
        let mut closure = ptr::null_mut();
        // SAFETY: `trace` and `release` match the shim's contract for `context`, which the
        // shim owns from here on (it releases it even when compiling fails).
        let status = unsafe {
            sys::mlxs_compile(
                trace,
                context.cast(),
                release,
                c_int::from(shapeless),
                &mut closure,
            )
        };
        match NonNull::new(closure) {
            Some(closure) if status == 0 => Ok(Compiled {
                closure,
                body,
                traces,
            }),
            _ => Err(Error::Runtime {
                op: "compile",
                message: last_error(),
                location: Location::caller(),
            }),
        }
    }

    /// Runs the function: replays the graph recorded for these inputs' signature, tracing
    /// the body first if the signature is new. In eager mode, runs the body directly.
    ///
    /// A failed input, an error or failed output of the body, or a panic in the body comes
    /// back as `Err`.
    #[track_caller]
    pub fn call(&self, inputs: &[&Array]) -> Result<Vec<Array>> {
        let location = Location::caller();
        if is_eager() {
            let owned = inputs
                .iter()
                .map(|&a| a.check().cloned())
                .collect::<Result<Vec<Array>>>()?;
            let outputs = catch_unwind(AssertUnwindSafe(|| (self.body)(&owned)))
                .map_err(|payload| panicked(&*payload, location))??;
            return match outputs.iter().find_map(|a| a.error()) {
                Some(error) => Err(error.clone()),
                None => Ok(outputs),
            };
        }
        let list = ArrayList::of(inputs.iter().copied())?;
        let mut out = ptr::null_mut();
        TRACE_ERROR.with(|e| e.borrow_mut().take());
        let status = {
            let _guard = crate::eval_lock::lock();
            // SAFETY: live closure and list; on success the shim hands us a new vector we
            // own.
            unsafe { sys::mlxs_closure_call(self.closure.as_ptr(), list.as_ptr(), &mut out) }
        };
        match NonNull::new(out) {
            Some(list) if status == 0 => Ok(ArrayList::from_raw(list).into_arrays()),
            _ => Err(match TRACE_ERROR.with(|e| e.borrow_mut().take()) {
                Some(TraceFailure::Error(error)) => error,
                Some(TraceFailure::Panic(message)) => Error::Runtime {
                    op: "compiled call",
                    message,
                    location,
                },
                None => Error::Runtime {
                    op: "compiled call",
                    message: last_error(),
                    location,
                },
            }),
        }
    }

    /// How many times MLX has traced this function.
    pub fn trace_count(&self) -> u64 {
        self.traces.load(Ordering::Relaxed)
    }
}

/// Traces by every [`Compiled`] of the process so far.
pub fn trace_count() -> u64 {
    TRACES.load(Ordering::Relaxed)
}

static TRACES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Why the last trace on this thread failed, in full, for `call` to return.
    static TRACE_ERROR: RefCell<Option<TraceFailure>> = const { RefCell::new(None) };
}

const MODE_UNSET: u8 = 0;
const MODE_COMPILED: u8 = 1;
const MODE_EAGER: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

/// Makes every [`Compiled`] run its body directly (`true`) or compile again (`false`), for
/// debugging: eager bodies see real arrays, so printing and reading data work inside them.
/// The environment variable `MLX_RS_EAGER=1` sets the starting mode.
pub fn set_eager(eager: bool) {
    MODE.store(
        if eager { MODE_EAGER } else { MODE_COMPILED },
        Ordering::Relaxed,
    );
}

/// Whether compiled functions run eagerly (see [`set_eager`]).
pub fn is_eager() -> bool {
    match MODE.load(Ordering::Relaxed) {
        MODE_EAGER => true,
        MODE_COMPILED => false,
        _ => {
            let eager = std::env::var("MLX_RS_EAGER").is_ok_and(|v| !v.is_empty() && v != "0");
            // A concurrent `set_eager` wins over the environment.
            let _ = MODE.compare_exchange(
                MODE_UNSET,
                if eager { MODE_EAGER } else { MODE_COMPILED },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            MODE.load(Ordering::Relaxed) == MODE_EAGER
        }
    }
}

/// Why a trace failed; a panic gets the caller's location in `call`.
enum TraceFailure {
    Error(Error),
    Panic(String),
}

fn stash(failure: TraceFailure) {
    TRACE_ERROR.with(|e| *e.borrow_mut() = Some(failure));
}

fn panicked(payload: &(dyn Any + Send), location: &'static Location<'static>) -> Error {
    Error::Runtime {
        op: "compiled call",
        message: format!("the function panicked: {}", panic_message(payload)),
        location,
    }
}

/// The message a panic was raised with (its payload as `&str` or `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// Called by MLX, on the calling thread, to trace the body.
unsafe extern "C" fn trace(
    ctx: *mut c_void,
    inputs: *const mlxs_vec,
    outputs: *mut mlxs_vec,
) -> c_int {
    // SAFETY: `ctx` is the `TraceContext` given to `mlxs_compile`, alive until `release`.
    let context = unsafe { &*ctx.cast::<TraceContext>() };
    // Nothing may unwind into MLX: a panic becomes an error return.
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _tracing = Tracing::enter();
        context.traces.fetch_add(1, Ordering::Relaxed);
        TRACES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: MLX hands us a live vector of tracers for the duration of the call.
        let inputs = unsafe { ArrayList::copy_from(inputs) };
        (context.body)(&inputs)
    }));
    let outputs_result = match result {
        Ok(Ok(arrays)) => arrays,
        Ok(Err(error)) => {
            stash(TraceFailure::Error(error));
            return 1;
        }
        Err(payload) => {
            stash(TraceFailure::Panic(format!(
                "the traced function panicked: {}",
                panic_message(&*payload)
            )));
            return 1;
        }
    };
    for array in &outputs_result {
        match array.raw() {
            Ok(raw) => {
                // SAFETY: live vector from MLX and live handle.
                if unsafe { sys::mlxs_vec_push(outputs, raw) } != 0 {
                    stash(TraceFailure::Error(Error::Runtime {
                        op: "compiled call",
                        message: last_error(),
                        location: Location::caller(),
                    }));
                    return 1;
                }
            }
            Err(error) => {
                stash(TraceFailure::Error(Error::clone(error)));
                return 1;
            }
        }
    }
    0
}

unsafe extern "C" fn release(ctx: *mut c_void) {
    // SAFETY: `ctx` came from `Box::into_raw` in `Compiled::new`; the shim releases it once.
    drop(unsafe { Box::from_raw(ctx.cast::<TraceContext>()) });
}
