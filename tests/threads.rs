//! Arrays across threads: graphs built and evaluated concurrently, weights shared through
//! an `Arc`, and errors raised on several threads at once, each for a few hundred rounds
//! so that races have a chance to show.
//!
//! Inputs are small integers held in float32, so every expected value is computed exactly
//! in Rust (sums of a few hundred products below 2^24 are exact in any order) and results
//! are compared with `==`.

use std::sync::{mpsc, Arc, Barrier};
use std::thread;

use mlx::{Array, Dtype, Error, ALL};

const THREADS: usize = 4;
const ROUNDS: usize = 300;

// === helpers ==================================================================================

/// Runs `body(thread_index)` on [`THREADS`] threads that start together; panics in any of
/// them fail the test.
fn on_threads(body: impl Fn(usize) + Send + Sync + 'static) {
    let body = Arc::new(body);
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (body, start) = (Arc::clone(&body), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                body(t)
            })
        })
        .collect();
    for (t, handle) in handles.into_iter().enumerate() {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(Box::new(format!("thread {t}: {panic:?}")));
        }
    }
}

/// A row-major matrix of small integers in float32, with its values for the expected side.
fn matrix(rows: usize, cols: usize, f: impl Fn(usize, usize) -> i32) -> (Array, Vec<f32>) {
    let values: Vec<f32> = (0..rows * cols)
        .map(|k| f(k / cols, k % cols) as f32)
        .collect();
    (
        Array::from_slice(&values, &[rows as i32, cols as i32]),
        values,
    )
}

/// `a [n, k] @ b [k, m]` in Rust.
fn matmul(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|p| a[i * k + p] * b[p * m + j]).sum();
        }
    }
    out
}

// === tests ====================================================================================

/// Each thread builds its own graphs (elementwise ops, a matmul with a transpose,
/// reductions, a cast, an argmax) and evaluates them while the others do the same.
#[test]
fn independent_graphs_on_several_threads() {
    on_threads(|t| {
        for round in 0..ROUNDS {
            let seed = (t * 1000 + round) as i32;
            let (x, xv) = matrix(4, 8, |i, j| (seed + i as i32 * 3 + j as i32) % 13 - 6);

            // y = x xᵀ + 1, row sums, the row maxima as int32, and their positions.
            let y = x.matmul(&x.t()) + 1.0;
            let row_sums = y.sum(-1, false);
            let row_max = y.max(-1, false).astype(Dtype::I32);
            let argmax = y.argmax(-1, false);
            mlx::eval([&row_sums, &row_max, &argmax]).unwrap();

            let xt: Vec<f32> = (0..32).map(|k| xv[(k % 4) * 8 + k / 4]).collect();
            let yv: Vec<f32> = matmul(&xv, &xt, 4, 8, 4).iter().map(|v| v + 1.0).collect();
            let rows: Vec<&[f32]> = yv.chunks(4).collect();
            let sums: Vec<f32> = rows.iter().map(|r| r.iter().sum()).collect();
            let maxes: Vec<i32> = rows
                .iter()
                .map(|r| r.iter().copied().fold(f32::MIN, f32::max) as i32)
                .collect();
            let argmaxes: Vec<u32> = rows
                .iter()
                .map(|r| {
                    let max = r.iter().copied().fold(f32::MIN, f32::max);
                    r.iter().position(|&v| v == max).unwrap() as u32
                })
                .collect();

            assert_eq!(y.to_vec::<f32>().unwrap(), yv, "thread {t} round {round}");
            assert_eq!(row_sums.to_vec::<f32>().unwrap(), sums);
            assert_eq!(row_max.to_vec::<i32>().unwrap(), maxes);
            assert_eq!(argmax.to_vec::<u32>().unwrap(), argmaxes);
            // A scalar read through `item` on top of it all.
            let total = y.sum(ALL, false).item::<f32>().unwrap();
            assert_eq!(total, sums.iter().sum::<f32>());
        }
    });
}

