//! LoRA adapter files for the transformer, read as diffusers' `ZImageLoraLoaderMixin` reads
//! them, and applied to the model's linear layers (merged into dense weights, beside
//! quantized ones: see `mlx::nn::lora`).
//!
//! Layouts (one safetensors file each):
//! - diffusers / PEFT: `transformer.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight`
//!   `[out, r]`, `<module>` being diffusers' module path (`layers.0.attention.to_q`); the
//!   prefix may be `diffusion_model.` (ComfyUI, ai-toolkit) or absent, and PEFT's adapter
//!   name (`lora_A.default.weight`) is dropped. The scale `alpha / r` comes from a
//!   `<module>.alpha` tensor, else from the `lora_alpha` (and `use_rslora`) that diffusers'
//!   `save_lora_weights` writes into the `lora_adapter_metadata` header entry, else 1.
//! - Kohya / ComfyUI: `lora_unet_<module with underscores>.lora_down.weight`,
//!   `.lora_up.weight` and `.alpha`; the names are split back into modules as diffusers'
//!   `_convert_non_diffusers_z_image_lora_to_diffusers` does (`to_q`, `to_out`,
//!   `feed_forward`, `adaLN_modulation`... keep their underscores), also with the original
//!   Z-Image names `attention.out` (diffusers' `to_out.0`) and a fused `attention.qkv`
//!   (its up matrix split in three).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mlx::io::{load_safetensors, Safetensors};
use mlx::{Array, Dtype};

use crate::model::ZImage;
use crate::{DitError, Result};

/// The header entry in which diffusers' `save_lora_weights` records the PEFT config.
const METADATA_KEY: &str = "lora_adapter_metadata";

/// One adapted linear layer.
#[derive(Clone)]
pub struct LayerAdapter {
    /// diffusers' module path (`layers.0.attention.to_q`).
    pub module: String,
    /// The file's name for it (its keys without the `.lora_*` suffix), for messages.
    pub key: String,
    /// `[rank, in]`.
    pub down: Array,
    /// `[out, rank]`.
    pub up: Array,
    /// `alpha`, from the file's `.alpha` tensor or its metadata; `None`: the rank (scale 1).
    pub alpha: Option<f32>,
    /// rsLoRA (`use_rslora` in the metadata): the scale is `alpha / √rank`.
    pub rslora: bool,
}

/// The sizes of an adapted layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerDims {
    pub rank: i32,
    pub inp: i32,
    pub out: i32,
}

impl LayerAdapter {
    /// Rank and features, `None` unless `down` is `[rank, in]` and `up` `[out, rank]` with
    /// a positive rank: [`read`] guarantees that, but the fields are public.
    pub fn dims(&self) -> Option<LayerDims> {
        match (self.down.shape(), self.up.shape()) {
            (&[rank, inp], &[out, up_rank]) if rank == up_rank && rank > 0 => {
                Some(LayerDims { rank, inp, out })
            }
            _ => None,
        }
    }

    /// What the update `up · down` is multiplied by before a user's scale: `alpha / rank`
    /// (`None` when [`dims`](Self::dims) is).
    pub fn scale(&self) -> Option<f32> {
        let rank = self.dims()?.rank as f32;
        Some(match self.alpha {
            Some(alpha) if self.rslora => alpha / rank.sqrt(),
            Some(alpha) => alpha / rank,
            None => 1.0,
        })
    }
}

/// An adapter file.
#[derive(Clone)]
pub struct Adapter {
    pub path: PathBuf,
    /// Sorted by module.
    pub layers: Vec<LayerAdapter>,
}

/// What applying an adapter did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Layers adapted.
    pub layers: usize,
    /// Adapted layers the model has no linear layer for, skipped (lenient loading only).
    pub skipped: Vec<String>,
}

/// The first few of `items` and how many more, for one-line messages.
fn listing(items: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = items[..items.len().min(SHOWN)].join("; ");
    if items.len() > SHOWN {
        text += &format!("; and {} more", items.len() - SHOWN);
    }
    text
}

