//! LoRA adapter files (safetensors bytes: diffusers/PEFT and Kohya names, alpha tensors,
//! the PEFT metadata header), read and applied (leniently) to a tiny transformer.
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use dit::{lora, DitConfig, ZImage};
use libfuzzer_sys::fuzz_target;
use mlx::Dtype;

/// The test pipeline's transformer (dim 32), which the seed adapters were made for.
const CONFIG: &str = include_str!("../../zimage/tests/fixtures/pipeline/transformer/config.json");

fn model() -> &'static Mutex<ZImage> {
    static MODEL: OnceLock<Mutex<ZImage>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = DitConfig::parse(CONFIG).expect("the fixture's config parses");
        Mutex::new(ZImage::zeros(&config, Dtype::F32))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/adapter.safetensors");
    let adapter = mlx::io::load_safetensors_from_bytes(path, data.to_vec())
        .map_err(dit::DitError::from)
        .and_then(|file| lora::from_safetensors(path, file));
    let adapter = match adapter {
        Ok(adapter) => adapter,
        Err(e) => {
            assert!(e.to_string().contains("fuzz/adapter.safetensors"), "{e}");
            return;
        }
    };
    for layer in &adapter.layers {
        assert!(
            layer.dims().is_some() && layer.scale().is_some(),
            "{}",
            layer.key
        );
    }
    let mut model = model()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for scale in [1.0, -1.0] {
        if let Err(e) = lora::apply(&mut model, &adapter, scale, true) {
            assert!(e.to_string().contains("fuzz/adapter.safetensors"), "{e}");
        }
    }
});
