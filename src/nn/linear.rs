//! Linear layers: `x wᵀ + b` with the weight dense or quantized (see [`super::quant`]).

use crate::ops::Fp8Rows;
use crate::{Array, Dtype, Module};

use super::lora::LowRank;
use super::quant::{MatmulPath, QuantConfig, QuantFormat, QuantizedWeight};

/// `nn.Linear`: `x wᵀ + b`, its weight dense or quantized (see [`super::quant`]).
/// Either way it sits at the same checkpoint path; the variant is part of the structure
/// compiled graphs are keyed on.
#[derive(Module, Clone)]
pub enum Linear {
    Dense(Dense),
    Quantized(QuantizedLinear),
}

impl Linear {
    #[crate::graph]
    pub fn forward(&self, x: &Array) -> Array {
        self.apply(x, &mut None)
    }

    /// `layers.map(|layer| layer.forward(x))` (the q, k and v projections of one input, or a
    /// SwiGLU's gate and up), with what their products have in common done once: `fp8`
    /// layers on the FP8 kernel quantize `x` per token once for all of them.
    pub fn forward_each<const N: usize>(layers: [&Linear; N], x: &Array) -> [Array; N] {
        let mut quantized_x = None;
        layers.map(|layer| layer.apply(x, &mut quantized_x))
    }

    /// `self.forward(silu(gate) · up)`: a SwiGLU's down projection. `fp8` layers on the FP8
    /// kernel quantize the product in the kernel that computes it (see
    /// [`Fp8Rows::quantize_swiglu`]), so it is never stored in the compute dtype.
    pub fn forward_swiglu(&self, gate: &Array, up: &Array) -> Array {
        // Lazy: a layer that takes the quantized rows evaluates it only for its LoRA.
        let x = gate.silu() * up;
        let mut quantized_x = match self {
            Linear::Quantized(quantized) if quantized.multiplies_in_fp8() => {
                Some(Fp8Rows::quantize_swiglu(gate, up))
            }
            _ => None,
        };
        self.apply(&x, &mut quantized_x)
    }

    fn apply(&self, x: &Array, quantized_x: &mut Option<Fp8Rows>) -> Array {
        match self {
            Linear::Dense(dense) => dense.apply(x),
            Linear::Quantized(quantized) => quantized.apply(x, quantized_x),
        }
    }

    /// The dtype the layer computes in.
    pub fn dtype(&self) -> Dtype {
        match self {
            Linear::Dense(dense) => dense.weight.dtype(),
            Linear::Quantized(quantized) => quantized.dtype,
        }
    }

    /// `(out, in)` features.
    pub fn features(&self) -> (i32, i32) {
        match self {
            Linear::Dense(dense) => matrix_dims(&dense.weight),
            Linear::Quantized(quantized) => quantized.features(),
        }
    }

    /// The layer's parameters counted as a dense layer's: `out · in` weights and the bias
    /// (a quantized weight counts its float elements, not its packed words).
    pub fn dense_parameters(&self) -> usize {
        let (out, inp) = self.features();
        let bias = match self {
            Linear::Dense(dense) => dense.bias.is_some(),
            Linear::Quantized(quantized) => quantized.bias.is_some(),
        };
        out as usize * inp as usize + if bias { out as usize } else { 0 }
    }
}

/// The two dims of a matrix. A linear weight is `[out, in]` by construction: loading keeps
/// the template's shape.
fn matrix_dims(w: &Array) -> (i32, i32) {
    let [rows, cols] = w.dims();
    (rows, cols)
}

/// A dense linear layer: diffusers' `weight` `[out, in]` and optional `bias` `[out]`.
#[derive(Module, Clone)]
pub struct Dense {
    pub weight: Array,
    pub bias: Option<Array>,
}

