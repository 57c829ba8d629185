//! The model's `config.json`, with transformers' keys and defaults (`Qwen3Config` of
//! transformers 5, which also reads the older layouts), and the built-in model sizes.

use std::path::Path;

use mlx::nn::QuantConfig;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{Qwen3Error, Result};

/// The vocabulary of the tokenizer shipped with this crate (`tokenizer/`, 600 BPE tokens
/// and 5 added ones): the built-in models' `vocab_size`.
pub const BUILTIN_VOCAB: i32 = 605;

/// The architecture. Sizes are `i32`, as MLX's shapes are.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: i32,
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_hidden_layers: i32,
    pub num_attention_heads: i32,
    pub num_key_value_heads: i32,
    pub head_dim: i32,
    pub rms_norm_eps: f64,
    /// The RoPE base (`rope_parameters.rope_theta`, or the older top-level `rope_theta`).
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: i32,
    /// The dtype the checkpoint says it is stored in (`dtype`, or the older
    /// `torch_dtype`), as written: `"bfloat16"`.
    pub dtype: Option<String>,
    pub architectures: Vec<String>,
    /// How the quantized linear layers are stored (this project's record or mlx-lm's; see
    /// [`QuantConfig`]). Not a transformers key.
    pub quantization: Option<QuantConfig>,
}

/// `config.json` as written, before the checks: what transformers 4 and 5 write, with
/// `Qwen3Config`'s defaults where a key is absent.
#[derive(Deserialize)]
#[serde(default)]
struct RawConfig {
    vocab_size: i32,
    hidden_size: i32,
    intermediate_size: i32,
    num_hidden_layers: i32,
    num_attention_heads: i32,
    num_key_value_heads: Option<i32>,
    /// 128 when absent: transformers' class default, not `hidden_size / heads`.
    head_dim: i32,
    hidden_act: String,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    /// transformers 4's name for `rope_parameters`; it wins when both are present, as in
    /// transformers 5.
    rope_scaling: Option<Value>,
    partial_rotary_factor: Option<f64>,
    tie_word_embeddings: bool,
    max_position_embeddings: i32,
    dtype: Option<String>,
    torch_dtype: Option<String>,
    attention_bias: bool,
    use_sliding_window: bool,
    layer_types: Option<Vec<String>>,
    architectures: Option<Vec<String>>,
    quantization: Option<QuantConfig>,
}

impl Default for RawConfig {
    /// transformers 5's `Qwen3Config` defaults.
    fn default() -> RawConfig {
        RawConfig {
            vocab_size: 151936,
            hidden_size: 4096,
            intermediate_size: 22016,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: 128,
            hidden_act: "silu".into(),
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            partial_rotary_factor: None,
            tie_word_embeddings: false,
            max_position_embeddings: 32768,
            dtype: None,
            torch_dtype: None,
            attention_bias: false,
            use_sliding_window: false,
            layer_types: None,
            architectures: None,
            quantization: None,
        }
    }
}

/// transformers' `RotaryEmbeddingConfigMixin.default_theta`.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl RawConfig {
    fn into_config(self) -> std::result::Result<Qwen3Config, String> {
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act `{}` is not supported (Qwen3 uses silu)",
                self.hidden_act
            ));
        }
        if self.attention_bias {
            return Err(
                "attention_bias true is not supported (Qwen3 has no attention biases)".into(),
            );
        }
        if self.use_sliding_window {
            return Err("use_sliding_window true is not supported (full attention only)".into());
        }
        if let Some(other) = self
            .layer_types
            .iter()
            .flatten()
            .find(|t| *t != "full_attention")
        {
            return Err(format!(
                "layer type `{other}` is not supported (full_attention only)"
            ));
        }
        let rope_theta = self.rope_theta()?;
        Ok(Qwen3Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            max_position_embeddings: self.max_position_embeddings,
            dtype: self.dtype.or(self.torch_dtype),
            architectures: self.architectures.unwrap_or_default(),
            quantization: self.quantization,
        })
    }

    /// The RoPE base, read as transformers 5 reads it: `rope_parameters` (or
    /// `rope_scaling`), possibly nested under the layer type, then the top-level
    /// `rope_theta`, then 10 000. Only the plain (`"default"`) RoPE over the whole head is
    /// supported.
    fn rope_theta(&self) -> std::result::Result<f64, String> {
        let params = match self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => match map.get("full_attention") {
                Some(Value::Object(nested)) => nested.clone(),
                _ => map.clone(),
            },
            Some(other) => return Err(format!("rope_parameters must be an object, found {other}")),
        };
        let rope_type = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .map_or(Some("default"), Value::as_str);
        match rope_type {
            Some("default") => {}
            Some(other) => {
                return Err(format!(
                    "rope_type `{other}` is not supported (only the default RoPE)"
                ))
            }
            None => return Err("rope_type must be a string".into()),
        }
        let partial = match params.get("partial_rotary_factor") {
            Some(v) => Some(v.as_f64().ok_or("partial_rotary_factor must be a number")?),
            None => self.partial_rotary_factor,
        };
        if partial.is_some_and(|p| p != 1.0) {
            return Err("partial_rotary_factor other than 1 is not supported".into());
        }
        let theta = match params.get("rope_theta") {
            Some(v) => v.as_f64().ok_or("rope_theta must be a number")?,
            None => self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(format!("rope_theta must be positive, found {theta}"));
        }
        Ok(theta)
    }
}

