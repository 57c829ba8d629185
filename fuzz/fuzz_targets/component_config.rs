//! Each component's `config.json`: the first byte picks the transformer's, the text
//! encoder's, the VAE's or the quantization record (`"quantization"` in a transformer's
//! config); the rest is the file. A config that parses must give usable sizes and write
//! back as a config that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(config) = dit::DitConfig::parse(text) {
                let _ = (config.head_dim(), config.adaln_dim(), config.ffn_hidden());
                let _ = (config.patch_size(), config.patch_dim(), config.patch_key());
                let json = config.to_json();
                let back = dit::DitConfig::parse(&json.to_string()).map(|c| c.to_json());
                assert_eq!(back, Ok(json), "{text}");
            }
        }
        1 => {
            if let Ok(config) = qwen3::Qwen3Config::parse(text) {
                let _ = config.encoder_depth();
                let json = config.to_json();
                let back = qwen3::Qwen3Config::parse(&json.to_string()).map(|c| c.to_json());
                assert_eq!(back, Ok(json), "{text}");
            }
        }
        2 => {
            if let Ok(config) = vae::VaeConfig::parse(text) {
                let _ = (config.downsamplings(), config.pixels_per_latent());
                let _ = config.tile_latent_size();
                let json = config.to_json();
                let back = vae::VaeConfig::parse(&json.to_string()).map(|c| c.to_json());
                assert_eq!(back, Ok(json), "{text}");
            }
        }
        _ => {
            if let Ok(config) = serde_json::from_str::<mlx::nn::QuantConfig>(text) {
                let _ = (config.bits(), config.format.mlx_mode());
                let json = serde_json::to_string(&config).expect("a config serializes");
                let back = serde_json::from_str::<mlx::nn::QuantConfig>(&json).ok();
                assert_eq!(back, Some(config), "{text}");
            }
        }
    }
});
