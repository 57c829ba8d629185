//! A model's linear layers made quantized: in memory from dense ones, or as templates a
//! quantized checkpoint fills; MLX's own tensor names read as this project's; and the
//! report of what a loaded model's linear layers are. Models hand over their linear
//! layers by checkpoint path (`linears_mut`), so one implementation serves all of them.

use crate::io::Checkpoint;
use crate::module::Module;
use crate::nn::quant::{probe, MatmulPath, ProbeShape, QuantConfig, QuantFormat};
use crate::nn::{Linear, QuantizedLinear};
use crate::{Array, Dtype};

/// The suffix that marks a quantized layer's tensors in a checkpoint.
pub use crate::io::SCALE_SUFFIX;

/// MLX's and mlx-lm's names of a quantized layer's scales and biases (`mlx.nn.quantize`
/// writes `<layer>.weight`, `<layer>.scales`, `<layer>.biases`), and this project's.
const MLX_NAMES: [(&str, &str); 2] = [(".scales", SCALE_SUFFIX), (".biases", ".weight_qbias")];

/// Why a layer of `linear`'s shape cannot be quantized with `config`, if it cannot.
pub fn unquantizable(linear: &Linear, config: &QuantConfig) -> Option<String> {
    config.unquantizable(linear.features().1)
}

/// Quantizes (lazily) every dense layer of `linears` that `keeps_dense` leaves to it.
pub fn quantize_linears<'a>(
    linears: impl IntoIterator<Item = (String, &'a mut Linear)>,
    config: QuantConfig,
    matmul: MatmulPath,
    keeps_dense: impl Fn(&str, &Linear) -> Option<String>,
) -> crate::Result<()> {
    for (path, linear) in linears {
        if keeps_dense(&path, linear).is_some() {
            continue;
        }
        if let Linear::Dense(dense) = &*linear {
            *linear = Linear::Quantized(QuantizedLinear::from_dense(dense, config, matmul)?);
        }
    }
    Ok(())
}

/// A checkpoint whose quantization cannot be loaded as asked. Each message names the file
/// or tensor at fault; the model crates put the checkpoint's name in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantizedCheckpointError {
    #[error(
        "config.json records {0} quantization, but no tensor is quantized (no *{suffix})",
        suffix = SCALE_SUFFIX
    )]
    NoQuantizedTensors(QuantFormat),
    #[error("{first} and {more} more quantized tensors, but config.json records no quantization")]
    Unrecorded { first: String, more: usize },
    /// Quantizing at load asked of a checkpoint stored quantized.
    #[error("already quantized ({0}): quantization applies to dense checkpoints")]
    AlreadyQuantized(QuantFormat),
}

/// How a model's quantized layers load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadQuantization {
    /// The format the checkpoint stores its quantized layers in; `None`: stored dense.
    pub stored: Option<QuantConfig>,
    /// The matmul of the quantized layers, stored or quantized at load; `None`: none are.
    pub matmul: Option<MatmulPath>,
}

impl LoadQuantization {
    /// Checks `recorded` (`config.json`'s record) against `checkpoint`'s tensors, refuses
    /// to `quantize` a checkpoint stored quantized, and picks the matmul: `matmul` if
    /// given, else the device's choice for `dtype` activations on `shape` (see [`probe`]).
    pub fn new(
        recorded: Option<QuantConfig>,
        checkpoint: &Checkpoint,
        quantize: Option<QuantConfig>,
        matmul: Option<MatmulPath>,
        dtype: Dtype,
        shape: ProbeShape,
    ) -> Result<LoadQuantization, QuantizedCheckpointError> {
        let stored = match (recorded, stored_scales(checkpoint)) {
            (Some(config), None) => {
                return Err(QuantizedCheckpointError::NoQuantizedTensors(config.format))
            }
            (None, Some((first, count))) => {
                return Err(QuantizedCheckpointError::Unrecorded {
                    first,
                    more: count - 1,
                })
            }
            (recorded, _) => recorded,
        };
        if let (Some(stored), Some(_)) = (stored, quantize) {
            return Err(QuantizedCheckpointError::AlreadyQuantized(stored.format));
        }
        let matmul = stored
            .or(quantize)
            .map(|config| matmul.unwrap_or_else(|| probe(config, dtype, shape)));
        Ok(LoadQuantization { stored, matmul })
    }
}

/// Whether `checkpoint` stores quantized layers: the first `<layer>.weight_scale`, and
/// how many there are.
fn stored_scales(checkpoint: &Checkpoint) -> Option<(String, usize)> {
    let mut scales = checkpoint.names().filter(|n| n.ends_with(SCALE_SUFFIX));
    let first = scales.next()?.to_string();
    Some((first, 1 + scales.count()))
}

/// Turns the dense layers of `linears` into zero templates of quantized ones wherever
/// `checkpoint` holds `<layer>.weight_scale`, ready to be filled. Returns what cannot fit,
/// for the load report: a quantized layer whose input features are not whole groups, and
/// tensors of the wrong dtype (loading would convert them silently).
pub fn quantized_templates<'a>(
    linears: impl IntoIterator<Item = (String, &'a mut Linear)>,
    checkpoint: &Checkpoint,
    config: QuantConfig,
    matmul: MatmulPath,
    dtype: Dtype,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (path, linear) in linears {
        let Linear::Dense(dense) = &*linear else {
            continue;
        };
        if checkpoint.get(&format!("{path}{SCALE_SUFFIX}")).is_none() {
            continue;
        }
        if let Some(reason) = unquantizable(linear, &config) {
            problems.push((path, format!("quantized, but its {reason}")));
            continue;
        }
        let template = QuantizedLinear::zeros(
            linear.features(),
            dense.bias.is_some(),
            config,
            matmul,
            dtype,
        );
        problems.extend(wrong_dtypes(&path, &template, checkpoint));
        *linear = Linear::Quantized(template);
    }
    problems
}