impl Qwen3Config {
    /// The built-in model for tests and the quick start: its hidden size is the built-in
    /// tiny DiT's `cap_feat_dim`.
    pub fn tiny() -> Qwen3Config {
        Qwen3Config {
            vocab_size: BUILTIN_VOCAB,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            tie_word_embeddings: true,
            max_position_embeddings: 40960,
            dtype: None,
            architectures: vec!["Qwen3Model".into()],
            quantization: None,
        }
    }

    /// The built-in model for benchmarks: its hidden size is the built-in small DiT's
    /// `cap_feat_dim`.
    pub fn small() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 512,
            intermediate_size: 1024,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 64,
            ..Qwen3Config::tiny()
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Qwen3Config> {
        let text = crate::read_text(path)?;
        Qwen3Config::parse(&text).map_err(|message| Qwen3Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks the text of a `config.json`; the error is a one-line message.
    pub fn parse(text: &str) -> std::result::Result<Qwen3Config, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(crate::one_line)?;
        let config = raw.into_config()?;
        config.validate()?;
        Ok(config)
    }

    /// What transformers would refuse or this implementation cannot run, and sizes whose
    /// products (the shapes the model builds) would overflow `i32`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let bounded = [
            ("vocab_size", self.vocab_size, 1, 1 << 24),
            ("hidden_size", self.hidden_size, 1, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 1, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1, 1 << 12),
            ("num_key_value_heads", self.num_key_value_heads, 1, 1 << 12),
            ("head_dim", self.head_dim, 2, 1 << 14),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1,
                i32::MAX,
            ),
        ];
        if let Some((key, value, lo, hi)) = bounded.iter().find(|(_, v, lo, hi)| v < lo || v > hi) {
            return Err(format!(
                "{key} must be between {lo} and {hi}, found {value}"
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(format!(
                "head_dim must be even (RoPE turns feature pairs), found {}",
                self.head_dim
            ));
        }
        // The largest tensors, in elements (some of MLX's kernels index with 32-bit
        // offsets); the query width is also a shape dimension. Real models are far below:
        // Qwen3-4B's embedding table has 389M elements.
        let q_dim = i64::from(self.num_attention_heads) * i64::from(self.head_dim);
        let hidden = i64::from(self.hidden_size);
        let products = [
            ("num_attention_heads * head_dim", q_dim),
            (
                "num_attention_heads * head_dim * hidden_size",
                q_dim * hidden,
            ),
            (
                "vocab_size * hidden_size",
                i64::from(self.vocab_size) * hidden,
            ),
            (
                "intermediate_size * hidden_size",
                i64::from(self.intermediate_size) * hidden,
            ),
        ];
        if let Some((what, n)) = products.iter().find(|(_, n)| *n > i64::from(i32::MAX)) {
            return Err(format!("{what} = {n} overflows 32-bit sizes"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps must be positive, found {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(format!(
                "rope_theta must be positive, found {}",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// How many decoder layers Z-Image's text encoder runs: it reads transformers'
    /// `hidden_states[-2]`, the output of all layers but the last.
    pub fn encoder_depth(&self) -> usize {
        self.num_hidden_layers.max(1) as usize - 1
    }

    /// The config as transformers 5 writes it, with the top-level `rope_theta` of
    /// transformers 4 as well so that either reads the same base.
    pub fn to_json(&self) -> Value {
        let architectures = if self.architectures.is_empty() {
            vec!["Qwen3Model".to_string()]
        } else {
            self.architectures.clone()
        };
        let mut value = json!({
            "architectures": architectures,
            "model_type": "qwen3",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": false,
        });
        if let (Some(dtype), Some(map)) = (&self.dtype, value.as_object_mut()) {
            map.insert("dtype".into(), dtype.clone().into());
        }
        if let (Some(quantization), Some(map)) = (&self.quantization, value.as_object_mut()) {
            // A struct of plain fields always serializes.
            let record = serde_json::to_value(quantization).unwrap_or_default();
            map.insert("quantization".into(), record);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_fit_the_builtin_dits() {
        let tiny = Qwen3Config::tiny();
        tiny.validate().unwrap();
        let small = Qwen3Config::small();
        small.validate().unwrap();
        assert_eq!((tiny.hidden_size, small.hidden_size), (64, 512));
        assert_eq!(
            (
                small.num_attention_heads,
                small.num_key_value_heads,
                small.head_dim
            ),
            (8, 4, 64)
        );
        assert_eq!(tiny.encoder_depth(), 1);
        assert_eq!(small.encoder_depth(), 3);
    }

    #[test]
    fn transformers_defaults_fill_absent_keys() {
        let config =
            Qwen3Config::parse(r#"{"hidden_size": 64, "num_attention_heads": 4}"#).unwrap();
        // transformers' class default, not hidden_size / heads = 16.
        assert_eq!(config.head_dim, 128);
        assert_eq!(config.num_key_value_heads, 4);
        assert_eq!(config.rope_theta, 10_000.0);
        assert_eq!(config.vocab_size, 151936);
        assert!(!config.tie_word_embeddings);
    }

    #[test]
    fn both_rope_layouts_are_read() {
        let v5 = r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}"#;
        assert_eq!(Qwen3Config::parse(v5).unwrap().rope_theta, 1e6);
        let v4 = r#"{"rope_theta": 500000.0, "rope_scaling": null}"#;
        assert_eq!(Qwen3Config::parse(v4).unwrap().rope_theta, 5e5);
        // Inside rope_parameters wins over the top level, as in transformers 5.
        let both = r#"{"rope_theta": 5.0, "rope_parameters": {"rope_theta": 7.0}}"#;
        assert_eq!(Qwen3Config::parse(both).unwrap().rope_theta, 7.0);
        let nested = r#"{"layer_types": ["full_attention"], "num_hidden_layers": 1,
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 3.0}}}"#;
        assert_eq!(Qwen3Config::parse(nested).unwrap().rope_theta, 3.0);
    }

    #[test]
    fn unsupported_rope_and_attention_variants_are_named() {
        for (json, needle) in [
            (
                r#"{"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}"#,
                "rope_type `yarn`",
            ),
            (
                r#"{"rope_scaling": {"type": "dynamic", "factor": 2.0}}"#,
                "rope_type `dynamic`",
            ),
            (r#"{"partial_rotary_factor": 0.5}"#, "partial_rotary_factor"),
            (r#"{"attention_bias": true}"#, "attention_bias"),
            (r#"{"use_sliding_window": true}"#, "use_sliding_window"),
            (r#"{"hidden_act": "gelu"}"#, "hidden_act `gelu`"),
            (
                r#"{"num_hidden_layers": 1, "layer_types": ["sliding_attention"]}"#,
                "sliding_attention",
            ),
        ] {
            let err = Qwen3Config::parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn inconsistent_and_overflowing_sizes_are_rejected() {
        for (json, needle) in [
            (
                r#"{"num_attention_heads": 0}"#,
                "num_attention_heads must be between",
            ),
            (
                r#"{"num_attention_heads": 6, "num_key_value_heads": 4}"#,
                "not divisible",
            ),
            (r#"{"head_dim": 15}"#, "even"),
            (r#"{"num_hidden_layers": 0}"#, "num_hidden_layers"),
            (r#"{"rms_norm_eps": 0.0}"#, "rms_norm_eps"),
            (r#"{"rope_theta": -1.0}"#, "rope_theta"),
            (
                r#"{"num_attention_heads": 4096, "num_key_value_heads": 1, "head_dim": 16384}"#,
                "overflows",
            ),
            (
                r#"{"vocab_size": 16777216, "hidden_size": 65536}"#,
                "overflows",
            ),
            (r#"{"hidden_size": 4294967296}"#, "invalid value"),
            (r#"{"head_dim": null}"#, "invalid type"),
        ] {
            let err = Qwen3Config::parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn dtype_is_read_under_either_name() {
        let v5 = Qwen3Config::parse(r#"{"dtype": "bfloat16"}"#).unwrap();
        assert_eq!(v5.dtype.as_deref(), Some("bfloat16"));
        let v4 = Qwen3Config::parse(r#"{"torch_dtype": "float16"}"#).unwrap();
        assert_eq!(v4.dtype.as_deref(), Some("float16"));
    }

    #[test]
    fn written_configs_read_back() {
        let config = Qwen3Config {
            dtype: Some("float32".into()),
            ..Qwen3Config::small()
        };
        let back = Qwen3Config::parse(&config.to_json().to_string()).unwrap();
        assert_eq!(back, config);
    }
}
