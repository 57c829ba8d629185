//! Compiled functions (`mlx::Compiled`): compiled and eager results agree, tracing happens
//! once per input signature, failures and panics in the body come back as `Err`, and the
//! graph dump is stable.

use std::sync::Mutex;

use mlx::compile::{is_eager, is_tracing, set_eager, trace_count};
use mlx::{dump_graph, random, Array, Compiled, Dtype, Error};

/// The eager switch is process-wide: tests that flip it, or whose trace counts it would
/// change, hold this lock.
static MODE: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    MODE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 12-op element-wise chain: what MLX's compile fuses.
fn chain(x: &Array, y: &Array) -> Array {
    let a = (x * 1.5 + y).exp().sqrt();
    let b = (a - x).tanh() * y.sigmoid();
    (b + 1.0).log() / (y.square() + 1.0)
}

fn compiled_chain() -> Compiled {
    Compiled::new(false, |args: &[Array]| Ok(vec![chain(&args[0], &args[1])])).unwrap()
}

fn max_rel_diff(a: &Array, b: &Array) -> f32 {
    let diff = (a - b).abs().max(mlx::ALL, false).item::<f32>().unwrap();
    let scale = b.abs().max(mlx::ALL, false).item::<f32>().unwrap();
    diff / scale.max(f32::MIN_POSITIVE)
}

#[test]
fn compiled_matches_eager_over_shapes() {
    let _guard = lock();
    let f = compiled_chain();
    for (i, shape) in [[4, 8], [16, 3], [1, 1], [33, 65]].iter().enumerate() {
        let keys = random::split(&random::key(i as u64), 2);
        let x = random::normal(shape, Dtype::F32, &keys[0]);
        let y = random::uniform(0.1, 2.0, shape, Dtype::F32, &keys[1]);
        let compiled = &f.call(&[&x, &y]).unwrap()[0];
        let eager = chain(&x, &y);
        assert_eq!(compiled.shape(), shape);
        let rel = max_rel_diff(compiled, &eager);
        assert!(rel <= 1e-6, "shape {shape:?}: relative difference {rel}");
    }
}

#[test]
fn traces_once_per_signature() {
    let _guard = lock();
    let f = compiled_chain();
    let x = Array::ones(&[2, 3], Dtype::F32);
    assert_eq!(f.trace_count(), 0);
    let before = trace_count();
    f.call(&[&x, &x]).unwrap();
    f.call(&[&x, &x]).unwrap();
    assert_eq!(f.trace_count(), 1, "same shapes and dtypes: one trace");
    let other_shape = Array::ones(&[3, 3], Dtype::F32);
    f.call(&[&other_shape, &other_shape]).unwrap();
    assert_eq!(f.trace_count(), 2, "new shape: a new trace");
    let other_dtype = Array::ones(&[2, 3], Dtype::F16);
    f.call(&[&other_dtype, &other_dtype]).unwrap();
    assert_eq!(f.trace_count(), 3, "new dtype: a new trace");
    f.call(&[&x, &x]).unwrap();
    assert_eq!(f.trace_count(), 3, "a seen signature replays");
    assert!(trace_count() >= before + 3);
}

#[test]
fn shapeless_traces_once_for_all_shapes() {
    let _guard = lock();
    let f = Compiled::new(true, |args: &[Array]| Ok(vec![(&args[0] * 2.0).exp()])).unwrap();
    for n in [2, 5, 9] {
        let x = Array::arange(0.0, f64::from(n), 1.0, Dtype::F32);
        let out = &f.call(&[&x]).unwrap()[0];
        assert_eq!(out.shape(), &[n]);
        let expected: Vec<f32> = (0..n).map(|i| (2.0 * i as f32).exp()).collect();
        let got = out.to_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-6 * e.abs(), "{got:?} vs {expected:?}");
        }
    }
    assert_eq!(f.trace_count(), 1);
}

#[test]
fn bodies_see_tracers() {
    let _guard = lock();
    assert!(!is_tracing());
    let f = Compiled::new(false, |args: &[Array]| {
        assert!(is_tracing(), "the body runs under tracing");
        Ok(vec![&args[0] + 1.0])
    })
    .unwrap();
    let out = &f.call(&[&Array::zeros(&[2], Dtype::F32)]).unwrap()[0];
    assert_eq!(out.to_vec::<f32>().unwrap(), vec![1.0, 1.0]);
    assert!(!is_tracing());
}