fn error(path: &Path, message: impl Into<String>) -> DitError {
    DitError::Adapter {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Which matrix of an adapter a key holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// Splits a key into its module (in the file's spelling) and part, or `None` for a key
/// that is no LoRA tensor.
fn split_key(key: &str) -> Option<(&str, Part)> {
    const SUFFIXES: [(&str, Part); 9] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        // PEFT's default adapter name.
        (".lora_A.default.weight", Part::Down),
        (".lora_B.default.weight", Part::Up),
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    SUFFIXES
        .iter()
        .find_map(|(suffix, part)| key.strip_suffix(suffix).map(|base| (base, *part)))
}

/// A Kohya module name (`layers_0_attention_to_q`) as diffusers' module path: every `_`
/// is a `.` except inside the names that have their own underscores.
fn kohya_module(name: &str) -> String {
    const PROTECTED: [(&str, &str); 5] = [
        ("to", "q"),
        ("to", "k"),
        ("to", "v"),
        ("to", "out"),
        ("feed", "forward"),
    ];
    const FIXUPS: [(&str, &str); 7] = [
        ("context.refiner.", "context_refiner."),
        ("noise.refiner.", "noise_refiner."),
        ("adaLN.modulation.", "adaLN_modulation."),
        ("all.final.layer.", "all_final_layer."),
        ("all.x.embedder.", "all_x_embedder."),
        ("cap.embedder.", "cap_embedder."),
        ("t.embedder.", "t_embedder."),
    ];
    let parts: Vec<&str> = name.split('_').collect();
    let mut merged = Vec::with_capacity(parts.len());
    let mut i = 0;
    while i < parts.len() {
        let pair = parts.get(i + 1).map(|next| (parts[i], *next));
        if pair.is_some_and(|pair| PROTECTED.contains(&pair)) {
            merged.push(format!("{}_{}", parts[i], parts[i + 1]));
            i += 2;
        } else {
            merged.push(parts[i].to_string());
            i += 1;
        }
    }
    // The fixups match a following dot: a trailing module name gets one to match.
    let mut module = merged.join(".") + ".";
    for (dotted, underscored) in FIXUPS {
        module = module.replace(dotted, underscored);
    }
    module.pop();
    module
}

/// The diffusers module path of a key's module part.
fn module_path(base: &str) -> String {
    let base = base
        .strip_prefix("transformer.")
        .or_else(|| base.strip_prefix("diffusion_model."))
        .unwrap_or(base);
    let module = match base.strip_prefix("lora_unet_") {
        Some(kohya) => kohya_module(kohya),
        None => base.to_string(),
    };
    // The original Z-Image code names the attention's output projection `out`.
    match module.strip_suffix(".attention.out") {
        Some(block) => format!("{block}.attention.to_out.0"),
        None => module,
    }
}

/// The PEFT config's `lora_alpha` and `use_rslora` from the file's metadata, if recorded.
fn metadata_alpha(path: &Path, metadata: &BTreeMap<String, String>) -> Result<(Option<f32>, bool)> {
    let Some(text) = metadata.get(METADATA_KEY) else {
        return Ok((None, false));
    };
    let config: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| error(path, format!("`{METADATA_KEY}` is not JSON: {e}")))?;
    let field = |name: &str| {
        config
            .get(format!("transformer.{name}"))
            .or_else(|| config.get(name))
            .filter(|v| !v.is_null())
    };
    for pattern in ["alpha_pattern", "rank_pattern"] {
        if field(pattern).is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(error(
                path,
                format!("per-layer `{pattern}` in `{METADATA_KEY}` is not supported"),
            ));
        }
    }
    let alpha = field("lora_alpha").and_then(serde_json::Value::as_f64);
    let rslora = field("use_rslora").and_then(serde_json::Value::as_bool);
    Ok((alpha.map(|a| a as f32), rslora.unwrap_or(false)))
}

/// The matrices of one module as the file holds them.
#[derive(Default)]
struct Pieces {
    key: String,
    down: Option<Array>,
    up: Option<Array>,
    alpha: Option<f32>,
}

/// Reads an adapter file (either layout); every key that is no LoRA tensor, every module
/// missing its down or up matrix and every malformed tensor is an error, all named at once.
pub fn read(path: &Path) -> Result<Adapter> {
    from_safetensors(path, load_safetensors(path)?)
}

