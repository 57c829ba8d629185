//! `#[mlx::graph]` benchmark, measured side by side in one run:
//!
//! 1. per-call overhead of a small compiled graph against the same function run eagerly
//!    (graph building only, no evaluation: what each call costs the CPU thread);
//! 2. a 12-op element-wise chain over 4M float32 elements, compiled (fused) against eager,
//!    evaluated;
//! 3. the first-trace latency of a DiT-style block (trace and MLX's compile, plus the first
//!    evaluation, which builds the fused CPU kernels) against a later call.
//!
//! ```text
//! cargo run --release --example bench_graph
//! ```

use std::time::Instant;

use mlx::compile::set_eager;
use mlx::{random, Array, Dtype, Module};

const TRIALS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn normal(shape: &[i32], seed: u64) -> Array {
    let a = random::normal(shape, Dtype::F32, &random::key(seed));
    a.eval().expect("evaluating random inputs");
    a
}

#[mlx::graph]
fn small(x: &Array, y: &Array) -> Array {
    (x * y + 1.0).tanh()
}

/// 12 cheap ops (memory-bound when run one by one).
#[mlx::graph]
fn arith12(x: &Array) -> Array {
    let a = (x * 1.5 + 0.5).maximum(0.0);
    let b = (&a * x - 0.25).abs();
    let c = &b * &b + 1.0;
    (&c * &a - x * 0.1) / (c + 2.0)
}

/// 12 ops, three of them transcendental (compute-bound on this CPU).
#[mlx::graph]
fn chain12(x: &Array) -> Array {
    let a = (x * 1.5 + 0.5).sigmoid();
    let b = (&a * x - 0.25).tanh();
    let c = (&b * &b + 1.0).sqrt();
    (&c * &a - x * 0.1).abs() / (c + 2.0)
}

#[path = "../tests/common/dit_block.rs"]
mod dit_block;
use dit_block::Block;

/// Microseconds per call of `f`, building graphs only.
fn per_call_us(calls: usize, f: impl Fn() -> Array) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(f());
    }
    start.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// Milliseconds to build and evaluate `f`'s result.
fn evaluated_ms(f: impl Fn() -> Array) -> mlx::Result<f64> {
    let start = Instant::now();
    f().eval()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn main() -> mlx::Result<()> {
    // 1. Per-call overhead.
    let x = normal(&[8, 8], 1);
    let y = normal(&[8, 8], 2);
    small(&x, &y).eval()?; // trace once
    let (mut compiled, mut eager) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        compiled.push(per_call_us(20_000, || small(&x, &y)));
        set_eager(true);
        eager.push(per_call_us(20_000, || small(&x, &y)));
        set_eager(false);
    }
    let (compiled, eager) = (median(compiled), median(eager));
    println!("small graph (3 ops), per call, graph building only:");
    println!(
        "  compiled {compiled:.2} us   eager {eager:.2} us   ({:+.2} us)",
        compiled - eager
    );

    // 2. Fused 12-op chains over 4M elements.
    let big = normal(&[2048, 2048], 3);
    for (name, f) in [
        (
            "arithmetic (add, mul, max, abs, div)",
            arith12 as fn(&Array) -> Array,
        ),
        ("with sigmoid, tanh and sqrt", chain12),
    ] {
        let traces = mlx::compile::trace_count();
        evaluated_ms(|| f(&big))?; // trace and build the fused kernel
        assert_eq!(
            mlx::compile::trace_count(),
            traces + 1,
            "the chain is compiled"
        );
        let (mut compiled, mut eager) = (Vec::new(), Vec::new());
        for _ in 0..TRIALS {
            compiled.push(evaluated_ms(|| f(&big))?);
            set_eager(true);
            eager.push(evaluated_ms(|| f(&big))?);
            set_eager(false);
        }
        let (compiled, eager) = (median(compiled), median(eager));
        println!("12-op element-wise chain, {name}, 4M float32, evaluated:");
        println!(
            "  compiled {compiled:.1} ms   eager {eager:.1} ms   speed-up {:.2}x",
            eager / compiled
        );
    }

    // 3. First-trace latency of a DiT-style block.
    let block = Block::random(256, 8, 1);
    mlx::eval(block.parameters().into_iter().map(|(_, a)| a))?;
    let tokens = normal(&[1, 256, 256], 4);
    let c = normal(&[1, 256], 5);
    let start = Instant::now();
    let out = block.forward(&tokens, &c);
    let traced = start.elapsed().as_secs_f64() * 1e3;
    out.eval()?;
    let first = start.elapsed().as_secs_f64() * 1e3;
    let later = median(
        (0..TRIALS)
            .map(|_| evaluated_ms(|| block.forward(&tokens, &c)))
            .collect::<mlx::Result<_>>()?,
    );
    println!("DiT-style block (dim 256, 8 heads, 256 tokens):");
    println!(
        "  first call: trace {traced:.1} ms, with first evaluation {first:.1} ms;   later calls {later:.1} ms"
    );
    Ok(())
}