impl Dense {
    fn apply(&self, x: &Array) -> Array {
        let y = x.matmul(&self.weight.t());
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}

/// A linear layer with a quantized weight, stored as `weight` (MLX's packed `uint32`,
/// `[out, in · bits / 32]`, or `fp8`'s bytes `[out, in]`), `weight_scale` (`[out, in /
/// group size]`, or `fp8`'s `[out]`), `weight_qbias` (affine only) and the layer's own
/// float `bias`.
#[derive(Module, Clone)]
pub struct QuantizedLinear {
    #[weight("weight")]
    pub packed: Array,
    #[weight("weight_scale")]
    pub scales: Array,
    #[weight("weight_qbias")]
    pub qbias: Option<Array>,
    pub bias: Option<Array>,
    /// LoRA adapters applied beside the quantized product (see [`super::lora`]).
    pub lora: Option<LowRank>,
    #[weight(skip)]
    pub config: QuantConfig,
    #[weight(skip)]
    pub matmul: MatmulPath,
    /// The compute dtype: of the activations, the output and the dequantized weight.
    #[weight(skip)]
    pub dtype: Dtype,
}

impl QuantizedLinear {
    /// Quantizes a dense layer (lazily); its input features must be a multiple of the
    /// group size.
    #[track_caller]
    pub fn from_dense(
        dense: &Dense,
        config: QuantConfig,
        matmul: MatmulPath,
    ) -> crate::Result<QuantizedLinear> {
        let (packed, scales, qbias) = match config.quantize(&dense.weight)? {
            QuantizedWeight::Packed(q) => (q.weights, q.scales, q.biases),
            QuantizedWeight::Fp8(rows) => (rows.values, rows.scales, None),
        };
        Ok(QuantizedLinear {
            packed,
            scales,
            qbias,
            bias: dense.bias.clone(),
            lora: None,
            config,
            matmul,
            dtype: dense.weight.dtype(),
        })
    }

    /// Zeros of the shapes and dtypes a `[out, inp]` layer stores, ready to be loaded.
    pub fn zeros(
        (out, inp): (i32, i32),
        bias: bool,
        config: QuantConfig,
        matmul: MatmulPath,
        dtype: Dtype,
    ) -> QuantizedLinear {
        let groups = config.scale_shape((out, inp));
        let scale_dtype = config.format.scale_dtype(dtype);
        let format = config.format;
        QuantizedLinear {
            packed: Array::zeros(
                &[out, inp / format.elements_per_entry()],
                format.element_dtype(),
            ),
            scales: Array::zeros(&groups, scale_dtype),
            qbias: config
                .format
                .has_biases()
                .then(|| Array::zeros(&groups, scale_dtype)),
            bias: bias.then(|| Array::zeros(&[out], dtype)),
            lora: None,
            config,
            matmul,
            dtype,
        }
    }

    /// `(out, in)` features, from the packed shape.
    pub fn features(&self) -> (i32, i32) {
        let (out, packed) = matrix_dims(&self.packed);
        (out, packed * self.config.format.elements_per_entry())
    }

    /// Whether the product runs on per-token FP8 rows of the input (see
    /// [`QuantizedWeight::matmul_sharing`]).
    fn multiplies_in_fp8(&self) -> bool {
        self.config.format == QuantFormat::Fp8 && self.matmul == MatmulPath::Kernel
    }

    /// The quantized weight (clones share the arrays).
    pub fn weight(&self) -> QuantizedWeight {
        QuantizedWeight::stored(
            self.config,
            self.packed.clone(),
            self.scales.clone(),
            self.qbias.clone(),
        )
    }

    /// The float weight the packed one stands for, `[out, in]` in the compute dtype.
    pub fn dequantize(&self) -> Array {
        self.weight().dequantize(self.dtype)
    }

