//! Automatic memory scoping of step loops.
//!
//! A step loop ([`steps`]) runs each iteration in a *frame*. While a frame is open on a
//! thread, every array that thread creates is registered in it, and leaves it when dropped.
//! When the body ends, Rust has already dropped its temporaries, so the arrays of the frame
//! still alive are exactly what the iteration carried out: assigned to variables or fields
//! outside the loop, kept in an `Option`, pushed into a `Vec`. That is the loop's *Keep set*.
//! At the boundary the runtime evaluates exactly that set in one call (`eval`, or
//! `async_eval` to overlap building the next graph with computing this one) and hands the
//! survivors to the enclosing frame. The lazy graph never grows across iterations, and
//! everything else has been released.
//!
//! Arrays created while a graph is traced ([`crate::compile::is_tracing`]) belong to MLX and
//! are never registered. Arrays created outside any loop (weights, inputs) are not tracked,
//! and neither are arrays other threads create while the loop runs (frames belong to the
//! thread of their loop): state computed on a thread pool must be evaluated explicitly.
//! An evaluation that fails at a boundary is logged through `tracing`; the failed arrays
//! themselves carry the error to whoever reads them.
//!
//! # From manual memory management
//!
//! Ported from a runtime where every loop calls `Keep`, `Free`, `Eval` and `AsyncEval` by
//! hand (such as the seed's Go package):
//!
//! | manual                                  | here                                            |
//! |-----------------------------------------|-------------------------------------------------|
//! | `Keep(cache...)` each iteration         | nothing: whatever outlives the body is kept     |
//! | `x.Free()`                              | nothing: dropping the last handle frees it      |
//! | `Eval(token)` at the end of the body    | nothing: the boundary evaluates the Keep set    |
//! | `AsyncEval(token)`                      | `steps(..).async_eval()`                        |
//! | `Eval(x)` in the middle of a body       | [`crate::eval`]`([&x])`, still available        |
//!
//! ```
//! # extern crate mlx_runtime as mlx;
//! use mlx::{Array, Dtype};
//!
//! let w = Array::full(&[4], 0.5, Dtype::F32);
//! let mut state = Array::zeros(&[4], Dtype::F32);
//! for _step in mlx::steps(0..100) {
//!     state = &state * &w + 1.0; // carried: evaluated at each boundary
//! }
//! assert!(state.is_evaluated());
//! assert!((state.to_vec::<f32>()?[0] - 2.0).abs() < 1e-5);
//! # Ok::<(), mlx::Error>(())
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::array_list::ArrayList;
use crate::error::check;
use crate::registry::{self, current_frame, scan, set_current_frame, ROOT};
use crate::sys::{self, mlxs_array};
use crate::Dtype;

static NEXT_FRAME: AtomicU64 = AtomicU64::new(1);

fn new_frame_id() -> u64 {
    NEXT_FRAME.fetch_add(1, Ordering::Relaxed)
}

/// Hands every array of frame `from` to frame `to`.
fn reparent(from: u64, to: u64) {
    scan(from, |entry| entry.frame = to);
}

/// The count and bytes of the arrays of `frame`.
fn frame_size(frame: u64) -> (usize, usize) {
    scan(frame, |_| {})
}

thread_local! {
    /// Open frames of this thread, outermost first.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// How a step loop evaluates its Keep set at each boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// Wait until the Keep set is computed.
    Eval,
    /// Schedule the Keep set and go on building the next iteration's graph while it
    /// computes.
    AsyncEval,
    /// Schedule the Keep set, then wait for the previous iteration's: the next iteration's
    /// graph is built while this one computes, and at most one iteration is queued behind
    /// the one computing. For loops whose body reads nothing it computed (a sampler's
    /// latents), which an [`AsyncEval`](Boundary::AsyncEval) loop would queue without
    /// bound. Reports describe computed iterations, so each comes one boundary late and
    /// the last when the loop ends.
    Pipelined,
}

