//! The transformer against diffusers' `ZImageTransformer2DModel`, and the scheduler against
//! its `FlowMatchEulerDiscreteScheduler`, on fixtures written by `tests/fixtures/gen_fixtures.py`
//! (random models in diffusers layout; see that script to regenerate them).

use dit::scheduler::SchedulerConfig;
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

#[derive(serde::Deserialize)]
struct SchedulerCase {
    config: SchedulerConfig,
    steps: usize,
    image_seq_len: u32,
    mu: f64,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    #[serde(default)]
    euler_step: Option<EulerStep>,
}

#[derive(serde::Deserialize)]
struct EulerStep {
    sample: Vec<f32>,
    model_output: Vec<f32>,
    prev_sample: Vec<f32>,
}

/// Largest difference in units of the reference's float32 spacing.
fn ulps(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs() / (b.abs().max(f32::MIN_POSITIVE) * f32::EPSILON))
        .fold(0.0, f32::max)
}

#[test]
fn scheduler_matches_diffusers_for_8_and_30_steps() {
    let text = std::fs::read_to_string(fixtures().join("scheduler.json")).unwrap();
    let cases: Vec<SchedulerCase> = serde_json::from_str(&text).unwrap();
    assert!(cases.iter().any(|c| c.steps == 8) && cases.iter().any(|c| c.steps == 30));
    assert!(cases.iter().any(|c| !c.config.use_dynamic_shifting));
    for case in &cases {
        let what = format!(
            "{} steps, {} tokens, dynamic {}",
            case.steps, case.image_seq_len, case.config.use_dynamic_shifting
        );
        assert!(
            (case.config.mu(case.image_seq_len) - case.mu).abs() < 1e-12,
            "{what}: mu"
        );
        let schedule = case.config.schedule(case.steps, case.image_seq_len);
        let (t, s) = (
            ulps(&schedule.timesteps, &case.timesteps),
            ulps(&schedule.sigmas, &case.sigmas),
        );
        eprintln!("{what}: timesteps within {t} ulp, sigmas within {s} ulp");
        assert!(
            t <= 1.0 && s <= 1.0,
            "{what}: timesteps {t} ulp, sigmas {s} ulp off"
        );
        if let Some(step) = &case.euler_step {
            let dt = schedule.dt(0);
            let ours: Vec<f32> = step
                .sample
                .iter()
                .zip(&step.model_output)
                .map(|(x, v)| x + dt * v)
                .collect();
            assert!(ulps(&ours, &step.prev_sample) <= 1.0, "{what}: Euler step");
        }
    }
}
