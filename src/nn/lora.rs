//! Low-rank adapters (LoRA) on linear layers: `y = W x + s · B (A x)`, as PEFT's
//! `lora.Linear` computes it.
//!
//! A dense layer takes the update into its weight (`W += s · B A`, in float32, then back to
//! the weight's dtype), so the adapted model runs exactly as fast as the plain one. A
//! quantized layer keeps its packed weight as it is (quantizing `W + s · B A` again would
//! add a second rounding on top of the first) and runs the low-rank product beside the
//! quantized one.

use crate::{Array, Dtype, Module};

use super::{Linear, QuantizedLinear};

/// The adapters of a quantized layer, all of them in one low-rank pair: adapters stack
/// along the rank, `down = [s₁A₁; s₂A₂]`, `up = [B₁ B₂]`, so `up · down = Σ sᵢ Bᵢ Aᵢ`.
#[derive(Module, Clone)]
pub struct LowRank {
    /// `[rank, in]`, the scales folded in.
    pub down: Array,
    /// `[out, rank]`.
    pub up: Array,
}

impl LowRank {
    /// `(x Aᵀ) Bᵀ`.
    pub fn apply(&self, x: &Array) -> Array {
        x.matmul(&self.down.t()).matmul(&self.up.t())
    }

    /// The rank of the stacked adapters; `None` unless `down` is `[rank, in]` and `up`
    /// `[out, rank]` (the fields are public, so nothing else guarantees it).
    pub fn rank(&self) -> Option<i32> {
        match (self.down.shape(), self.up.shape()) {
            (&[rank, _], &[_, up_rank]) if rank == up_rank => Some(rank),
            _ => None,
        }
    }
}

impl Linear {
    /// Adds the adapter `scale · up · down` (`down` `[rank, in]`, `up` `[out, rank]`) to
    /// the layer: merged into a dense weight, kept beside a quantized one. The caller
    /// checks the shapes against [`Linear::features`]; a mismatch surfaces from MLX at
    /// evaluation.
    pub fn add_low_rank(&mut self, down: &Array, up: &Array, scale: f32) {
        match self {
            Linear::Dense(dense) => {
                let dtype = dense.weight.dtype();
                let update = up.astype(Dtype::F32).matmul(&down.astype(Dtype::F32));
                dense.weight =
                    (dense.weight.astype(Dtype::F32) + update * f64::from(scale)).astype(dtype);
            }
            Linear::Quantized(quantized) => quantized.add_low_rank(down, up, scale),
        }
    }
}

impl QuantizedLinear {
    fn add_low_rank(&mut self, down: &Array, up: &Array, scale: f32) {
        let down = (down.astype(Dtype::F32) * f64::from(scale)).astype(self.dtype);
        let up = up.astype(self.dtype);
        self.lora = Some(match self.lora.take() {
            None => LowRank { down, up },
            Some(stacked) => LowRank {
                down: crate::concatenate(&[&stacked.down, &down], 0),
                up: crate::concatenate(&[&stacked.up, &up], 1),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Dense, MatmulPath, QuantConfig, QuantFormat};
    use crate::random;

    fn normal(shape: &[i32], seed: u64) -> Array {
        random::normal(shape, Dtype::F32, &random::key(seed))
    }

    fn max_abs_diff(a: &Array, b: &Array) -> f32 {
        (a - b).abs().max(&[0, 1], false).item::<f32>().unwrap()
    }

    #[test]
    fn a_merged_adapter_adds_its_scaled_product_to_the_output() {
        let dense = Dense {
            weight: normal(&[8, 32], 1),
            bias: Some(normal(&[8], 2)),
        };
        let (down, up) = (normal(&[2, 32], 3), normal(&[8, 2], 4));
        let x = normal(&[5, 32], 5);
        let mut linear = Linear::Dense(dense.clone());
        let plain = linear.forward(&x);
        linear.add_low_rank(&down, &up, 0.7);
        let expected = &plain + x.matmul(&down.t()).matmul(&up.t()) * 0.7;
        assert!(max_abs_diff(&linear.forward(&x), &expected) < 1e-5);
    }

    #[test]
    fn quantized_layers_keep_their_packed_weight_and_stack_adapters() {
        let dense = Dense {
            weight: normal(&[8, 32], 1),
            bias: None,
        };
        let quantized = QuantizedLinear::from_dense(
            &dense,
            QuantConfig::new(QuantFormat::Mxfp8),
            MatmulPath::Dequantize,
        )
        .unwrap();
        let packed = quantized.packed.to_vec::<u32>().unwrap();
        let mut linear = Linear::Quantized(quantized);
        let x = normal(&[5, 32], 5);
        let plain = linear.forward(&x);
        let adapters = [
            (normal(&[2, 32], 3), normal(&[8, 2], 4), 0.5),
            (normal(&[3, 32], 6), normal(&[8, 3], 7), 2.0),
        ];
        let mut expected = plain;
        for (down, up, scale) in &adapters {
            linear.add_low_rank(down, up, *scale);
            expected = expected + x.matmul(&down.t()).matmul(&up.t()) * f64::from(*scale);
        }
        assert!(max_abs_diff(&linear.forward(&x), &expected) < 1e-4);
        let Linear::Quantized(q) = &linear else {
            unreachable!("adapters do not change a layer's kind")
        };
        assert_eq!(q.packed.to_vec::<u32>().unwrap(), packed);
        assert_eq!(q.lora.as_ref().and_then(LowRank::rank), Some(5));
    }
}