/// What one iteration of a step loop carried out, and memory at its boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepStats {
    /// The iteration, counting from 0.
    pub step: usize,
    /// Arrays in the Keep set: those the iteration created that are still alive at its
    /// end. The boundary evaluates exactly these.
    pub kept: usize,
    /// Their bytes.
    pub kept_bytes: usize,
    /// Arrays created by any iteration of this loop that are still alive: the loop's
    /// carried state. Steady in a healthy loop (each step replaces the last step's state).
    pub carried: usize,
    /// Their bytes.
    pub carried_bytes: usize,
    /// Active memory after the boundary's evaluation.
    pub active_bytes: usize,
    /// Peak memory during the iteration (the peak is reset at each boundary).
    pub peak_bytes: usize,
    /// Time from the start of the iteration to the end of its boundary; in a
    /// [`Pipelined`](Boundary::Pipelined) loop, from the boundary before (the first
    /// iteration: its start) to its own, and for the last iteration on to its completion.
    pub elapsed: Duration,
}

/// An open frame; closing it (explicitly or on drop) hands its arrays to the parent.
struct Frame {
    id: u64,
    parent: u64,
}

impl Frame {
    /// Opens a frame on this thread whose survivors go to `parent`.
    fn open(parent: u64) -> Frame {
        let id = new_frame_id();
        set_current_frame(id);
        STACK.with(|s| s.borrow_mut().push(id));
        Frame { id, parent }
    }

    /// The frame's live arrays, handed to the parent frame; returns new handles to them.
    fn take_survivors(&self) -> (ArrayList, usize, usize) {
        let list = ArrayList::new();
        let (count, bytes) = scan(self.id, |entry| {
            entry.frame = self.parent;
            // SAFETY: the entry exists, so its array (and handle) is alive; pushing copies
            // the MLX array, so the list stays valid after the lock is released. A failed
            // push (out of memory) leaves that array lazy.
            let _ =
                unsafe { sys::mlxs_vec_push(list.as_mut_ptr(), entry.handle as *const mlxs_array) };
        });
        (list, count, bytes)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // Survivors that nobody evaluated (the loop ended early) stay lazy, in the parent.
        reparent(self.id, self.parent);
        STACK.with(|s| {
            let mut stack = s.borrow_mut();
            if let Some(pos) = stack.iter().rposition(|&f| f == self.id) {
                stack.remove(pos);
            }
            set_current_frame(stack.last().copied().unwrap_or(ROOT));
        });
    }
}

/// A step loop over `iter`: see the [module documentation](self).
///
/// ```
/// # extern crate mlx_runtime as mlx;
/// let mut x = mlx::Array::ones(&[2], mlx::Dtype::F32);
/// for _ in mlx::steps(0..10).async_eval().on_boundary(|s| assert!(s.kept <= 1)) {
///     x = (&x + &x).maximum(1.0);
/// }
/// assert_eq!(x.to_vec::<f32>()?, vec![1024.0, 1024.0]);
/// # Ok::<(), mlx::Error>(())
/// ```
pub fn steps<I: IntoIterator>(iter: I) -> Steps<I::IntoIter> {
    Steps {
        inner: iter.into_iter(),
        carried: new_frame_id(),
        outer: current_frame(),
        boundary: Boundary::Eval,
        frame: None,
        step: 0,
        started: Instant::now(),
        on_boundary: None,
        pending: None,
        growth: Growth::default(),
        _not_send: PhantomData,
    }
}

/// Called with each iteration's stats.
type BoundaryHook = Box<dyn FnMut(&StepStats)>;

/// The iterator of [`steps`]. Frames belong to the thread that opened them, so a `Steps`
/// stays on its thread.
pub struct Steps<I> {
    inner: I,
    /// The pseudo-frame holding what earlier iterations carried out; handed to `outer`
    /// when the loop ends.
    carried: u64,
    /// The frame that was current when the loop was made.
    outer: u64,
    boundary: Boundary,
    frame: Option<Frame>,
    step: usize,
    started: Instant,
    on_boundary: Option<BoundaryHook>,
    /// A pipelined loop's last scheduled iteration, reported once it has computed.
    pending: Option<Scheduled>,
    growth: Growth,
    _not_send: PhantomData<*const ()>,
}