/// The adapter in `file`, a safetensors file read from `path` (what errors name), checked
/// as [`read`] checks it.
pub fn from_safetensors(path: &Path, file: Safetensors) -> Result<Adapter> {
    let (default_alpha, rslora) = metadata_alpha(path, &file.metadata)?;
    let mut modules: BTreeMap<String, Pieces> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, array) in &file.tensors {
        let Some((base, part)) = split_key(key) else {
            unknown.push(key.clone());
            continue;
        };
        let pieces = modules.entry(module_path(base)).or_default();
        pieces.key = base.to_string();
        match part {
            Part::Down => pieces.down = Some(array.clone()),
            Part::Up => pieces.up = Some(array.clone()),
            Part::Alpha => {
                if array.size() != 1 {
                    return Err(error(
                        path,
                        format!(
                            "`{key}` must be one number, found shape {:?}",
                            array.shape()
                        ),
                    ));
                }
                pieces.alpha = Some(array.astype(Dtype::F32).item::<f32>()?);
            }
        }
    }
    if !unknown.is_empty() {
        return Err(error(
            path,
            format!(
                "{} tensors are not LoRA matrices (lora_A/lora_B, lora_down/lora_up, alpha): {}",
                unknown.len(),
                listing(&unknown)
            ),
        ));
    }
    let mut layers = Vec::new();
    for (module, pieces) in modules {
        let (Some(down), Some(up)) = (pieces.down, pieces.up) else {
            return Err(error(
                path,
                format!(
                    "`{}` needs both a down (A) and an up (B) matrix",
                    pieces.key
                ),
            ));
        };
        let (down_shape, up_shape) = (down.shape().to_vec(), up.shape().to_vec());
        let fused = module.ends_with(".attention.qkv");
        if down_shape.first() == Some(&0) {
            // alpha / 0 would merge infinities (NaN) into the weights.
            return Err(error(
                path,
                format!(
                    "`{}` has rank 0 (down {down_shape:?}): nothing to apply",
                    pieces.key
                ),
            ));
        }
        let fits = down_shape.len() == 2
            && up_shape.len() == 2
            && up_shape[1] == down_shape[0]
            && (!fused || up_shape[0] % 3 == 0);
        if !fits || !down.dtype().is_float() || !up.dtype().is_float() {
            return Err(error(
                path,
                format!(
                    "`{}`: down {down_shape:?} ({}) and up {up_shape:?} ({}) are not a low-rank \
                     pair [r, in], [out, r] of floats",
                    pieces.key,
                    down.dtype(),
                    up.dtype()
                ),
            ));
        }
        let layer = |module: String, up: Array| LayerAdapter {
            module,
            key: pieces.key.clone(),
            down: down.clone(),
            up,
            alpha: pieces.alpha.or(default_alpha),
            rslora,
        };
        match module.strip_suffix(".qkv") {
            Some(attention) if fused => {
                let third = up_shape[0] / 3;
                for (i, projection) in ["to_q", "to_k", "to_v"].iter().enumerate() {
                    let chunk = up.slice_axis(0, i as i32 * third, (i as i32 + 1) * third);
                    layers.push(layer(format!("{attention}.{projection}"), chunk));
                }
            }
            _ => layers.push(layer(module, up)),
        }
    }
    if layers.is_empty() {
        return Err(error(path, "holds no LoRA matrices"));
    }
    layers.sort_by(|a, b| a.module.cmp(&b.module));
    Ok(Adapter {
        path: path.to_path_buf(),
        layers,
    })
}

