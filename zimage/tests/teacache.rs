//! TeaCache in the sampler: decisions as the policies make them, threshold 0 is exactly
//! no caching, and skipping changes the result by a bounded amount.

use dit::teacache::{Coefficients, Mode, Naive, Poly, TeaCacheOptions};
use dit::weights::{self, Builtin, ModelSource};
use dit::ZImage;
use mlx::Dtype;
use zimage::sampler::{self, Caption, Generation, Guidance, Noise, Request};
use zimage::scheduler::SchedulerConfig;

fn tiny() -> ZImage {
    weights::load(&ModelSource::Builtin(Builtin::Tiny), Dtype::F32)
        .unwrap()
        .model
}

fn request(model: &ZImage, cfg: f32, teacache: TeaCacheOptions) -> Request {
    let dim = model.config.cap_feat_dim;
    Request {
        width: 128,
        height: 128,
        steps: 8,
        noise: Noise::Seeded(11),
        guidance: Guidance {
            scale: cfg,
            ..Guidance::off()
        },
        caption: Caption::random(20, dim, 1),
        negative: Caption::random(7, dim, 2),
        scheduler: SchedulerConfig::default(),
        teacache,
        record_changes: true,
    }
}

fn options(mode: Mode, threshold: f64, warmup: usize) -> TeaCacheOptions {
    TeaCacheOptions {
        mode,
        threshold,
        warmup,
        rescale: 1.0,
        coefficients: weights::teacache_coefficients(&ModelSource::Builtin(Builtin::Tiny)).unwrap(),
    }
}

fn run(model: &ZImage, request: &Request) -> Generation {
    sampler::generate(model, request, |_, _| {}).unwrap()
}

fn relative_l1(a: &Generation, b: &Generation) -> f32 {
    let (a, b) = (
        a.latents.to_vec::<f32>().unwrap(),
        b.latents.to_vec::<f32>().unwrap(),
    );
    let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    diff / b.iter().map(|y| y.abs()).sum::<f32>()
}

#[test]
fn threshold_zero_is_bit_identical_to_no_cache() {
    let model = tiny();
    for cfg in [0.0, 4.0] {
        let off = run(&model, &request(&model, cfg, TeaCacheOptions::off()));
        for mode in [Mode::Naive, Mode::Poly] {
            let cached = run(&model, &request(&model, cfg, options(mode, 0.0, 0)));
            assert!(
                cached.computed.iter().all(|&c| c),
                "{mode:?}: {:?}",
                cached.computed
            );
            assert_eq!(
                cached.latents.to_vec::<f32>().unwrap(),
                off.latents.to_vec::<f32>().unwrap(),
                "{mode:?} with cfg {cfg}"
            );
        }
    }
}

#[test]
fn naive_decisions_are_the_seeds_on_the_real_schedule() {
    let model = tiny();
    for (threshold, warmup, cfg) in [(0.1, 1, 0.0), (0.25, 1, 0.0), (0.3, 3, 4.0)] {
        let request = request(&model, cfg, options(Mode::Naive, threshold, warmup));
        let generation = run(&model, &request);
        let mut naive = Naive::new(threshold, 1.0, warmup);
        let expected: Vec<bool> = (0..generation.schedule.len())
            .map(|i| {
                let t = f64::from(generation.schedule.model_t(i));
                let compute = naive.should_compute(i, t);
                if compute {
                    naive.computed(t);
                }
                compute
            })
            .collect();
        assert_eq!(generation.computed, expected, "threshold {threshold}");
        assert!(
            generation.cache_hits() > 0,
            "threshold {threshold} skipped nothing"
        );
    }
}

#[test]
fn poly_decisions_follow_the_polynomial_on_measured_changes() {
    let model = tiny();
    let coefficients = weights::teacache_coefficients(&ModelSource::Builtin(Builtin::Tiny))
        .unwrap()
        .unwrap();
    for (threshold, cfg) in [(0.3, 0.0), (0.6, 0.0), (0.45, 4.0)] {
        let warmup = if cfg != 0.0 { 3 } else { 1 };
        let generation = run(
            &model,
            &request(&model, cfg, options(Mode::Poly, threshold, warmup)),
        );
        let changes = generation.changes.clone().unwrap();
        assert_eq!(changes.len(), 7);
        let mut poly = Poly::new(threshold, &coefficients, warmup, 8);
        let expected: Vec<bool> = (0..8)
            .map(|i| poly.should_compute(i, if i == 0 { 0.0 } else { changes[i - 1].0 }))
            .collect();
        assert_eq!(generation.computed, expected, "threshold {threshold}");
        assert!(
            generation.cache_hits() > 0,
            "threshold {threshold} skipped nothing"
        );
        assert!(generation.computed[..warmup].iter().all(|&c| c));
        assert!(generation.computed[7], "the last step always computes");
    }
}

#[test]
fn skipping_costs_little_and_more_skipping_costs_more() {
    let model = tiny();
    let off = run(&model, &request(&model, 0.0, TeaCacheOptions::off()));
    for mode in [Mode::Naive, Mode::Poly] {
        let low = run(&model, &request(&model, 0.0, options(mode, 0.2, 1)));
        let high = run(&model, &request(&model, 0.0, options(mode, 1.0, 1)));
        assert!(high.cache_hits() > low.cache_hits(), "{mode:?}");
        let (e_low, e_high) = (relative_l1(&low, &off), relative_l1(&high, &off));
        assert!(
            e_low < 0.1 && e_low < e_high,
            "{mode:?}: {e_low} vs {e_high}"
        );
    }
}

#[test]
fn shipped_coefficients_parse_and_describe_their_model() {
    for builtin in [Builtin::Tiny, Builtin::Small] {
        let c: Coefficients = weights::teacache_coefficients(&ModelSource::Builtin(builtin))
            .unwrap()
            .unwrap();
        assert_eq!(c.coefficients.len(), 5);
        assert_eq!(c.model, builtin.name());
        assert!(c.pairs >= 20);
    }
}
