//! The transformer's `config.json`, with diffusers' keys and defaults
//! (`ZImageTransformer2DModel.__init__`), and the built-in model sizes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DitError, Result};
use mlx::nn::QuantConfig;

/// Width of the timestep embedding that modulates every block: `min(dim, 256)`.
pub const ADALN_EMBED_DIM: i32 = 256;
/// Image and caption token counts are padded to multiples of this with the pad tokens.
pub const SEQ_MULTI_OF: i32 = 32;
/// Hidden width of the timestep embedder's MLP (fixed in diffusers).
pub const T_EMBED_MID: i32 = 1024;
/// Width of the sinusoidal timestep features.
pub const T_FREQ_DIM: i32 = 256;

/// The architecture, as diffusers writes it to `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DitConfig {
    pub all_patch_size: Vec<i32>,
    pub all_f_patch_size: Vec<i32>,
    pub in_channels: i32,
    pub dim: i32,
    pub n_layers: i32,
    pub n_refiner_layers: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub norm_eps: f32,
    pub qk_norm: bool,
    pub cap_feat_dim: i32,
    /// Set only by the omni variant (SigLIP image conditioning), which is not supported.
    pub siglip_feat_dim: Option<i32>,
    pub rope_theta: f32,
    pub t_scale: f32,
    pub axes_dims: Vec<i32>,
    pub axes_lens: Vec<i32>,
    /// Set by `dit quantize` (and by in-memory quantization): how the quantized linear
    /// layers are stored. Not a diffusers key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantConfig>,
}

impl Default for DitConfig {
    /// diffusers' defaults: the released Z-Image transformer.
    fn default() -> DitConfig {
        DitConfig {
            all_patch_size: vec![2],
            all_f_patch_size: vec![1],
            in_channels: 16,
            dim: 3840,
            n_layers: 30,
            n_refiner_layers: 2,
            n_heads: 30,
            n_kv_heads: 30,
            norm_eps: 1e-5,
            qk_norm: true,
            cap_feat_dim: 2560,
            siglip_feat_dim: None,
            rope_theta: 256.0,
            t_scale: 1000.0,
            axes_dims: vec![32, 48, 48],
            axes_lens: vec![1024, 512, 512],
            quantization: None,
        }
    }
}

impl DitConfig {
    /// The built-in model for tests and the quick start: seconds per image here.
    pub fn tiny() -> DitConfig {
        DitConfig {
            dim: 64,
            n_layers: 2,
            n_refiner_layers: 1,
            n_heads: 2,
            n_kv_heads: 2,
            cap_feat_dim: 64,
            axes_dims: vec![8, 12, 12],
            ..DitConfig::default()
        }
    }

