//! The sampler's filters and draws, the streaming detokenizer, and generation configs.

use std::ops::ControlFlow;

use mlx::{Array, Dtype};
use qwen3::sample::token_key;
use qwen3::{
    weights, GenerateOptions, GenerationConfig, Qwen3Config, Sampling, StreamDecoder, Tokenizer,
};

mod common;

const DRAWS: i32 = 20_000;

/// How often each of 4 tokens is drawn, over `DRAWS` rows of the same logits
/// `log([0.1, 0.2, 0.3, 0.4])` (each row draws with its own noise).
fn frequencies(sampling: Sampling, seed: u64) -> Vec<f64> {
    let probs = [0.1f32, 0.2, 0.3, 0.4];
    let row: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let logits = Array::from_slice(&row, &[1, 4]).broadcast_to(&[DRAWS, 4]);
    let tokens = sampling
        .sample(&logits, &token_key(seed, 0))
        .unwrap()
        .to_vec::<i32>()
        .unwrap();
    let mut counts = [0f64; 4];
    for t in tokens {
        counts[t as usize] += 1.0;
    }
    counts.iter().map(|c| c / f64::from(DRAWS)).collect()
}

fn assert_close(found: &[f64], expected: &[f64]) {
    let sum: f64 = expected.iter().sum();
    for (f, e) in found.iter().zip(expected) {
        // Four standard deviations of a frequency over DRAWS draws is below 0.015.
        assert!((f - e / sum).abs() < 0.015, "{found:?} vs {expected:?}");
    }
}

fn hot(temperature: f32, top_k: usize, top_p: f32) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
    }
}

#[test]
fn draws_follow_the_filtered_distribution() {
    assert_close(&frequencies(hot(1.0, 0, 1.0), 1), &[0.1, 0.2, 0.3, 0.4]);
    // Temperature 0.5 squares the probabilities.
    assert_close(&frequencies(hot(0.5, 0, 1.0), 2), &[0.01, 0.04, 0.09, 0.16]);
    // The two most likely tokens.
    assert_close(&frequencies(hot(1.0, 2, 1.0), 3), &[0.0, 0.0, 0.3, 0.4]);
    // 0.4 + 0.3 is the smallest set reaching 0.5; 0.4 alone reaches 0.4.
    assert_close(&frequencies(hot(1.0, 0, 0.5), 4), &[0.0, 0.0, 0.3, 0.4]);
    assert_close(&frequencies(hot(1.0, 0, 0.4), 5), &[0.0, 0.0, 0.0, 0.4]);
    // top-k before top-p: of {0.3, 0.4} renormalized, 4/7 alone does not reach 0.6.
    assert_close(&frequencies(hot(1.0, 2, 0.6), 6), &[0.0, 0.0, 0.3, 0.4]);
    // A top_k of the whole vocabulary or more filters nothing.
    assert_close(&frequencies(hot(1.0, 9, 1.0), 7), &[0.1, 0.2, 0.3, 0.4]);
}

#[test]
fn narrow_filters_and_greedy_pick_the_most_likely_token() {
    let logits = mlx::random::normal(&[64, 100], Dtype::F32, &mlx::random::key(3));
    let best = logits
        .argmax(-1, false)
        .astype(Dtype::I32)
        .to_vec::<i32>()
        .unwrap();
    for sampling in [Sampling::GREEDY, hot(1.0, 1, 1.0), hot(2.0, 0, 1e-6)] {
        let key = token_key(11, 0);
        let drawn = sampling
            .sample(&logits, &key)
            .unwrap()
            .to_vec::<i32>()
            .unwrap();
        assert_eq!(drawn, best, "{sampling:?}");
    }
    // A hot, unfiltered draw does not: the test can tell the two apart.
    let drawn = hot(1.0, 0, 1.0)
        .sample(&logits, &token_key(11, 0))
        .unwrap()
        .to_vec::<i32>()
        .unwrap();
    assert_ne!(drawn, best);
}

