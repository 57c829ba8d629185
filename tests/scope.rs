//! Automatic memory scoping of step loops (`mlx::steps`): the inferred Keep set is exactly
//! what each iteration carries out, it is evaluated at every boundary, memory stays flat,
//! and frames stay consistent through break, errors, panics and nesting.
//!
//! MLX's memory counters and the registry are process-wide, so the tests of this file run
//! one at a time (`serial`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mlx::scope::{live_report, StepStats};
use mlx::{steps, Array, Compiled, Dtype};

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collects each boundary's stats.
fn recorder() -> (
    Rc<RefCell<Vec<StepStats>>>,
    impl FnMut(&StepStats) + 'static,
) {
    let stats = Rc::new(RefCell::new(Vec::new()));
    let sink = Rc::clone(&stats);
    (stats, move |s: &StepStats| {
        sink.borrow_mut().push(s.clone())
    })
}

fn settled_active() -> usize {
    mlx::synchronize().unwrap();
    mlx::memory::active_memory()
}

#[test]
fn a_thousand_compiled_steps_keep_memory_flat() {
    let _serial = serial();
    let step = Compiled::new(false, |a: &[Array]| {
        let x = &a[0];
        Ok(vec![((x * 0.5).tanh() + x.sin() * 0.25) * &a[1]])
    })
    .unwrap();
    let w = mlx::random::uniform(0.5, 1.5, &[64, 64], Dtype::F32, &mlx::random::key(3));
    w.eval().unwrap();
    let mut x = Array::ones(&[64, 64], Dtype::F32);
    let (stats, record) = recorder();
    let mut unevaluated_at_start = 0;
    for i in steps(0..1000).on_boundary(record) {
        if i > 0 && !x.is_evaluated() {
            unevaluated_at_start += 1;
        }
        x = step.call(&[&x, &w]).unwrap().remove(0);
    }
    assert_eq!(
        unevaluated_at_start, 0,
        "every boundary evaluated the carried state"
    );
    let stats = stats.borrow();
    assert_eq!(stats.len(), 1000);
    assert!(stats.iter().all(|s| s.kept == 1), "only `x` is carried");
    let third = stats[2].active_bytes;
    let differing: Vec<_> = stats[2..]
        .iter()
        .filter(|s| s.active_bytes != third)
        .map(|s| (s.step, s.active_bytes))
        .collect();
    assert!(
        differing.is_empty(),
        "active memory moved after step 2: {differing:?}"
    );
    assert_eq!(step.trace_count(), 1);
}

#[test]
fn a_pipelined_loop_computes_what_an_evaluating_one_does_and_reports_each_step_late() {
    let _serial = serial();
    let step = Compiled::new(false, |a: &[Array]| {
        let x = &a[0];
        Ok(vec![(x * 0.5).tanh() * &a[1] + x.cos() * 0.25])
    })
    .unwrap();
    let w = mlx::random::uniform(0.5, 1.5, &[64, 64], Dtype::F32, &mlx::random::key(4));
    w.eval().unwrap();
    let run = |pipelined: bool| {
        let mut x = Array::ones(&[64, 64], Dtype::F32);
        let bodies = Rc::new(AtomicUsize::new(0));
        let seen = Rc::clone(&bodies);
        let (stats, mut record) = recorder();
        let when = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&when);
        let hook = move |s: &StepStats| {
            sink.borrow_mut().push(seen.load(Ordering::Relaxed));
            record(s);
        };
        let loop_ = steps(0..200).on_boundary(hook);
        let loop_ = if pipelined { loop_.pipelined() } else { loop_ };
        let started = std::time::Instant::now();
        for _ in loop_ {
            bodies.fetch_add(1, Ordering::Relaxed);
            x = step.call(&[&x, &w]).unwrap().remove(0);
        }
        let wall = started.elapsed();
        assert!(x.is_evaluated());
        let stats = stats.take();
        let when = when.take();
        (x.to_vec::<f32>().unwrap(), stats, when, wall)
    };
    let (expected, _, eager_when, _) = run(false);
    assert_eq!(
        eager_when,
        (1..=200).collect::<Vec<_>>(),
        "reported at once"
    );
    let (values, stats, when, wall) = run(true);
    assert_eq!(values, expected, "the same graph, the same bits");
    let steps: Vec<usize> = stats.iter().map(|s| s.step).collect();
    assert_eq!(steps, (0..200).collect::<Vec<_>>(), "every step, in order");
    // Step i is reported after body i + 1 has built the next graph; the last at the end.
    let mut late: Vec<usize> = (2..=200).collect();
    late.push(200);
    assert_eq!(when, late);
    assert!(stats.iter().all(|s| s.kept == 1));
    // Each report's time runs from the previous completion: together, the loop's.
    let reported: std::time::Duration = stats.iter().map(|s| s.elapsed).sum();
    assert!(reported <= wall, "{reported:?} > {wall:?}");
    assert!(reported * 10 >= wall * 9, "{reported:?} of {wall:?}");
    // At most one step is queued: memory stays within a few of its arrays.
    let active: Vec<usize> = stats[2..].iter().map(|s| s.active_bytes).collect();
    let spread = active.iter().max().unwrap() - active.iter().min().unwrap();
    assert!(
        spread <= 8 * 64 * 64 * 4,
        "active memory moved by {spread} B"
    );
}

