//! The forms `#[mlx::graph]` and `#[derive(Module)]` accept.

use mlx::{Array, Module};

#[derive(Module, Clone)]
struct Linear {
    weight: Array,
    bias: Option<Array>,
}

#[derive(Module, Clone)]
struct Quantized {
    weight: Array,
    #[weight("weight_scale")]
    scales: Array,
}

#[derive(Module, Clone)]
enum Layer {
    Dense(Linear),
    Quantized(Quantized),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Activation {
    Silu,
    Gelu,
}

#[derive(Module, Clone)]
struct Mlp {
    #[weight("net.0")]
    up: Layer,
    layers: Vec<Linear>,
    #[weight(skip)]
    activation: Activation,
    #[weight(skip)]
    hidden: usize,
}

impl Mlp {
    #[mlx::graph]
    fn forward(&self, x: &Array) -> Array {
        let h = match (&self.up, self.activation) {
            (Layer::Dense(l), Activation::Silu) => x.matmul(&l.weight.t()).silu(),
            (Layer::Dense(l), Activation::Gelu) => x.matmul(&l.weight.t()).gelu(),
            (Layer::Quantized(q), _) => x.matmul(&q.weight.t()),
        };
        self.layers.iter().fold(h, |h, l| h.matmul(&l.weight.t()))
    }

    #[mlx::graph(shapeless)]
    fn scale(&self, x: &Array, factor: f32) -> Array {
        x * factor
    }

    #[mlx::graph]
    fn associated(x: &Array, y: &Array) -> (Array, Array) {
        Self::helper(x, y)
    }

    fn helper(x: &Array, y: &Array) -> (Array, Array) {
        (x + y, x - y)
    }
}

#[mlx::graph]
fn many(xs: &[Array], mask: Option<&Array>, pair: (Array, Array), n: usize, on: bool) -> Vec<Array> {
    let mut out: Vec<Array> = xs.iter().map(|x| x * (n as f32)).collect();
    if let Some(m) = mask {
        out.push(m.clone());
    }
    if on {
        out.push(&pair.0 + &pair.1);
    }
    out
}

#[mlx::graph]
fn with_static_enum(x: &Array, #[mlx(static)] activation: Activation) -> Array {
    match activation {
        Activation::Silu => x.silu(),
        Activation::Gelu => x.gelu(),
    }
}

fn main() {
    let _ = (Mlp::forward, Mlp::scale, Mlp::associated, many, with_static_enum);
}