#[test]
fn a_failed_op_in_the_body_is_an_err_naming_it() {
    let _guard = lock();
    let line = line!() + 1;
    let f = Compiled::new(false, |args: &[Array]| Ok(vec![args[0].matmul(&args[1])])).unwrap();
    let a = Array::zeros(&[2, 3], Dtype::F32);
    let b = Array::zeros(&[4, 5], Dtype::F32);
    let err = f.call(&[&a, &b]).unwrap_err();
    match &err {
        Error::Op {
            op,
            operands,
            location,
            ..
        } => {
            assert_eq!(*op, "matmul");
            assert_eq!(operands, "float32[2, 3], float32[4, 5]");
            assert_eq!(location.line(), line, "{err}");
        }
        other => panic!("expected the matmul error, got {other}"),
    }
    // The function still works for good inputs afterwards.
    let c = Array::zeros(&[3, 5], Dtype::F32);
    assert_eq!(f.call(&[&a, &c]).unwrap()[0].shape(), &[2, 5]);
}

#[test]
fn a_panic_in_the_body_is_an_err() {
    let _guard = lock();
    let f = Compiled::new(false, |_: &[Array]| -> mlx::Result<Vec<Array>> {
        panic!("boom in the body")
    })
    .unwrap();
    let err = f.call(&[&Array::zeros(&[1], Dtype::F32)]).unwrap_err();
    assert!(err.to_string().contains("boom in the body"), "{err}");
    assert!(!is_tracing(), "the tracing depth unwound");
}

#[test]
fn a_failed_input_is_an_err_without_tracing() {
    let _guard = lock();
    let f = compiled_chain();
    let bad = Array::zeros(&[2], Dtype::F32).reshape(&[3]);
    let err = f.call(&[&bad, &bad]).unwrap_err();
    assert!(err.to_string().contains("reshape"), "{err}");
    assert_eq!(f.trace_count(), 0);
}

#[test]
fn eager_mode_runs_the_body_directly() {
    let _guard = lock();
    let f = compiled_chain();
    let x = Array::full(&[3], 0.5, Dtype::F32);
    set_eager(true);
    assert!(is_eager());
    let eager = f.call(&[&x, &x]);
    set_eager(false);
    let eager = &eager.unwrap()[0];
    assert_eq!(f.trace_count(), 0, "eager calls do not trace");
    let compiled = &f.call(&[&x, &x]).unwrap()[0];
    assert_eq!(f.trace_count(), 1);
    assert!(max_rel_diff(compiled, eager) <= 1e-6);
}

#[test]
fn several_outputs_and_nested_compiled_calls() {
    let _guard = lock();
    let inner =
        std::sync::Arc::new(Compiled::new(false, |a: &[Array]| Ok(vec![a[0].square()])).unwrap());
    let inner2 = std::sync::Arc::clone(&inner);
    let outer = Compiled::new(false, move |a: &[Array]| {
        let sq = inner2.call(&[&a[0]])?.remove(0);
        Ok(vec![&sq + 1.0, sq.sum(mlx::ALL, false)])
    })
    .unwrap();
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
    let out = outer.call(&[&x]).unwrap();
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![2.0, 5.0, 10.0]);
    assert_eq!(out[1].item::<f32>().unwrap(), 14.0);
}