struct Cache {
    k: Array,
    v: Array,
}

struct State {
    latents: Array,
    step_count: usize,
}

#[test]
fn the_keep_set_is_what_the_body_carries_out() {
    let _serial = serial();
    // Created before the loop: used by every iteration but not part of its Keep set.
    let weights = Array::full(&[8], 0.5, Dtype::F32) * 2.0;
    // Created before the loop, lazy, and not used by it: no boundary evaluates it.
    let bystander = Array::full(&[8], 0.5, Dtype::F32) * 2.0;
    let mut plain = Array::zeros(&[8], Dtype::F32);
    let mut state = State {
        latents: Array::zeros(&[4], Dtype::F32),
        step_count: 0,
    };
    let mut late: Option<Array> = None;
    let mut caches: Vec<Cache> = (0..3)
        .map(|_| Cache {
            k: Array::zeros(&[2], Dtype::F32),
            v: Array::zeros(&[2], Dtype::F32),
        })
        .collect();
    let (stats, record) = recorder();
    for i in steps(0..10).on_boundary(record) {
        let scratch = plain.exp() * 3.0; // a temporary: dropped before the boundary
        plain = &plain + &weights + scratch.sum(mlx::ALL, false) * 0.0;
        state.latents = &state.latents - 1.0;
        state.step_count += 1;
        if i >= 5 {
            late = Some(plain.square());
        }
        for cache in &mut caches {
            cache.k = &cache.k + 1.0;
            cache.v = &cache.v + 2.0;
        }
    }
    let kept: Vec<usize> = stats.borrow().iter().map(|s| s.kept).collect();
    // plain + latents + 3 * (k, v), and `late` from step 5 on.
    assert_eq!(kept, [8, 8, 8, 8, 8, 9, 9, 9, 9, 9]);
    let carried: Vec<usize> = stats.borrow().iter().map(|s| s.carried).collect();
    assert_eq!(
        carried, kept,
        "each step replaces what the last one carried"
    );
    assert!(
        !bystander.is_evaluated(),
        "arrays from before the loop are not evaluated"
    );
    assert!(plain.is_evaluated() && state.latents.is_evaluated());
    assert!(late.as_ref().is_some_and(Array::is_evaluated));
    assert!(caches
        .iter()
        .all(|c| c.k.is_evaluated() && c.v.is_evaluated()));
    assert_eq!(plain.to_vec::<f32>().unwrap(), vec![10.0; 8]);
    assert_eq!(state.latents.to_vec::<f32>().unwrap(), vec![-10.0; 4]);
    assert_eq!(caches[2].v.to_vec::<f32>().unwrap(), vec![20.0; 2]);
    assert_eq!(state.step_count, 10);
}

#[test]
fn tracers_never_enter_a_frame() {
    let _serial = serial();
    let seen_inside = Arc::new(AtomicUsize::new(usize::MAX));
    let seen = Arc::clone(&seen_inside);
    let f = Compiled::new(false, move |a: &[Array]| {
        let before = live_report(0).count;
        let mut y = a[0].clone();
        for _ in 0..50 {
            y = y.exp().log() + 1.0;
        }
        seen.store(live_report(0).count - before, Ordering::Relaxed);
        Ok(vec![y])
    })
    .unwrap();
    let mut x = Array::zeros(&[3], Dtype::F32);
    for _ in steps(0..2) {
        x = f.call(&[&x]).unwrap().remove(0);
    }
    assert_eq!(
        seen_inside.load(Ordering::Relaxed),
        0,
        "the traced body registered arrays"
    );
}