/// Applies `adapter` at `scale` to `model`'s linear layers. Every layer of the adapter
/// that matches none of the model's is an error, all of them named in one (with `lenient`:
/// skipped, and listed in the result); so is every shape that does not fit its layer.
/// Nothing is changed unless all of it applies.
pub fn apply(model: &mut ZImage, adapter: &Adapter, scale: f32, lenient: bool) -> Result<Applied> {
    let path = &adapter.path;
    if !scale.is_finite() {
        return Err(error(
            path,
            format!("the scale must be a number, found {scale}"),
        ));
    }
    let mut linears: BTreeMap<String, &mut mlx::nn::Linear> =
        model.linears_mut().into_iter().collect();
    // A set: the three layers of a fused qkv share their file's key.
    let mut unmatched = BTreeSet::new();
    let mut misfits = Vec::new();
    let mut seen = BTreeSet::new();
    // The layers to merge, with their scales.
    let mut planned = Vec::with_capacity(adapter.layers.len());
    for layer in &adapter.layers {
        let (down, up) = (layer.down.shape(), layer.up.shape());
        // `read` makes well-formed layers; a caller building its own may not.
        let (Some(dims), Some(layer_scale)) = (layer.dims(), layer.scale()) else {
            misfits.push(format!(
                "`{}` (down {down:?}, up {up:?}) is not a low-rank pair [r, in], [out, r]",
                layer.key
            ));
            continue;
        };
        let Some(linear) = linears.get(&layer.module) else {
            unmatched.insert(layer.key.clone());
            continue;
        };
        seen.insert(layer.module.as_str());
        let (out, inp) = linear.features();
        if (dims.inp, dims.out) != (inp, out) {
            misfits.push(format!(
                "`{}` (down {down:?}, up {up:?}) does not fit {} [{out}, {inp}]",
                layer.key, layer.module
            ));
        }
        planned.push((layer, layer_scale));
    }
    if !misfits.is_empty() {
        return Err(error(
            path,
            format!(
                "{} adapted layers do not fit: {}",
                misfits.len(),
                listing(&misfits)
            ),
        ));
    }
    let unmatched: Vec<String> = unmatched.into_iter().collect();
    if !unmatched.is_empty() && !lenient {
        return Err(error(
            path,
            format!(
                "{} adapted layers match no linear layer of the transformer: {}",
                unmatched.len(),
                listing(&unmatched)
            ),
        ));
    }
    for (layer, layer_scale) in planned {
        if let Some(linear) = linears.get_mut(&layer.module) {
            linear.add_low_rank(&layer.down, &layer.up, scale * layer_scale);
        }
    }
    // Evaluated now: the merged weights replace the loaded ones instead of holding them.
    let changed = linears
        .iter()
        .filter(|(module, _)| seen.contains(module.as_str()))
        .flat_map(|(_, linear)| mlx::Module::parameters(&**linear))
        .map(|(_, array)| array);
    mlx::eval(changed.collect::<Vec<_>>())?;
    Ok(Applied {
        layers: seen.len(),
        skipped: unmatched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_names_split_back_into_diffusers_modules() {
        for (kohya, module) in [
            ("layers_0_attention_to_q", "layers.0.attention.to_q"),
            (
                "layers_12_attention_to_out_0",
                "layers.12.attention.to_out.0",
            ),
            ("layers_3_feed_forward_w2", "layers.3.feed_forward.w2"),
            ("layers_3_adaLN_modulation_0", "layers.3.adaLN_modulation.0"),
            (
                "noise_refiner_1_attention_to_k",
                "noise_refiner.1.attention.to_k",
            ),
            (
                "context_refiner_0_feed_forward_w1",
                "context_refiner.0.feed_forward.w1",
            ),
            ("all_final_layer_2-1_linear", "all_final_layer.2-1.linear"),
            (
                "all_final_layer_2-1_adaLN_modulation_1",
                "all_final_layer.2-1.adaLN_modulation.1",
            ),
            ("all_x_embedder_2-1", "all_x_embedder.2-1"),
            ("cap_embedder_1", "cap_embedder.1"),
            ("t_embedder_mlp_0", "t_embedder.mlp.0"),
        ] {
            assert_eq!(kohya_module(kohya), module);
        }
    }

    #[test]
    fn prefixes_adapter_names_and_original_names_are_dropped() {
        for (base, module) in [
            (
                "transformer.layers.0.attention.to_q",
                "layers.0.attention.to_q",
            ),
            (
                "diffusion_model.layers.0.attention.to_q",
                "layers.0.attention.to_q",
            ),
            ("layers.0.attention.to_q", "layers.0.attention.to_q"),
            (
                "lora_unet_layers_1_attention_out",
                "layers.1.attention.to_out.0",
            ),
            (
                "diffusion_model.layers.1.attention.out",
                "layers.1.attention.to_out.0",
            ),
        ] {
            assert_eq!(module_path(base), module);
        }
        assert!(split_key("layers.0.attention.to_q.weight").is_none());
    }

    #[test]
    fn only_pefts_adapter_name_segment_is_dropped() {
        let split = |key| split_key(key).map(|(base, part)| (base, part == Part::Down));
        assert_eq!(
            split("transformer.layers.0.attention.to_q.lora_A.default.weight"),
            Some(("transformer.layers.0.attention.to_q", true))
        );
        assert_eq!(
            split("transformer.layers.0.attention.to_q.lora_B.default.weight"),
            Some(("transformer.layers.0.attention.to_q", false))
        );
        // "default." elsewhere is part of the module's name.
        assert_eq!(
            split("default.layers.0.attention.to_q.lora_A.weight"),
            Some(("default.layers.0.attention.to_q", true))
        );
    }

    #[test]
    fn rank_0_adapters_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank0.safetensors");
        let down = Array::zeros(&[0, 8], Dtype::F32);
        let up = Array::zeros(&[8, 0], Dtype::F32);
        let key = "transformer.layers.0.attention.to_q";
        mlx::io::save_safetensors(
            &path,
            [
                (format!("{key}.lora_A.weight"), &down),
                (format!("{key}.lora_B.weight"), &up),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        let Err(e) = read(&path) else {
            panic!("a rank-0 adapter was read")
        };
        let message = e.to_string();
        assert!(
            message.contains("rank0.safetensors")
                && message.contains(key)
                && message.contains("rank 0"),
            "{message}"
        );
    }
}