/// One evaluated weight matrix behind an `Arc`, multiplied by per-thread inputs on every
/// thread at once: every product is right.
#[test]
fn shared_weights_through_an_arc() {
    let (w, wv) = matrix(64, 32, |i, j| ((i * 3 + j * 5) % 7) as i32 - 3);
    w.eval().unwrap();
    let shared = Arc::new((w, wv));
    on_threads(move |t| {
        let (w, wv) = &*shared;
        for round in 0..ROUNDS {
            let (x, xv) = matrix(2, 64, |i, k| ((t + round + i * 2 + k) % 5) as i32 - 2);
            let y = x.matmul(w);
            assert_eq!(y.shape(), &[2, 32]);
            let expected = matmul(&xv, wv, 2, 64, 32);
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                expected,
                "thread {t} round {round}"
            );
        }
    });
}

/// Weights that are still a lazy graph when shared: the threads race to evaluate the same
/// nodes, and every one of them reads the right values.
#[test]
fn shared_lazy_weights_are_computed_once_correctly() {
    for attempt in 0..50 {
        let (base, basev) = matrix(16, 16, |i, j| ((i + 2 * j + attempt) % 9) as i32 - 4);
        // Not evaluated: the first thread to need it computes it.
        let w = Arc::new((base * 2.0 - 1.0).t());
        let wv: Vec<f32> = (0..256)
            .map(|k| basev[(k % 16) * 16 + k / 16] * 2.0 - 1.0)
            .collect();
        let wv = Arc::new(wv);
        on_threads(move |t| {
            let (x, xv) = matrix(3, 16, |i, k| ((t + i + k) % 4) as i32 - 1);
            let y = x.matmul(&w);
            let expected = matmul(&xv, &wv, 3, 16, 16);
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                expected,
                "thread {t} attempt {attempt}"
            );
            assert_eq!(w.to_vec::<f32>().unwrap(), *wv);
        });
    }
}

/// Arrays built on one thread can be evaluated and dropped on another, even after the
/// building thread has exited.
#[test]
fn arrays_move_between_threads() {
    let (to_worker, from_main) = mpsc::channel::<(Array, f32)>();
    let (to_main, from_worker) = mpsc::channel::<Array>();
    let worker = thread::spawn(move || {
        for (graph, expected) in from_main {
            assert_eq!(graph.item::<f32>().unwrap(), expected);
            to_main.send(graph * 2.0).unwrap();
        }
    });
    for round in 0..ROUNDS {
        let x = Array::from_slice(&[round as f32, 1.0, 2.0], &[3]);
        to_worker
            .send(((&x + 1.0).sum(ALL, false), round as f32 + 6.0))
            .unwrap();
        let back = from_worker.recv().unwrap();
        assert_eq!(back.item::<f32>().unwrap(), 2.0 * (round as f32 + 6.0));
    }
    drop(to_worker);
    worker.join().unwrap();

    // A lazy graph whose building thread has exited still evaluates.
    let graphs: Vec<Array> = (0..THREADS)
        .map(|t| thread::spawn(move || Array::full(&[4], t as i32, Dtype::I32) * 3))
        .map(|handle| handle.join().unwrap())
        .collect();
    for (t, graph) in graphs.iter().enumerate() {
        assert_eq!(graph.to_vec::<i32>().unwrap(), vec![3 * t as i32; 4]);
    }
}

/// Errors raised on several threads at once each carry their own thread's operands, line
/// and MLX message (MLX's message is kept per thread, so none leaks into another's).
#[test]
fn concurrent_errors_stay_with_their_thread() {
    on_threads(|t| {
        for round in 0..ROUNDS {
            // Each thread asks for an impossible reshape of its own size.
            let n = (t * ROUNDS + round) as i32 + 2;
            let x = Array::zeros(&[n], Dtype::F32);
            let (bad, line) = (x.reshape(&[n + 1]), line!());
            let err = (bad.exp() + 1.0).eval().unwrap_err();
            let Error::Op {
                op,
                operands,
                message,
                location,
            } = &err
            else {
                panic!("expected Error::Op, got {err:?}");
            };
            assert_eq!(*op, "reshape");
            assert_eq!(operands, &format!("float32[{n}]"));
            assert_eq!((location.file(), location.line()), (file!(), line));
            let own = format!("size {n} into shape ({})", n + 1);
            assert!(
                message.contains(&own),
                "thread {t}: {message:?} lacks {own:?}"
            );
            // Good work on the same thread still runs.
            assert_eq!((&x + 1.0).sum(ALL, false).item::<f32>().unwrap(), n as f32);
        }
    });
}
