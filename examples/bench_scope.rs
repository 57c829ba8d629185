//! Step-loop memory scoping benchmark, measured side by side in one run:
//!
//! 1. automatic scoping (`mlx::steps`) versus the same loop with a hand-placed
//!    `mlx::eval` of its state at the end of each iteration;
//! 2. `async_eval` versus `eval` at the boundary.
//!
//! The body is a multi-op graph over a small carried state, so per-iteration overhead
//! matters. Trials alternate between the variants; the figure is the median per-iteration
//! time over trials.
//!
//! ```text
//! cargo run --release --example bench_scope
//! ```

use std::time::Instant;

use mlx::{random, Array, Dtype};

const STEPS: usize = 500;
const TRIALS: usize = 9;
const DIM: i32 = 32;

/// One step: a few matmuls and element-wise ops over a [DIM, DIM] state.
fn body(x: &Array, w: &Array) -> Array {
    let h = x.matmul(w).tanh();
    let g = (h.matmul(w) * 0.5).sigmoid();
    (&h * &g + x * 0.9) / (h.square().mean(-1, true) + 1.0).sqrt()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn hand_placed(x0: &Array, w: &Array) -> mlx::Result<f64> {
    let start = Instant::now();
    let mut x = x0.clone();
    for _ in 0..STEPS {
        x = body(&x, w);
        mlx::eval([&x])?;
    }
    Ok(start.elapsed().as_secs_f64() / STEPS as f64)
}

fn automatic(x0: &Array, w: &Array, asynchronous: bool) -> mlx::Result<f64> {
    let start = Instant::now();
    let mut x = x0.clone();
    let loop_ = if asynchronous {
        mlx::steps(0..STEPS).async_eval()
    } else {
        mlx::steps(0..STEPS)
    };
    for _ in loop_ {
        x = body(&x, w);
    }
    x.eval()?;
    Ok(start.elapsed().as_secs_f64() / STEPS as f64)
}

/// Nanoseconds to make and drop one array handle (a clone), outside any loop and inside
/// a step loop's frame, where it is registered and unregistered.
fn handle_ns(x: &Array) -> (f64, f64) {
    const N: usize = 200_000;
    let time = |x: &Array| {
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(x.clone());
        }
        start.elapsed().as_secs_f64() * 1e9 / N as f64
    };
    let outside = time(x);
    let mut inside = 0.0;
    for _ in mlx::steps(0..1) {
        inside = time(x);
    }
    (outside, inside)
}

fn main() -> mlx::Result<()> {
    let keys = random::split(&random::key(0), 2);
    let x0 = random::normal(&[DIM, DIM], Dtype::F32, &keys[0]);
    let w = random::normal(&[DIM, DIM], Dtype::F32, &keys[1]) * (1.0 / f64::from(DIM).sqrt());
    mlx::eval([&x0, &w])?;
    // `hand`, `auto` or `async`: one variant, once (for instruction counts under callgrind).
    if let Some(variant) = std::env::args().nth(1) {
        match variant.as_str() {
            "hand" => hand_placed(&x0, &w)?,
            "auto" => automatic(&x0, &w, false)?,
            "async" => automatic(&x0, &w, true)?,
            other => {
                eprintln!("unknown variant {other}: expected hand, auto or async");
                std::process::exit(2);
            }
        };
        return Ok(());
    }
    // Warm-up.
    hand_placed(&x0, &w)?;
    automatic(&x0, &w, false)?;

    let (mut hand, mut auto, mut auto_async) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        hand.push(hand_placed(&x0, &w)?);
        auto.push(automatic(&x0, &w, false)?);
        auto_async.push(automatic(&x0, &w, true)?);
    }
    let (hand, auto, auto_async) = (median(hand), median(auto), median(auto_async));
    let (mut outside, mut inside) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let (o, i) = handle_ns(&x0);
        outside.push(o);
        inside.push(i);
    }
    let (outside, inside) = (median(outside), median(inside));
    println!("{STEPS} steps of a {DIM}x{DIM} multi-op body, median of {TRIALS} alternating trials");
    println!("  hand-placed eval        {:>8.1} us/step", hand * 1e6);
    println!(
        "  steps(), eval           {:>8.1} us/step  ({:+.1}% vs hand-placed)",
        auto * 1e6,
        (auto / hand - 1.0) * 100.0
    );
    println!(
        "  steps(), async_eval     {:>8.1} us/step  ({:+.1}% vs eval)",
        auto_async * 1e6,
        (auto_async / auto - 1.0) * 100.0
    );
    println!(
        "array handle made and dropped: {outside:.0} ns untracked, {inside:.0} ns inside a loop \
         frame (registration {:+.0} ns)",
        inside - outside
    );
    Ok(())
}