impl<I> Steps<I> {
    /// Evaluates the Keep set with `async_eval` at each boundary.
    pub fn async_eval(mut self) -> Self {
        self.boundary = Boundary::AsyncEval;
        self
    }

    /// Evaluates the Keep set as [`Boundary::Pipelined`] says: scheduled at each boundary,
    /// waited for at the next.
    pub fn pipelined(mut self) -> Self {
        self.boundary = Boundary::Pipelined;
        self
    }

    /// Calls `f` with each iteration's [`StepStats`] after its boundary. The peak memory
    /// statistic is reset at each boundary of such a loop.
    pub fn on_boundary(mut self, f: impl FnMut(&StepStats) + 'static) -> Self {
        self.on_boundary = Some(Box::new(f));
        self
    }

    /// Closes the current iteration: evaluates its Keep set and reports it, or, pipelined,
    /// schedules it and reports the one before.
    fn finish_step(&mut self, frame: Frame) {
        let (survivors, kept, kept_bytes) = frame.take_survivors();
        drop(frame);
        let mut scheduled = Scheduled {
            survivors,
            step: self.step,
            kept,
            kept_bytes,
            elapsed: Duration::ZERO,
        };
        self.step += 1;
        let eval = match self.boundary {
            Boundary::Eval => sys::mlxs_eval,
            Boundary::AsyncEval | Boundary::Pipelined => sys::mlxs_async_eval,
        };
        scheduled.evaluate(eval);
        scheduled.elapsed = self.started.elapsed();
        if self.boundary != Boundary::Pipelined {
            self.report(scheduled);
            return;
        }
        // Scheduling returns once little of the iteration is left to run (MLX lets only a
        // few command batches wait), so the time between boundaries is the iteration's.
        self.started = Instant::now();
        if let Some(previous) = self.pending.replace(scheduled) {
            previous.evaluate(sys::mlxs_eval);
            self.report(previous);
        }
    }

    /// A pipelined loop's end: waits for its last iteration, whose time includes the wait,
    /// and reports it.
    fn finish_pipeline(&mut self) {
        if let Some(mut last) = self.pending.take() {
            let waited = Instant::now();
            last.evaluate(sys::mlxs_eval);
            last.elapsed += waited.elapsed();
            self.report(last);
        }
    }

    /// The boundary's bookkeeping for an evaluated iteration: the growth check, then the
    /// hook's stats.
    fn report(&mut self, scheduled: Scheduled) {
        let Scheduled {
            survivors,
            step,
            kept,
            kept_bytes,
            elapsed,
        } = scheduled;
        drop(survivors);
        let (carried, carried_bytes) = frame_size(self.carried);
        self.growth.observe(step, carried, carried_bytes);
        // Memory statistics take MLX's allocator lock, which the worker thread still holds
        // while it releases this step's buffers: only a loop that asks for them pays.
        if let Some(f) = &mut self.on_boundary {
            let stats = StepStats {
                step,
                kept,
                kept_bytes,
                carried,
                carried_bytes,
                active_bytes: crate::memory::active_memory(),
                peak_bytes: crate::memory::peak_memory(),
                elapsed,
            };
            let _ = crate::memory::reset_peak_memory();
            f(&stats);
        }
    }
}

/// An iteration's Keep set, handed to MLX at its boundary.
struct Scheduled {
    survivors: ArrayList,
    step: usize,
    kept: usize,
    kept_bytes: usize,
    elapsed: Duration,
}