#[test]
fn graph_dump_is_stable_text() {
    let x = Array::zeros(&[2, 3], Dtype::F32);
    x.eval().unwrap();
    let y = x.exp() + &x;
    let expected = "\
%0 = input : float32[2, 3]
%1 = Exp(%0) : float32[2, 3]
%2 = Add(%1, %0) : float32[2, 3]
return %2
";
    assert_eq!(dump_graph(&[&y]).unwrap(), expected);
    // A fresh graph of the same shape prints the same, whatever its addresses.
    let x2 = Array::zeros(&[2, 3], Dtype::F32);
    x2.eval().unwrap();
    assert_eq!(dump_graph(&[&(x2.exp() + &x2)]).unwrap(), expected);
    // Lazy leaves show the ops that make them; shared nodes print once.
    let lazy = Array::zeros(&[2], Dtype::F32);
    let both = dump_graph(&[&lazy.exp(), &lazy.sin()]).unwrap();
    assert_eq!(
        both,
        "%0 = input : float32[]\n%1 = Broadcast(%0) : float32[2]\n%2 = Full(%1) : float32[2]\n\
         %3 = Exp(%2) : float32[2]\n%4 = Sin(%2) : float32[2]\nreturn %3, %4\n"
    );
}

#[test]
fn graph_dump_handles_deep_graphs() {
    let one = Array::ones(&[2], Dtype::F32);
    one.eval().unwrap();
    let mut y = one.clone();
    for _ in 0..20_000 {
        y = &y + &one;
    }
    let text = dump_graph(&[&y]).unwrap();
    assert_eq!(text.lines().count(), 20_000 + 2);
    assert!(
        text.ends_with("return %20000\n"),
        "{}",
        &text[text.len() - 80..]
    );
}

#[test]
fn one_compiled_function_serves_many_threads() {
    let f = std::sync::Arc::new(compiled_chain());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let f = std::sync::Arc::clone(&f);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let v = (t * 100 + i) as f32 / 400.0;
                    let x = Array::full(&[8], v, Dtype::F32);
                    let y = Array::full(&[8], 1.0 + v, Dtype::F32);
                    let got = &f.call(&[&x, &y]).unwrap()[0];
                    assert!(
                        max_rel_diff(got, &chain(&x, &y)) <= 1e-6,
                        "thread {t}, round {i}"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// MLX's compile caches are per thread; a function freed and replaced by another must never
/// replay the old one's graph on a thread that called the old one.
#[test]
fn freed_functions_never_replay_on_other_threads() {
    let _guard = lock();
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
    x.eval().unwrap();
    for k in 0..8 {
        let factor = (k + 2) as f32;
        let f = std::sync::Arc::new(
            Compiled::new(false, move |a: &[Array]| Ok(vec![&a[0] * factor])).unwrap(),
        );
        let worker = {
            let (f, x) = (std::sync::Arc::clone(&f), x.clone());
            std::thread::spawn(move || f.call(&[&x]).unwrap().remove(0).to_vec::<f32>().unwrap())
        };
        let got = worker.join().unwrap();
        assert_eq!(
            got,
            vec![factor, 2.0 * factor, 3.0 * factor],
            "function {k}"
        );
        drop(f);
    }
}

#[test]
fn a_panic_reports_the_callers_line() {
    let _guard = lock();
    let f = Compiled::new(false, |_: &[Array]| -> mlx::Result<Vec<Array>> {
        panic!("kaboom")
    })
    .unwrap();
    let line = line!() + 1;
    let err = f.call(&[&Array::zeros(&[1], Dtype::F32)]).unwrap_err();
    match &err {
        Error::Runtime { location, .. } => assert_eq!(location.line(), line, "{err}"),
        other => panic!("unexpected error {other}"),
    }
    set_eager(true);
    let eager = f.call(&[&Array::zeros(&[1], Dtype::F32)]);
    set_eager(false);
    assert!(
        eager.unwrap_err().to_string().contains("kaboom"),
        "eager panics come back as Err too"
    );
}

/// Dumping (or tracing over) a graph while another thread evaluates it must not read nodes
/// that the evaluation detaches.
#[test]
fn dumping_while_another_thread_evaluates_is_safe() {
    for _ in 0..5 {
        let one = Array::ones(&[16], Dtype::F32);
        one.eval().unwrap();
        let mut y = one.clone();
        for _ in 0..300 {
            y = (&y + &one).sqrt();
        }
        let y = std::sync::Arc::new(y);
        let evaluator = {
            let y = std::sync::Arc::clone(&y);
            std::thread::spawn(move || y.eval().unwrap())
        };
        let dumped = dump_graph(&[&y]).unwrap();
        evaluator.join().unwrap();
        assert!(dumped.ends_with('\n'));
    }
}