    /// The built-in model for benchmarks.
    pub fn small() -> DitConfig {
        DitConfig {
            dim: 768,
            n_layers: 8,
            n_refiner_layers: 2,
            n_heads: 12,
            n_kv_heads: 12,
            cap_feat_dim: 512,
            axes_dims: vec![16, 24, 24],
            ..DitConfig::default()
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<DitConfig> {
        let text = crate::read_text(path)?;
        DitConfig::parse(&text).map_err(|message| DitError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks the text of a `config.json`.
    pub fn parse(text: &str) -> std::result::Result<DitConfig, String> {
        let config: DitConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The checks diffusers makes with asserts, plus what this implementation supports.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // Bounds far beyond any real model, so that shapes derived from them (4·dim,
        // patch² · channels, 8/3 · dim) cannot overflow.
        let bounded = [
            ("in_channels", self.in_channels, 1, 1 << 12),
            ("dim", self.dim, 1, 1 << 16),
            ("n_heads", self.n_heads, 1, 1 << 10),
            ("cap_feat_dim", self.cap_feat_dim, 1, 1 << 16),
            ("n_layers", self.n_layers, 0, 1 << 10),
            ("n_refiner_layers", self.n_refiner_layers, 0, 1 << 10),
        ];
        if let Some((key, value, lo, hi)) = bounded.iter().find(|(_, v, lo, hi)| v < lo || v > hi) {
            return Err(format!(
                "{key} must be between {lo} and {hi}, found {value}"
            ));
        }
        if self.all_patch_size.len() != self.all_f_patch_size.len()
            || self.all_patch_size.is_empty()
        {
            return Err(
                "all_patch_size and all_f_patch_size must be non-empty and equally long".into(),
            );
        }
        if self.all_patch_size[0] != 2 || self.all_f_patch_size[0] != 1 {
            return Err(format!(
                "only patch size 2 with frame patch size 1 is supported, found {} and {}",
                self.all_patch_size[0], self.all_f_patch_size[0]
            ));
        }
        if self.dim % self.n_heads != 0 {
            return Err(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if self.axes_dims.len() != 3 || self.axes_lens.len() != 3 {
            return Err(
                "axes_dims and axes_lens must have three entries (frame, height, width)".into(),
            );
        }
        if self
            .axes_dims
            .iter()
            .any(|d| !(1..=1 << 16).contains(d) || d % 2 != 0)
            || self.axes_lens.iter().any(|l| !(1..=1 << 20).contains(l))
        {
            return Err("axes_dims must be positive and even, axes_lens positive".into());
        }
        if self.axes_dims.iter().sum::<i32>() != self.head_dim() {
            return Err(format!(
                "the RoPE axes dims {:?} must add up to the head dim {} (dim / n_heads)",
                self.axes_dims,
                self.head_dim()
            ));
        }
        if self.siglip_feat_dim.is_some() {
            return Err("the omni variant (siglip_feat_dim) is not supported".into());
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err("norm_eps must be positive".into());
        }
        if let Some(quantization) = &self.quantization {
            quantization.validate()?;
        }
        Ok(())
    }

    pub fn head_dim(&self) -> i32 {
        self.dim / self.n_heads
    }

    /// Width of the timestep embedding: `min(dim, 256)`.
    pub fn adaln_dim(&self) -> i32 {
        self.dim.min(ADALN_EMBED_DIM)
    }

    /// The feed-forward's hidden width, `int(dim / 3 * 8)` as diffusers computes it.
    pub fn ffn_hidden(&self) -> i32 {
        (f64::from(self.dim) / 3.0 * 8.0) as i32
    }

    pub fn patch_size(&self) -> i32 {
        self.all_patch_size[0]
    }

    /// Elements of one patch token: `patch² × in_channels`.
    pub fn patch_dim(&self) -> i32 {
        self.patch_size() * self.patch_size() * self.in_channels
    }

    /// The `ModuleDict` key of the patch embedder and final layer: `"2-1"`.
    pub fn patch_key(&self) -> String {
        format!("{}-{}", self.all_patch_size[0], self.all_f_patch_size[0])
    }

    /// The config as diffusers writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), "ZImageTransformer2DModel".into());
            map.insert("_diffusers_version".into(), "0.36.0".into());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_match_the_issue() {
        DitConfig::tiny().validate().unwrap();
        let small = DitConfig::small();
        small.validate().unwrap();
        assert_eq!((small.dim, small.n_heads, small.n_layers), (768, 12, 8));
        assert_eq!(small.ffn_hidden(), 2048);
        assert_eq!(DitConfig::default().ffn_hidden(), 10240);
    }

    #[test]
    fn diffusers_keys_round_trip_and_unknown_keys_are_ignored() {
        let json = r#"{"_class_name":"ZImageTransformer2DModel","dim":48,"n_heads":3,
            "axes_dims":[4,6,6],"cap_feat_dim":40,"in_channels":8}"#;
        let config: DitConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.dim, 48);
        assert_eq!(config.n_layers, 30);
        config.validate().unwrap();
        let back: DitConfig = serde_json::from_value(config.to_json()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn sizes_that_would_overflow_are_rejected() {
        for bad in [
            r#"{"dim": 1073741824, "n_heads": 1}"#,
            r#"{"in_channels": 1073741824}"#,
            r#"{"axes_dims": [2147483646, 2, 2]}"#,
        ] {
            let config: DitConfig = serde_json::from_str(bad).unwrap();
            assert!(config.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let bad = DitConfig {
            axes_dims: vec![8, 8, 8],
            ..DitConfig::tiny()
        };
        assert!(bad.validate().unwrap_err().contains("head dim"));
        let bad = DitConfig {
            n_heads: 3,
            ..DitConfig::tiny()
        };
        assert!(bad.validate().unwrap_err().contains("divisible"));
    }

    #[test]
    fn quantization_round_trips_and_unknown_modes_are_named() {
        use mlx::nn::QuantFormat;
        let config = DitConfig {
            quantization: Some(QuantConfig::new(QuantFormat::Affine8)),
            ..DitConfig::tiny()
        };
        let json = config.to_json();
        assert_eq!(
            json["quantization"],
            serde_json::json!({"mode": "affine8", "group_size": 32, "bits": 8})
        );
        assert_eq!(serde_json::from_value::<DitConfig>(json).unwrap(), config);
        assert!(DitConfig::tiny().to_json().get("quantization").is_none());

        let json = r#"{"quantization": {"mode": "int3", "group_size": 32, "bits": 8}}"#;
        let err = serde_json::from_str::<DitConfig>(json).unwrap_err();
        assert!(
            err.to_string().contains("unknown quantization mode `int3`"),
            "{err}"
        );
    }
}