    fn apply(&self, x: &Array, quantized_x: &mut Option<Fp8Rows>) -> Array {
        let y = self
            .weight()
            .matmul_sharing(x, quantized_x, self.matmul, self.dtype);
        let y = match &self.lora {
            Some(lora) => y + lora.apply(x),
            None => y,
        };
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{MatmulPath, QuantConfig, QuantFormat};
    use crate::random;

    fn dense(out: i32, seed: u64) -> Dense {
        let normal = |shape: &[i32], seed| random::normal(shape, Dtype::F32, &random::key(seed));
        Dense {
            weight: normal(&[out, 32], seed),
            bias: Some(normal(&[out], seed + 1)),
        }
    }

    fn values(a: &Array) -> Vec<f32> {
        a.to_vec::<f32>().unwrap()
    }

    #[test]
    fn layers_of_one_input_compute_what_each_computes_alone_and_share_its_quantization() {
        let x = random::normal(&[2, 3, 32], Dtype::F32, &random::key(9));
        x.eval().unwrap();
        for format in [None, Some(QuantFormat::Affine8), Some(QuantFormat::Fp8)] {
            let name = format.map_or("dense", QuantFormat::name);
            let make = |dense: Dense| match format {
                None => Linear::Dense(dense),
                Some(format) => Linear::Quantized(
                    QuantizedLinear::from_dense(
                        &dense,
                        QuantConfig::new(format),
                        MatmulPath::Kernel,
                    )
                    .unwrap(),
                ),
            };
            // Different widths, as the q and the k/v of grouped-query attention.
            let [q, k, v] = [make(dense(32, 1)), make(dense(16, 3)), make(dense(16, 5))];
            let params: Vec<_> = [&q, &k, &v].iter().flat_map(|l| l.parameters()).collect();
            crate::eval(params.iter().map(|(_, a)| *a)).unwrap();
            let shared = Linear::forward_each([&q, &k, &v], &x);
            // Eager, as `forward_each` is: `forward` would show as one compiled node.
            let alone = [&q, &k, &v].map(|layer| {
                let [y] = Linear::forward_each([layer], &x);
                y
            });
            // Counted before evaluating, which cuts the graph.
            let nodes = |outs: &[Array; 3]| {
                let outs: Vec<&Array> = outs.iter().collect();
                crate::dump_graph(&outs).unwrap().lines().count()
            };
            let (shared_nodes, alone_nodes) = (nodes(&shared), nodes(&alone));
            for (s, a) in shared.iter().zip(&alone) {
                assert_eq!(s.shape(), a.shape(), "{name}");
                assert_eq!(values(s), values(a), "{name}");
            }
            for (s, layer) in shared.iter().zip([&q, &k, &v]) {
                assert_eq!(values(s), values(&layer.forward(&x)), "{name}");
            }
            if format == Some(QuantFormat::Fp8) {
                assert!(
                    shared_nodes < alone_nodes,
                    "{shared_nodes} vs {alone_nodes}"
                );
            } else {
                assert_eq!(shared_nodes, alone_nodes, "{name}");
            }
        }
    }

    #[test]
    fn a_swiglu_down_projection_computes_the_layer_of_its_product() {
        let normal = |seed| random::normal(&[2, 3, 32], Dtype::F32, &random::key(seed));
        let (gate, up) = (normal(11) * 3.0, normal(12));
        let product = gate.silu() * &up;
        for format in [None, Some(QuantFormat::Affine8), Some(QuantFormat::Fp8)] {
            let name = format.map_or("dense", QuantFormat::name);
            let down = match format {
                None => Linear::Dense(dense(16, 13)),
                Some(format) => Linear::Quantized(
                    QuantizedLinear::from_dense(
                        &dense(16, 13),
                        QuantConfig::new(format),
                        MatmulPath::Kernel,
                    )
                    .unwrap(),
                ),
            };
            let y = down.forward_swiglu(&gate, &up);
            assert_eq!(y.shape(), &[2, 3, 16], "{name}");
            assert_eq!(values(&y), values(&down.forward(&product)), "{name}");
        }
    }
}