impl Scheduled {
    /// Runs `eval` (MLX's `eval` or `async_eval`) on the Keep set; a failure is logged, and
    /// the failed arrays carry it to whoever reads them.
    fn evaluate(&self, eval: unsafe extern "C" fn(*const sys::mlxs_vec) -> std::ffi::c_int) {
        let evaluated = {
            let _guard = crate::eval_lock::lock();
            // SAFETY: a live list of live arrays.
            check("step boundary", unsafe { eval(self.survivors.as_ptr()) })
        };
        if let Err(error) = evaluated {
            tracing::error!(step = self.step, %error, "evaluating the step loop's Keep set failed");
        }
    }
}

impl<I: Iterator> Iterator for Steps<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if let Some(frame) = self.frame.take() {
            self.finish_step(frame);
        }
        let Some(item) = self.inner.next() else {
            self.finish_pipeline();
            return None;
        };
        if self.boundary != Boundary::Pipelined || self.step == 0 {
            self.started = Instant::now();
        }
        if self.step == 0 && self.on_boundary.is_some() {
            let _ = crate::memory::reset_peak_memory();
        }
        self.frame = Some(Frame::open(self.carried));
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<I> Drop for Steps<I> {
    fn drop(&mut self) {
        // An iteration cut short (break, `?`, panic) keeps its survivors, unevaluated.
        drop(self.frame.take());
        reparent(self.carried, self.outer);
    }
}

/// Watches the carried state for steady growth: the classic leak of pushing each iteration's
/// lazy arrays into an outer `Vec`.
#[derive(Default)]
struct Growth {
    last: Option<usize>,
    growing_for: usize,
    warned: bool,
}

impl Growth {
    /// Boundaries in a row with more carried arrays than the one before, before warning.
    const WARN_AFTER: usize = 3;

    fn observe(&mut self, step: usize, carried: usize, carried_bytes: usize) {
        if self.last.is_some_and(|last| carried > last) {
            self.growing_for += 1;
        } else {
            self.growing_for = 0;
        }
        self.last = Some(carried);
        if self.growing_for >= Self::WARN_AFTER && !self.warned {
            self.warned = true;
            tracing::warn!(
                step,
                carried,
                carried_bytes,
                "the step loop's carried state has grown at {} boundaries in a row: is the \
                 body accumulating arrays in an outer collection?",
                self.growing_for
            );
        }
    }
}

/// Arrays that step loops track, for finding what holds memory.
#[derive(Clone, Debug, Default)]
pub struct LiveReport {
    /// Tracked arrays alive now.
    pub count: usize,
    /// Their bytes (arrays sharing a buffer count once each).
    pub bytes: usize,
    /// The largest ones, largest first: (shape, dtype, bytes, frame).
    pub largest: Vec<(Vec<i32>, Dtype, usize, u64)>,
    /// (count, bytes) by frame; frame 0 holds arrays that outlived every loop.
    pub by_frame: BTreeMap<u64, (usize, usize)>,
}

/// The arrays step loops are tracking now, with the `top` largest.
pub fn live_report(top: usize) -> LiveReport {
    let mut report = LiveReport::default();
    let mut all = Vec::new();
    registry::for_each(|entry| {
        let handle = entry.handle as *const mlxs_array;
        // SAFETY: the entry exists, so its handle is alive while we hold the lock.
        let (bytes, dtype, shape) = unsafe {
            let ndim = sys::mlxs_array_ndim(handle);
            let shape = if ndim == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(sys::mlxs_array_shape(handle), ndim).to_vec()
            };
            let dtype = Dtype::from_code(sys::mlxs_array_dtype(handle)).unwrap_or(Dtype::F32);
            (sys::mlxs_array_nbytes(handle), dtype, shape)
        };
        report.count += 1;
        report.bytes += bytes;
        let frame = report.by_frame.entry(entry.frame).or_default();
        frame.0 += 1;
        frame.1 += bytes;
        all.push((shape, dtype, bytes, entry.frame));
    });
    all.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    all.truncate(top);
    report.largest = all;
    report
}
