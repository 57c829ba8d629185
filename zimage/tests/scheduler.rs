//! The scheduler against diffusers' `FlowMatchEulerDiscreteScheduler`, on the fixture that
//! models/dit/tests/fixtures/gen_fixtures.py writes.

use zimage::scheduler::SchedulerConfig;

mod common;
use common::dit_fixtures;

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
    let text = std::fs::read_to_string(dit_fixtures().join("scheduler.json")).unwrap();
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
