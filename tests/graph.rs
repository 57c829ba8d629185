//! `#[mlx::graph]`: compiled and eager results agree, weights are inputs (one compiled
//! closure serves every instance of a module), and the trace counter rises only on a new
//! signature or a changed static argument.

use std::sync::{Mutex, MutexGuard};

use mlx::{random, Array, Dtype, Module};

/// Trace counts and the eager switch are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn max_rel_diff(a: &Array, b: &Array) -> f32 {
    let diff = (a - b).abs().max(mlx::ALL, false).item::<f32>().unwrap();
    let scale = b.abs().max(mlx::ALL, false).item::<f32>().unwrap();
    diff / scale.max(f32::MIN_POSITIVE)
}

fn normal(shape: &[i32], seed: u64) -> Array {
    random::normal(shape, Dtype::F32, &random::key(seed))
}

/// Runs `f` compiled and eagerly.
fn both<T>(f: impl Fn() -> T) -> (T, T) {
    mlx::compile::set_eager(false);
    let compiled = f();
    mlx::compile::set_eager(true);
    let eager = f();
    mlx::compile::set_eager(false);
    (compiled, eager)
}

#[mlx::graph]
fn gelu_chain(x: &Array, y: &Array) -> Array {
    let a = (x * 1.5 + y).gelu();
    (&a * y.sigmoid() + x.square()).tanh()
}

#[mlx::graph]
fn scaled(x: &Array, factor: f32, power: i32) -> Array {
    let mut y = x * factor;
    for _ in 1..power {
        y = &y * x;
    }
    y
}

#[mlx::graph]
fn split_heads(x: &Array, heads: usize) -> Vec<Array> {
    x.split(heads as i32, -1)
}

#[mlx::graph]
fn stats(xs: &[Array], mask: Option<&Array>) -> (Array, Array) {
    let stacked = mlx::stack(&xs.iter().collect::<Vec<_>>(), 0);
    let stacked = match mask {
        Some(m) => &stacked * m,
        None => stacked,
    };
    (stacked.mean(0, false), stacked.max(0, false))
}

/// A struct of arrays as a graph's output.
#[derive(mlx::GraphOutput)]
struct Moments {
    mean: Array,
    spread: (Array, Array),
    rest: Vec<Array>,
}

#[mlx::graph]
fn moments(x: &Array) -> Moments {
    Moments {
        mean: x.mean(-1, true),
        spread: (x.min(-1, true), x.max(-1, true)),
        rest: vec![x.var(-1, true, 0), x.sum(-1, true)],
    }
}

#[path = "common/dit_block.rs"]
mod dit_block;
use dit_block::{Block, Linear};

#[test]
fn compiled_and_eager_agree_over_shapes() {
    let _serial = serial();
    for (i, shape) in [[3, 5], [16, 16], [1, 7]].iter().enumerate() {
        let x = normal(shape, i as u64);
        let y = normal(shape, 100 + i as u64);
        let (c, e) = both(|| gelu_chain(&x, &y));
        assert!(max_rel_diff(&c, &e) <= 1e-6, "gelu_chain {shape:?}");
        let (c, e) = both(|| scaled(&x, 0.5, 3));
        assert!(max_rel_diff(&c, &e) <= 1e-6, "scaled {shape:?}");
        let (c, e) = both(|| {
            stats(
                &[x.clone(), y.clone()],
                Some(&x.greater(0.0).astype(Dtype::F32)),
            )
        });
        assert!(max_rel_diff(&c.0, &e.0) <= 1e-6 && max_rel_diff(&c.1, &e.1) <= 1e-6);
        let (c, e) = both(|| stats(&[x.clone(), y.clone(), x.clone()], None));
        assert!(max_rel_diff(&c.0, &e.0) <= 1e-6 && max_rel_diff(&c.1, &e.1) <= 1e-6);
    }
    let x = normal(&[2, 12], 7);
    let (c, e) = both(|| split_heads(&x, 3));
    assert_eq!(c.len(), 3);
    for (c, e) in c.iter().zip(&e) {
        assert_eq!(c.shape(), &[2, 4]);
        assert!(max_rel_diff(c, e) <= 1e-6);
    }
}