/// The tensors of the quantized layer at `path` whose stored dtype `template` cannot take:
/// packed words and byte scales must be stored as such; floats may be any float dtype.
fn wrong_dtypes(
    path: &str,
    template: &QuantizedLinear,
    checkpoint: &Checkpoint,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (name, array) in template.parameters() {
        let name = format!("{path}.{name}");
        let expected = array.dtype();
        if let Some(found) = checkpoint.get(&name).map(Array::dtype) {
            if found != expected && !(found.is_float() && expected.is_float()) {
                problems.push((name, format!("expected {expected}, found {found}")));
            }
        }
    }
    problems
}

/// A checkpoint in MLX's quantized layout (`<layer>.scales`, `<layer>.biases`) under this
/// project's names (`<layer>.weight_scale`, `<layer>.weight_qbias`); any other checkpoint
/// unchanged. Only the names differ: the packed words and scales are laid out alike.
pub fn from_mlx_names(mut checkpoint: Checkpoint) -> Checkpoint {
    let mlx_layout = checkpoint.names().any(|n| n.ends_with(MLX_NAMES[0].0));
    if !mlx_layout || stored_scales(&checkpoint).is_some() {
        return checkpoint;
    }
    let names: Vec<String> = checkpoint.names().map(str::to_owned).collect();
    let renamed = names.into_iter().filter_map(|name| {
        let array = checkpoint.take(&name)?;
        let ours = MLX_NAMES
            .iter()
            .find_map(|(theirs, ours)| Some(format!("{}{ours}", name.strip_suffix(theirs)?)));
        Some((ours.unwrap_or(name), array))
    });
    Checkpoint::from_arrays(renamed.collect::<Vec<_>>())
}

/// What a loaded model's linear layers are: `dit info` and `dit quantize` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantReport {
    /// The format of the quantized layers; `None` for a dense model.
    pub config: Option<QuantConfig>,
    /// How the quantized layers multiply; `None` for a dense model.
    pub matmul: Option<MatmulPath>,
    /// Quantized linear layers.
    pub quantized: usize,
    /// The linear layers left dense (all of them in a dense model), each with the reason.
    pub dense: Vec<(String, String)>,
    /// Bytes of the weights were every linear layer dense in the compute dtype.
    pub dense_bytes: usize,
    /// The model's parameters (a quantized weight counts its float elements, not the
    /// packed words).
    pub parameters: usize,
}

impl QuantReport {
    /// The report of a model of `bytes` and `parameters` (as loaded) whose linear layers
    /// are `linears`; `keeps_dense` says why quantization left a layer dense (`None`: it
    /// was stored dense).
    pub fn of<'a>(
        bytes: usize,
        parameters: usize,
        linears: impl IntoIterator<Item = (String, &'a mut Linear)>,
        config: Option<QuantConfig>,
        matmul: Option<MatmulPath>,
        keeps_dense: impl Fn(&str, &Linear) -> Option<String>,
    ) -> QuantReport {
        let mut report = QuantReport {
            config,
            matmul,
            quantized: 0,
            dense: Vec::new(),
            dense_bytes: bytes,
            parameters,
        };
        for (path, linear) in linears {
            match &*linear {
                Linear::Quantized(q) => {
                    let dense = linear.dense_parameters();
                    report.quantized += 1;
                    report.parameters = report.parameters + dense - q.num_parameters();
                    report.dense_bytes = report.dense_bytes + dense * q.dtype.size() - q.nbytes();
                }
                Linear::Dense(_) => {
                    let reason =
                        keeps_dense(&path, linear).unwrap_or_else(|| "stored dense".into());
                    report.dense.push((path, reason));
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::QuantFormat;

    #[test]
    fn a_checkpoint_loads_quantized_only_as_recorded_and_once() {
        let scales = |names: &[&str]| {
            Checkpoint::from_arrays(names.iter().map(|n| (*n, Array::zeros(&[1], Dtype::U8))))
        };
        let (dense, quantized) = (scales(&[]), scales(&["a.weight_scale", "b.weight_scale"]));
        let mxfp8 = Some(QuantConfig::new(QuantFormat::Mxfp8));
        let shape = ProbeShape {
            tokens: 1,
            out: 32,
            inp: 32,
        };
        let plan = |recorded, checkpoint, quantize| {
            let forced = Some(MatmulPath::Dequantize);
            LoadQuantization::new(recorded, checkpoint, quantize, forced, Dtype::F32, shape)
        };
        let err = plan(mxfp8, &dense, None).unwrap_err();
        assert_eq!(
            err,
            QuantizedCheckpointError::NoQuantizedTensors(QuantFormat::Mxfp8)
        );
        let err = plan(None, &quantized, None).unwrap_err().to_string();
        assert!(
            err.starts_with("a.weight_scale and 1 more quantized tensors"),
            "{err}"
        );
        let err = plan(mxfp8, &quantized, mxfp8).unwrap_err().to_string();
        assert!(err.starts_with("already quantized (mxfp8)"), "{err}");

        let loaded = plan(mxfp8, &quantized, None).unwrap();
        assert_eq!(
            (loaded.stored, loaded.matmul),
            (mxfp8, Some(MatmulPath::Dequantize))
        );
        let loaded = plan(None, &dense, mxfp8).unwrap();
        assert_eq!(
            (loaded.stored, loaded.matmul),
            (None, Some(MatmulPath::Dequantize))
        );
        let loaded = plan(None, &dense, None).unwrap();
        assert_eq!((loaded.stored, loaded.matmul), (None, None));
    }
}
