//! The transformer against diffusers' `ZImageTransformer2DModel` on fixtures written by `tests/fixtures/gen_fixtures.py`
//! (random models in diffusers layout; see that script to regenerate them).

use dit::weights::{self, ModelSource};
use mlx::io::load_safetensors;
use mlx::Dtype;

mod common;
use common::{fixtures, relative_error};

/// Compiled or eager is a process-wide switch: one forward check at a time.
static MODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_forward(model: &str, case: &str, compiled: bool) -> f32 {
    let _mode = MODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = fixtures();
    let loaded = weights::load(&ModelSource::Dir(dir.join(model)), Dtype::F32).unwrap();
    let inputs = load_safetensors(dir.join(format!("{model}_{case}.inputs.safetensors"))).unwrap();
    let expected =
        load_safetensors(dir.join(format!("{model}_{case}.expected.safetensors"))).unwrap();
    let get = |name: &str| inputs.tensors.get(name).unwrap().clone();
    let cap_lens = get("cap_lens").to_vec::<i32>().unwrap();
    mlx::compile::set_eager(!compiled);
    let out = loaded
        .model
        .forward(
            &get("latents"),
            &get("timestep"),
            &get("cap_feats"),
            &cap_lens,
        )
        .unwrap();
    mlx::compile::set_eager(false);
    let expected = expected.tensors.get("out").unwrap();
    assert_eq!(out.shape(), expected.shape());
    let err = relative_error(
        &out.to_vec::<f32>().unwrap(),
        &expected.to_vec::<f32>().unwrap(),
    );
    eprintln!("{model} {case} compiled={compiled}: max|ours - ref| / max|ref| = {err:.2e}");
    err
}

const TOLERANCE: f32 = 1e-4;

#[test]
fn token_counts_that_are_multiples_of_32() {
    let err = check_forward("model_a", "aligned", true);
    assert!(err <= TOLERANCE, "relative error {err}");
}

#[test]
fn pad_tokens_for_image_and_caption() {
    let err = check_forward("model_a", "padded", true);
    assert!(err <= TOLERANCE, "relative error {err}");
}

#[test]
fn batch_with_different_caption_lengths() {
    for (model, compiled) in [("model_a", true), ("model_a", false), ("model_b", true)] {
        let err = check_forward(model, "batch_mask", compiled);
        assert!(
            err <= TOLERANCE,
            "{model} (compiled {compiled}): relative error {err}"
        );
    }
}