#[test]
fn structs_of_arrays_are_outputs() {
    let _serial = serial();
    let x = normal(&[3, 10], 9);
    let (c, e) = both(|| moments(&x));
    for (c, e) in [
        (&c.mean, &e.mean),
        (&c.spread.0, &e.spread.0),
        (&c.spread.1, &e.spread.1),
    ] {
        assert_eq!(c.shape(), &[3, 1]);
        assert!(max_rel_diff(c, e) <= 1e-6);
    }
    assert_eq!(c.rest.len(), 2);
    for (c, e) in c.rest.iter().zip(&e.rest) {
        assert!(max_rel_diff(c, e) <= 1e-6);
    }
    // A failed call fills every field with the error.
    let failed = moments(&Array::zeros(&[2], Dtype::F32).reshape(&[3]));
    assert!(failed.mean.error().is_some() && failed.spread.1.error().is_some());
}

#[test]
fn a_dit_block_compiles_and_matches_eager() {
    let _serial = serial();
    for (dim, heads, tokens) in [(32, 4, 16), (48, 3, 9)] {
        let block = Block::random(dim, heads, dim as u64);
        let x = normal(&[2, tokens, dim], 1);
        let c = normal(&[2, dim], 2);
        let (compiled, eager) = both(|| block.forward(&x, &c));
        assert_eq!(compiled.shape(), &[2, tokens, dim]);
        let rel = max_rel_diff(&compiled, &eager);
        assert!(rel <= 1e-6, "dim {dim}: relative difference {rel}");
    }
}

#[test]
fn instances_share_one_compiled_graph_with_their_own_weights() {
    let _serial = serial();
    let a = Linear::random(8, 6, 10);
    let b = Linear::random(8, 6, 20);
    let x = normal(&[3, 6], 30);
    let before = mlx::compile::trace_count();
    let ya = a.forward(&x);
    let yb = b.forward(&x);
    assert_eq!(
        mlx::compile::trace_count() - before,
        1,
        "the second instance reuses the trace"
    );
    let expect = |l: &Linear| x.matmul(&l.weight.t()) + l.bias.as_ref().unwrap();
    assert!(max_rel_diff(&ya, &expect(&a)) <= 1e-6);
    assert!(max_rel_diff(&yb, &expect(&b)) <= 1e-6);
    assert!(
        max_rel_diff(&ya, &yb) > 0.01,
        "different weights give different results"
    );
    // A module without a bias has another structure: a new trace.
    let no_bias = Linear {
        bias: None,
        ..a.clone()
    };
    no_bias.forward(&x);
    assert_eq!(mlx::compile::trace_count() - before, 2);
}

#[test]
fn traces_rise_only_on_new_signatures_and_statics() {
    let _serial = serial();
    let x = normal(&[4, 4], 1);
    let count = || mlx::compile::trace_count();
    let start = count();
    scaled(&x, 0.25, 2);
    assert_eq!(count() - start, 1);
    scaled(&x, 0.25, 2);
    assert_eq!(count() - start, 1, "same signature, same statics: replay");
    scaled(&normal(&[4, 4], 2), 0.25, 2);
    assert_eq!(count() - start, 1, "new values, same shapes: replay");
    scaled(&x, 0.5, 2);
    assert_eq!(count() - start, 2, "a changed float static retraces");
    scaled(&x, 0.5, 3);
    assert_eq!(count() - start, 3, "a changed int static retraces");
    scaled(&normal(&[2, 8], 3), 0.5, 3);
    assert_eq!(count() - start, 4, "a new shape retraces");
    scaled(&x.astype(Dtype::F16), 0.5, 3);
    assert_eq!(count() - start, 5, "a new dtype retraces");
    scaled(&x, 0.5, 3);
    assert_eq!(count() - start, 5);
}

#[test]
fn errors_inside_a_graph_surface_at_the_call() {
    let _serial = serial();
    let x = normal(&[3, 5], 1);
    let y = normal(&[4, 5], 2);
    let out = gelu_chain(&x, &y);
    let err = out.check().unwrap_err().to_string();
    assert!(err.contains("float32[3, 5], float32[4, 5]"), "{err}");
}

// === lowered graphs ===========================================================================

