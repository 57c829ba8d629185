//! A DiT-style block over random weights, shared by the graph tests and `bench_graph`.

use mlx::fast::{self, Mask};
use mlx::{random, Array, Dtype, Module};

fn normal(shape: &[i32], seed: u64) -> Array {
    random::normal(shape, Dtype::F32, &random::key(seed))
}

#[derive(Module, Clone)]
pub struct Linear {
    pub weight: Array,
    pub bias: Option<Array>,
}

impl Linear {
    pub fn random(out: i32, inp: i32, seed: u64) -> Linear {
        Linear {
            weight: normal(&[out, inp], seed) * (1.0 / f64::from(inp).sqrt()),
            bias: Some(normal(&[out], seed + 1000)),
        }
    }

    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let y = x.matmul(&self.weight.t());
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }
}

/// A DiT-style block: RMSNorm, adaLN modulation, attention with per-head QK RMSNorm,
/// SwiGLU feed-forward.
#[derive(Module, Clone)]
pub struct Block {
    norm1: Array,
    norm2: Array,
    q_norm: Array,
    k_norm: Array,
    adaln: Linear,
    qkv: Linear,
    out: Linear,
    w1: Linear,
    w2: Linear,
    w3: Linear,
    #[weight(skip)]
    heads: i32,
}

impl Block {
    pub fn random(dim: i32, heads: i32, seed: u64) -> Block {
        let hidden = dim * 2;
        Block {
            norm1: Array::ones(&[dim], Dtype::F32),
            norm2: Array::ones(&[dim], Dtype::F32),
            q_norm: Array::ones(&[dim / heads], Dtype::F32),
            k_norm: Array::ones(&[dim / heads], Dtype::F32),
            adaln: Linear::random(4 * dim, dim, seed),
            qkv: Linear::random(3 * dim, dim, seed + 1),
            out: Linear::random(dim, dim, seed + 2),
            w1: Linear::random(hidden, dim, seed + 3),
            w2: Linear::random(dim, hidden, seed + 4),
            w3: Linear::random(hidden, dim, seed + 5),
            heads,
        }
    }

    /// RMSNorm, adaLN modulation, attention with per-head QK RMSNorm, SwiGLU.
    #[mlx::graph]
    pub fn forward(&self, x: &Array, c: &Array) -> Array {
        let [b, l, d] = [
            x.dim(0).unwrap_or(0),
            x.dim(1).unwrap_or(0),
            x.dim(2).unwrap_or(0),
        ];
        let hd = d / self.heads;
        let m = self.adaln.forward(&c.silu()).expand_dims(1).split(4, -1);
        let h = fast::rms_norm(x, Some(&self.norm1), 1e-5) * (&m[0] + 1.0);
        let qkv = self.qkv.forward(&h).reshape(&[b, l, 3, self.heads, hd]);
        let part = |i: i32| {
            qkv.slice_axis(2, i, i + 1)
                .squeeze(2)
                .transpose(&[0, 2, 1, 3])
        };
        let q = fast::rms_norm(&part(0), Some(&self.q_norm), 1e-5);
        let k = fast::rms_norm(&part(1), Some(&self.k_norm), 1e-5);
        let attn = fast::scaled_dot_product_attention(
            &q,
            &k,
            &part(2),
            1.0 / (hd as f32).sqrt(),
            Mask::None,
        );
        let attn = attn.transpose(&[0, 2, 1, 3]).reshape(&[b, l, d]);
        let x = x + self.out.forward(&attn) * m[1].tanh();
        let h = fast::rms_norm(&x, Some(&self.norm2), 1e-5) * (&m[2] + 1.0);
        let ff = self
            .w2
            .forward(&(self.w1.forward(&h).silu() * self.w3.forward(&h)));
        &x + ff * m[3].tanh()
    }
}
