//! Rotary position embeddings.
//!
//! Two layouts exist in checkpoints, and MLX's fused kernel ([`crate::fast::rope`]) does
//! both for positions along the sequence axis:
//!
//! - half-split (`rotate_half`, Llama/Qwen): feature `i` turns with feature `i + d/2`;
//!   [`rotate`] applies it with a base (`rope_theta`) and a first position;
//! - interleaved (complex pairs, diffusers' multi-axis RoPE): features `2i` and `2i + 1`
//!   turn together, by an angle of its own per token; [`RopeTable`] holds precomputed
//!   angles for that.

use crate::fast::{self, Rope};
use crate::{Array, Module};

/// Half-split RoPE over the whole last axis of `x: [batch, heads, tokens, head_dim]` for
/// positions `offset, offset + 1, ...`, with frequencies `base^(-2i / head_dim)`.
#[track_caller]
pub fn rotate(x: &Array, base: f32, offset: i32) -> Array {
    let [.., head_dim] = x.dims::<4>();
    fast::rope(
        x,
        Rope {
            base,
            offset,
            ..Rope::new(head_dim)
        },
    )
}

/// Per-token rotary tables for interleaved pairs, laid out for one fused pass: `cos` and
/// `sin` of `[batch, tokens, 1, head_dim]`, each pair's angle repeated over its two
/// channels, `sin` negated on the first of them. Then
/// `rotate(x) = x · cos + swap_pairs(x) · sin`, which [`fast::rope_table`] computes in one
/// kernel on CUDA GPUs (with the per-head RMSNorm that comes before it in DiT attention).
#[derive(Module, Clone)]
pub struct RopeTable {
    pub cos: Array,
    pub sin: Array,
}

impl RopeTable {
    /// The table of per-pair angles given by their cosines and sines, row-major
    /// `[batch, tokens, head_dim / 2]`.
    pub fn from_pairs(cos: &[f32], sin: &[f32], batch: i32, tokens: i32) -> RopeTable {
        let pairs = cos.len() as i32 / (batch * tokens).max(1);
        let mut full_cos = Vec::with_capacity(2 * cos.len());
        let mut full_sin = Vec::with_capacity(2 * sin.len());
        for (&c, &s) in cos.iter().zip(sin) {
            full_cos.extend([c, c]);
            full_sin.extend([-s, s]);
        }
        let shape = [batch, tokens, 1, 2 * pairs];
        RopeTable {
            cos: Array::from_slice(&full_cos, &shape),
            sin: Array::from_slice(&full_sin, &shape),
        }
    }

    /// Rotates consecutive channel pairs of `x: [batch, tokens, heads, head_dim]` in float32
    /// (as PyTorch code does through complex64) and casts back to `x`'s dtype.
    #[track_caller]
    pub fn apply(&self, x: &Array) -> Array {
        fast::rope_table(x, &self.cos, &self.sin, None)
    }

    /// [`apply`](RopeTable::apply) to `x` after an RMSNorm over each head (`weight:
    /// [head_dim]`), in one pass where the device allows it.
    #[track_caller]
    pub fn apply_after_norm(&self, x: &Array, weight: &Array, eps: f32) -> Array {
        fast::rope_table(x, &self.cos, &self.sin, Some((weight, eps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{random, Dtype};

    const B: i32 = 2;
    const L: i32 = 3;
    const H: i32 = 4;

    /// A table of random angles, random inputs, the inputs' values and the angles in
    /// float64.
    fn case(d: i32) -> (RopeTable, Array, Vec<f32>, Vec<f64>) {
        let pairs = (B * L * d / 2) as usize;
        let angles: Vec<f32> = (0..pairs).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let table = RopeTable::from_pairs(&cos, &sin, B, L);
        let x = random::normal(&[B, L, H, d], Dtype::F32, &random::key(3)) * 2.0;
        let xs = x.to_vec::<f32>().unwrap();
        let angles = angles.iter().map(|&a| f64::from(a)).collect();
        (table, x, xs, angles)
    }

    /// `norm` then the rotation of each pair by its token's angle, in float64.
    fn reference(xs: &[f32], angles: &[f64], d: usize, weight: Option<&[f32]>) -> Vec<f64> {
        let mut out = Vec::with_capacity(xs.len());
        for (row, head) in xs.chunks(d).enumerate() {
            let token = row / H as usize;
            let inv = match weight {
                Some(_) => {
                    let ms = head.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / d as f64;
                    1.0 / (ms + 1e-5).sqrt()
                }
                None => 1.0,
            };
            let w = |i: usize| weight.map_or(1.0, |w| f64::from(w[i]));
            for p in 0..d / 2 {
                let a = angles[token * d / 2 + p];
                let u = f64::from(head[2 * p]) * inv * w(2 * p);
                let v = f64::from(head[2 * p + 1]) * inv * w(2 * p + 1);
                out.extend([u * a.cos() - v * a.sin(), u * a.sin() + v * a.cos()]);
            }
        }
        out
    }

    fn max_error(got: &Array, want: &[f64]) -> f64 {
        let got = got.to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max)
    }

    /// Both forms against float64 (on a CPU, the composed path), at head sizes the CUDA
    /// kernel takes in packs of 4 channels (partly filled warps, one pack a lane, two) and
    /// in single pairs (6).
    #[test]
    fn rotates_pairs_by_each_tokens_angles() {
        for d in [8, 64, 128, 160, 6] {
            let (table, x, xs, angles) = case(d);
            let err = max_error(&table.apply(&x), &reference(&xs, &angles, d as usize, None));
            assert!(err < 1e-5, "d {d}: {err}");
            let weight = random::uniform(0.5, 1.5, &[d], Dtype::F32, &random::key(4));
            let ws = weight.to_vec::<f32>().unwrap();
            let normed = table.apply_after_norm(&x, &weight, 1e-5);
            let err = max_error(&normed, &reference(&xs, &angles, d as usize, Some(&ws)));
            assert!(err < 1e-5, "d {d}, after norm: {err}");
            let bf16 = table.apply_after_norm(&x.astype(Dtype::Bf16), &weight, 1e-5);
            assert_eq!(bf16.dtype(), Dtype::Bf16);
        }
    }

    #[test]
    fn odd_heads_and_misfit_weights_are_errors() {
        let (table, x, _, _) = case(8);
        let odd = x.slice(&[0, 0, 0, 0], &[B, L, H, 7], &[]);
        let err = table.apply(&odd).error().expect("odd head").to_string();
        assert!(err.contains("must be even"), "{err}");
        let weight = Array::ones(&[6], Dtype::F32);
        let err = table
            .apply_after_norm(&x, &weight, 1e-5)
            .error()
            .expect("misfit weight")
            .to_string();
        assert!(err.contains("weight must be [8]"), "{err}");
    }
}