/// The graph a function builds, as `mlx::dump_graph` prints it, from evaluated inputs (so
/// inputs print as `input`): the ops MLX traces, before its own simplification and fusion.
fn lowered(outputs: impl FnOnce() -> Vec<Array>) -> String {
    mlx::compile::set_eager(true);
    let outputs = outputs();
    mlx::compile::set_eager(false);
    mlx::dump_graph(&outputs.iter().collect::<Vec<_>>()).unwrap()
}

fn snapshot(name: &str, text: String) {
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

fn evaluated(shape: &[i32], seed: u64) -> Array {
    let a = normal(shape, seed);
    a.eval().unwrap();
    a
}

fn evaluated_module<M: Module>(m: M) -> M {
    mlx::eval(m.parameters().into_iter().map(|(_, a)| a)).unwrap();
    m
}

#[test]
fn lowered_graphs_are_stable() {
    let _serial = serial();
    let x = evaluated(&[4, 8], 1);
    let y = evaluated(&[4, 8], 2);
    snapshot("lowered_gelu_chain", lowered(|| vec![gelu_chain(&x, &y)]));
    snapshot("lowered_scaled", lowered(|| vec![scaled(&x, 0.5, 3)]));
    snapshot(
        "lowered_stats",
        lowered(|| {
            let (mean, max) = stats(&[x.clone(), y.clone()], Some(&y));
            vec![mean, max]
        }),
    );
    let linear = evaluated_module(Linear::random(6, 8, 3));
    snapshot("lowered_linear", lowered(|| vec![linear.forward(&x)]));
    let block = evaluated_module(Block::random(32, 4, 4));
    let tokens = evaluated(&[1, 16, 32], 5);
    let c = evaluated(&[1, 32], 6);
    snapshot(
        "lowered_dit_block",
        lowered(|| vec![block.forward(&tokens, &c)]),
    );
}

// === graphs in traits, mut parameters, slices of shapes =======================================

trait Forward: Module + Sized + Send + Sync + 'static {
    fn apply(&self, x: &Array) -> Array;

    /// A graph in a trait's default method: one function, many `Self` types.
    #[mlx::graph]
    fn run(&self, x: &Array) -> Array {
        self.apply(x)
    }
}

mod first {
    #[derive(mlx::Module)]
    pub struct Layer {
        pub w: mlx::Array,
    }
}

mod second {
    #[derive(mlx::Module)]
    pub struct Layer {
        pub w: mlx::Array,
    }
}

impl Forward for first::Layer {
    fn apply(&self, x: &Array) -> Array {
        x * &self.w
    }
}

impl Forward for second::Layer {
    fn apply(&self, x: &Array) -> Array {
        x * &self.w * 100.0
    }
}

trait Scale {
    fn scale(&self, x: &Array) -> Array;
}

impl Scale for first::Layer {
    /// A graph as a trait method implementation.
    #[mlx::graph]
    fn scale(&self, x: &Array) -> Array {
        x * &self.w * 2.0
    }
}

#[mlx::graph]
fn bump(x: &Array, mut n: i32) -> Array {
    n += 1;
    let mut shape = x.shape().to_vec();
    shape.push(1);
    x.reshape(&shape) * n as f32
}

#[test]
fn trait_graphs_keep_types_apart() {
    let _serial = serial();
    let x = Array::ones(&[2], Dtype::F32);
    let a = first::Layer {
        w: Array::full(&[2], 2.0, Dtype::F32),
    };
    let b = second::Layer {
        w: Array::full(&[2], 2.0, Dtype::F32),
    };
    assert_eq!(a.run(&x).to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
    assert_eq!(
        b.run(&x).to_vec::<f32>().unwrap(),
        vec![200.0, 200.0],
        "same name, same shapes, other type"
    );
    assert_eq!(a.scale(&x).to_vec::<f32>().unwrap(), vec![4.0, 4.0]);
}

#[test]
fn mut_parameters_and_shape_copies_work() {
    let _serial = serial();
    let x = Array::ones(&[2, 3], Dtype::F32);
    let (c, e) = both(|| bump(&x, 2));
    assert_eq!(c.shape(), &[2, 3, 1]);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![3.0; 6]);
    assert!(max_rel_diff(&c, &e) <= 1e-6);
}
