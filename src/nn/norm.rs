//! Normalization layers: RMSNorm, LayerNorm and GroupNorm, with PyTorch's weight names
//! (`weight`, `bias`).

use crate::{fast, Array, Dtype, Module};

/// `x / sqrt(mean(x², -1) + eps) · weight` over the last axis (MLX's fused kernel, which
/// accumulates in float32 whatever the input dtype).
#[derive(Module, Clone)]
pub struct RmsNorm {
    pub weight: Array,
    #[weight(skip)]
    pub eps: f32,
}

impl RmsNorm {
    /// A layer of `dim` ones in `dtype` (what loading fills in).
    pub fn ones(dim: i32, eps: f32, dtype: Dtype) -> RmsNorm {
        RmsNorm {
            weight: Array::ones(&[dim], dtype),
            eps,
        }
    }

    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }

    /// `forward(x) · scale`, a per-item modulation `scale: [B, 1, D]` (plain `forward`
    /// without one); one kernel on CUDA GPUs.
    #[track_caller]
    pub fn forward_scaled(&self, x: &Array, scale: Option<&Array>) -> Array {
        match scale {
            Some(scale) => fast::rms_norm_scaled(x, (&self.weight, self.eps), scale),
            None => self.forward(x),
        }
    }

    /// The residual stream after a sublayer: `x + gate · forward(y)` (one kernel on CUDA
    /// GPUs: [`fast::residual_rms_norm`]).
    #[track_caller]
    pub fn add_normed(&self, x: &Array, y: &Array, gate: Option<&Array>) -> Array {
        fast::residual_rms_norm(x, y, (&self.weight, self.eps), gate)
    }

    /// [`add_normed`](RmsNorm::add_normed), and the next sublayer's input
    /// `next.forward_scaled(h, scale)` from it, in one pass: `(h, next input)`.
    #[track_caller]
    pub fn add_normed_then(
        &self,
        x: &Array,
        y: &Array,
        gate: Option<&Array>,
        next: &RmsNorm,
        scale: Option<&Array>,
    ) -> (Array, Array) {
        fast::residual_rms_norm_then(
            x,
            y,
            (&self.weight, self.eps),
            gate,
            (&next.weight, next.eps),
            scale,
        )
    }
}

/// `(x - mean) / sqrt(var + eps) · weight + bias` over the last axis; without weight and
/// bias when the layer has no affine parameters.
#[derive(Module, Clone)]
pub struct LayerNorm {
    pub weight: Option<Array>,
    pub bias: Option<Array>,
    #[weight(skip)]
    pub eps: f32,
}

impl LayerNorm {
    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        fast::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// PyTorch's `GroupNorm` on channels-last input: the channels split into `groups`
/// consecutive groups, each normalized over its channels and all positions, then scaled
/// and shifted per channel, in float32 whatever the input's dtype.
///
/// Statistics are sums per channel over each row, then over the rows, then per group:
/// reductions over an outer axis with the channels contiguous, which MLX's CPU backend runs
/// at memory speed, where one reduction over the two non-adjacent axes of
/// `[N, H·W, groups, C/groups]` is slow (on `[1, 512, 512, 64]` with 32 groups, 164 ms
/// against 431). Summing rows first also bounds each float32 partial sum to one row: within
/// 2e-6 of a float64 reference where the one-pass reduction is 5e-5 off. The variance is
/// taken from the centered values, which keeps it accurate for activations with a large
/// mean.
#[derive(Module, Clone)]
pub struct GroupNorm {
    pub weight: Array,
    pub bias: Array,
    #[weight(skip)]
    pub groups: i32,
    #[weight(skip)]
    pub eps: f32,
}

impl GroupNorm {
    /// A layer over `channels` in `dtype`, ones and zeros (what loading fills in).
    pub fn new(channels: i32, groups: i32, eps: f32, dtype: Dtype) -> GroupNorm {
        GroupNorm {
            weight: Array::ones(&[channels], dtype),
            bias: Array::zeros(&[channels], dtype),
            groups,
            eps,
        }
    }

    /// `x: [N, H, W, C]`.
    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        let [n, h, w, c] = x.dims();
        let groups = self.groups.max(1);
        let per_group = c / groups;
        let count = f64::from(h) * f64::from(w) * f64::from(per_group);
        let x32 = x.astype(Dtype::F32);
        // [N, 1, 1, C]: each channel gets its group's mean of `t`.
        let group_mean = |t: &Array| {
            t.sum(2, false)
                .sum(1, false)
                .reshape(&[n, groups, per_group])
                .sum(-1, true)
                .broadcast_to(&[n, groups, per_group])
                .reshape(&[n, 1, 1, c])
                / count
        };
        let centered = &x32 - group_mean(&x32);
        let inv_std = (group_mean(&centered.square()) + f64::from(self.eps)).rsqrt();
        let weight = self.weight.astype(Dtype::F32);
        let bias = self.bias.astype(Dtype::F32);
        (centered * (inv_std * weight) + bias).astype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random;

    /// `x · rsqrt(mean(x²) + eps) · w` over rows of `d`, in float64.
    fn rms_rows(x: &[f64], w: &[f32], d: usize, eps: f64) -> Vec<f64> {
        x.chunks(d)
            .flat_map(|row| {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps).sqrt();
                row.iter().zip(w).map(move |(v, &w)| v * inv * f64::from(w))
            })
            .collect()
    }