#[test]
fn a_seed_reproduces_a_sampled_generation() {
    let model = weights::load_causal_lm(&common::fixtures().join("qwen3_a"), Dtype::F32).unwrap();
    let run = |seed| {
        let options = GenerateOptions {
            max_tokens: 40,
            sampling: hot(1.0, 0, 0.95),
            seed,
            ..GenerateOptions::default()
        };
        model
            .generate(&[601, 10, 20, 30], &options, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // Keys differ from token to token.
    let keys: Vec<Vec<u32>> = (0..3)
        .map(|i| token_key(1, i).to_vec::<u32>().unwrap())
        .collect();
    assert!(keys[0] != keys[1] && keys[1] != keys[2]);
}

#[test]
fn the_callback_can_end_a_generation() {
    let model = weights::builtin_causal_lm(&Qwen3Config::tiny(), Dtype::F32).unwrap();
    let mut seen = 0;
    let out = model
        .generate(&[601, 10], &GenerateOptions::default(), |_| {
            seen += 1;
            if seen == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out.tokens.len(), 5);
    assert!(!out.stopped);
}

#[test]
fn streamed_text_never_splits_a_character() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let text = "Größe 🔥 一只红色的狐狸 👨\u{200d}👩\u{200d}👧 señor<|im_end|>";
    let ids = tokenizer.encode(text).unwrap();
    let mut decoder = StreamDecoder::new(&tokenizer);
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        let piece = decoder.push(id).unwrap();
        assert!(!piece.contains('\u{fffd}'), "{piece:?}");
        held += usize::from(piece.is_empty());
        out += &piece;
    }
    out += &decoder.finish().unwrap();
    // Special tokens are left out; everything else comes out once, in order.
    assert_eq!(out, tokenizer.decode(&ids, true).unwrap());
    assert!(out.ends_with("señor") && !out.contains("im_end"), "{out}");
    // The byte-level vocabulary splits these characters: some tokens were held back.
    assert!(held > 3, "{held}");
}

#[test]
fn an_unfinished_character_comes_out_at_the_end() {
    let tokenizer = Tokenizer::builtin().unwrap();
    let ids = tokenizer.encode("🔥").unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let mut decoder = StreamDecoder::new(&tokenizer);
    assert_eq!(decoder.push(ids[0]).unwrap(), "");
    assert_eq!(decoder.finish().unwrap(), "\u{fffd}");
}

#[test]
fn generation_configs_name_their_stop_tokens() {
    let parse = |text: &str| GenerationConfig::parse(text, true);
    assert_eq!(
        parse(r#"{"eos_token_id": 602}"#).unwrap().eos_token_ids,
        [602]
    );
    let qwen = r#"{"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643],
        "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}"#;
    let config = parse(qwen).unwrap();
    assert_eq!(config.eos_token_ids, [151645, 151643]);
    assert_eq!(config.sampling, Some(hot(0.6, 20, 0.95)));
    assert_eq!(
        parse(r#"{"eos_token_id": null}"#).unwrap(),
        GenerationConfig {
            eos_token_ids: vec![],
            sampling: Some(Sampling::GREEDY)
        }
    );
    // config.json: only the stop tokens.
    let from_model = GenerationConfig::parse(r#"{"eos_token_id": 2, "do_sample": true}"#, false);
    assert_eq!(from_model.unwrap().sampling, None);
    for (text, needle) in [
        (r#"{"eos_token_id": "x"}"#, "eos_token_id"),
        (r#"{"eos_token_id": [1, -2]}"#, "eos_token_id"),
        (r#"{"do_sample": true, "top_p": 0}"#, "top_p"),
        (r#"{"do_sample": true, "top_k": 2.5}"#, "top_k"),
        (
            r#"{"do_sample": true, "temperature": "hot"}"#,
            "temperature",
        ),
        ("[1]", "JSON object"),
        ("{", "EOF"),
    ] {
        let err = parse(text).unwrap_err();
        assert!(err.contains(needle) && !err.contains('\n'), "{text}: {err}");
    }
}

#[test]
fn generation_config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("generation_config.json");
    std::fs::write(&path, r#"{"eos_token_id": [1, "two"]}"#).unwrap();
    let err = GenerationConfig::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    // Without a generation config, config.json's eos_token_id.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": 7}"#).unwrap();
    let config = GenerationConfig::from_dir(dir.path()).unwrap();
    assert_eq!((config.eos_token_ids, config.sampling), (vec![7], None));
}