#[test]
fn arrays_outside_loops_are_not_tracked_and_frames_close_on_break() {
    let _serial = serial();
    let base = live_report(0).count;
    let _outside = Array::ones(&[4], Dtype::F32);
    assert_eq!(live_report(0).count, base);
    let mut x = Array::ones(&[4], Dtype::F32);
    for i in steps(0..100) {
        x = &x + 1.0;
        if i == 3 {
            break;
        }
    }
    // The loop's frame is closed: new arrays are untracked again.
    let _after = Array::ones(&[4], Dtype::F32);
    let report = live_report(0);
    assert_eq!(report.count, base + 1, "only `x` stays tracked: {report:?}");
    drop(x);
    assert_eq!(live_report(0).count, base);
}

#[test]
fn nested_loops_and_panics_leave_frames_consistent() {
    let _serial = serial();
    let base = live_report(0).count;
    let mut outer = Array::zeros(&[2], Dtype::F32);
    let (inner_stats, record) = recorder();
    let mut record = Some(record);
    for _ in steps(0..3) {
        let mut inner = Array::zeros(&[2], Dtype::F32);
        let steps_inner = match record.take() {
            Some(r) => steps(0..4).on_boundary(r),
            None => steps(0..4),
        };
        for _ in steps_inner {
            inner = &inner + 1.0;
        }
        outer = &outer + &inner;
    }
    assert_eq!(outer.to_vec::<f32>().unwrap(), vec![12.0, 12.0]);
    assert!(inner_stats.borrow().iter().all(|s| s.kept == 1));
    let caught = std::panic::catch_unwind(|| {
        let mut y = Array::zeros(&[2], Dtype::F32);
        for i in steps(0..10) {
            y = &y + 1.0;
            if i == 2 {
                panic!("body panics");
            }
        }
        y
    });
    assert!(caught.is_err());
    let _untracked = Array::ones(&[1], Dtype::F32);
    assert_eq!(
        live_report(0).count,
        base + 1,
        "only `outer` is still tracked"
    );
}

#[test]
fn an_error_mid_loop_returns_memory_to_baseline() {
    let _serial = serial();
    let baseline = settled_active();
    let run = || -> mlx::Result<Array> {
        let mut state = Array::zeros(&[256, 256], Dtype::F32);
        for i in steps(0..10) {
            state = &state + 1.0;
            if i == 4 {
                state.reshape(&[3]).check()?; // fails: 65,536 elements into 3
            }
        }
        Ok(state)
    };
    assert!(run().is_err());
    assert_eq!(settled_active(), baseline);
}

/// Counts `tracing` warnings.
struct WarnCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn warnings_during(f: impl FnOnce()) -> usize {
    let count = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::with_default(WarnCounter(Arc::clone(&count)), f);
    count.load(Ordering::Relaxed)
}

#[test]
fn accumulating_into_an_outer_vec_warns() {
    let _serial = serial();
    let leaky = warnings_during(|| {
        let mut history = Vec::new();
        let mut x = Array::zeros(&[4], Dtype::F32);
        let (stats, record) = recorder();
        for _ in steps(0..10).on_boundary(record) {
            x = &x + 1.0;
            history.push(x.square());
        }
        let carried: Vec<usize> = stats.borrow().iter().map(|s| s.carried).collect();
        assert_eq!(
            carried,
            (2..12).collect::<Vec<_>>(),
            "x plus the growing history"
        );
        assert!(stats.borrow().iter().all(|s| s.kept == 2));
    });
    assert_eq!(leaky, 1, "one warning for a Keep set that keeps growing");
    let steady = warnings_during(|| {
        let mut x = Array::zeros(&[4], Dtype::F32);
        let mut late = None;
        for i in steps(0..10) {
            x = &x + 1.0;
            if i == 5 {
                late = Some(x.square());
            }
        }
        drop(late);
    });
    assert_eq!(
        steady, 0,
        "a one-off addition to the Keep set is not a leak"
    );
}

#[test]
fn the_live_report_lists_tracked_arrays_by_size_and_frame() {
    let _serial = serial();
    let base = live_report(0);
    let mut big = Array::zeros(&[64, 32], Dtype::F32);
    let mut small = Array::zeros(&[3], Dtype::I32);
    for _ in steps(0..2) {
        big = &big + 1.0;
        small = &small + 1;
    }
    let report = live_report(1);
    assert_eq!(report.count, base.count + 2);
    assert_eq!(report.bytes, base.bytes + 64 * 32 * 4 + 3 * 4);
    let (shape, dtype, bytes, frame) = &report.largest[0];
    assert_eq!(
        (shape.as_slice(), *dtype, *bytes, *frame),
        (&[64, 32][..], Dtype::F32, 8192, 0)
    );
    assert_eq!(
        report.by_frame.get(&0).map(|f| f.0),
        Some(base.by_frame.get(&0).map_or(0, |f| f.0) + 2)
    );
    drop((big, small));
}