    /// GroupNorm of channels-last `x` (`batch` items of `channels` channels) in float64,
    /// two-pass, computed on the host: GPUs have no float64.
    fn group_norm_reference(x: &[f64], batch: usize, channels: usize, gn: &GroupNorm) -> Vec<f64> {
        let (w, b) = (values(&gn.weight), values(&gn.bias));
        let per_group = channels / gn.groups as usize;
        let item = x.len() / batch;
        let mut out = vec![0.0; x.len()];
        for n in 0..batch {
            for g in 0..gn.groups as usize {
                let members: Vec<usize> = (n * item..(n + 1) * item)
                    .filter(|i| (i % channels) / per_group == g)
                    .collect();
                let count = members.len() as f64;
                let mean = members.iter().map(|&i| x[i]).sum::<f64>() / count;
                let var = members.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / count;
                let inv = 1.0 / (var + f64::from(gn.eps)).sqrt();
                for &i in &members {
                    out[i] = (x[i] - mean) * inv * w[i % channels] + b[i % channels];
                }
            }
        }
        out
    }

    fn values(a: &Array) -> Vec<f64> {
        a.to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn max_error(got: &Array, want: &[f64]) -> f64 {
        let got = values(got);
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max)
    }

    /// The residual stream's norms (on a CUDA GPU, the fused kernel's packed and unpacked
    /// paths) against float64, with and without modulation.
    #[test]
    fn residual_norms_match_a_float64_reference() {
        let (b, l) = (2, 3);
        for d in [8, 100, 3840] {
            let (du, rows) = (d as usize, (b * l) as usize);
            let norm = |seed: u64, eps: f32| RmsNorm {
                weight: random::uniform(0.5, 1.5, &[d], Dtype::F32, &random::key(seed)),
                eps,
            };
            let (first, next) = (norm(1, 1e-5), norm(2, 1e-6));
            let x = random::normal(&[b, l, d], Dtype::F32, &random::key(3));
            let y = random::normal(&[b, l, d], Dtype::F32, &random::key(4)) * 4.0;
            let gate = random::normal(&[b, 1, d], Dtype::F32, &random::key(5));
            let scale = random::normal(&[b, 1, d], Dtype::F32, &random::key(6)) + 1.0;
            let (xs, ys, gs, ss) = (values(&x), values(&y), values(&gate), values(&scale));
            let fw = first.weight.to_vec::<f32>().unwrap();
            let nw = next.weight.to_vec::<f32>().unwrap();
            // Row r belongs to batch item r / l, whose modulation is row r / l of gate.
            let per_item = |m: &[f64], i: usize| m[(i / du) / l as usize * du + i % du];
            for modulated in [false, true] {
                let (g, s) = if modulated {
                    (Some(&gate), Some(&scale))
                } else {
                    (None, None)
                };
                let normed = rms_rows(&ys, &fw, du, 1e-5);
                let h: Vec<f64> = (0..rows * du)
                    .map(|i| {
                        let gate = if modulated { per_item(&gs, i) } else { 1.0 };
                        xs[i] + gate * normed[i]
                    })
                    .collect();
                let o: Vec<f64> = rms_rows(&h, &nw, du, 1e-6)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| if modulated { v * per_item(&ss, i) } else { v })
                    .collect();
                let (got_h, got_o) = first.add_normed_then(&x, &y, g, &next, s);
                let what = format!("d {d}, modulated {modulated}");
                assert!(max_error(&got_h, &h) < 1e-5, "{what}: h");
                assert!(max_error(&got_o, &o) < 1e-5, "{what}: next input");
                assert!(max_error(&first.add_normed(&x, &y, g), &h) < 1e-5, "{what}");
                let scaled: Vec<f64> = rms_rows(&xs, &nw, du, 1e-6)
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| if modulated { v * per_item(&ss, i) } else { v })
                    .collect();
                assert!(
                    max_error(&next.forward_scaled(&x, s), &scaled) < 1e-5,
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn residual_norms_name_misfit_shapes() {
        let norm = RmsNorm::ones(8, 1e-5, Dtype::F32);
        let x = Array::zeros(&[1, 3, 8], Dtype::F32);
        let y = Array::zeros(&[1, 4, 8], Dtype::F32);
        let err = norm
            .add_normed(&x, &y, None)
            .error()
            .expect("misfit")
            .to_string();
        assert!(err.contains("differ in shape"), "{err}");
    }

    /// Against a float64 two-pass reference, on values with a large mean (where a
    /// one-pass variance loses digits), for several group sizes and a bfloat16 input.
    #[test]
    fn matches_a_float64_reference() {
        let x = random::normal(&[2, 9, 7, 12], Dtype::F32, &random::key(4)) * 3.0 + 20.0;
        for groups in [1, 3, 12] {
            let gn = GroupNorm {
                weight: random::normal(&[12], Dtype::F32, &random::key(5)),
                bias: random::normal(&[12], Dtype::F32, &random::key(6)),
                groups,
                eps: 1e-6,
            };
            let reference = group_norm_reference(&values(&x), 2, 12, &gn);
            let err = max_error(&gn.forward(&x), &reference);
            assert!(err < 1e-5, "groups {groups}: {err}");
            let bf16 = gn.forward(&x.astype(Dtype::Bf16));
            assert_eq!(bf16.dtype(), Dtype::Bf16);
            let err = max_error(&bf16.astype(Dtype::F32), &reference);
            // bfloat16 keeps 8 bits: inputs near 20 are rounded by up to 0.06, a quarter
            // of the spread of 3 times a weight of ~1, plus the output's own rounding.
            assert!(err < 0.2, "groups {groups}, bfloat16: {err}");
        }
    }
}
