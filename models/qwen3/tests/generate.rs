//! Greedy decoding against transformers' `generate(do_sample=False)` on the fixtures of
//! `tests/fixtures/gen_generate.py` (`qwen3_a`: grouped-query attention, untied head;
//! `qwen3_b`: tied embeddings), and the cached forward pass against the uncached one.

use std::ops::ControlFlow;

use mlx::{Array, Dtype};
use qwen3::{weights, GenerateOptions, Qwen3ForCausalLM, Sampling};
use serde_json::Value;

mod common;
use common::{fixtures, relative_error};

fn load(name: &str) -> Qwen3ForCausalLM {
    weights::load_causal_lm(&fixtures().join(name), Dtype::F32).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("generate.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

/// Every case of `model`: the same new tokens as transformers, stop tokens included.
fn greedy_matches_transformers(model_name: &str) {
    let model = load(model_name);
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["model"] == model_name) {
        let prompt = ids(&case["input_ids"]);
        let expected = ids(&case["output_ids"]);
        let stop_tokens = ids(&case["eos_token_id"]);
        let options = GenerateOptions {
            max_tokens: 64,
            sampling: Sampling::GREEDY,
            stop_tokens: stop_tokens.clone(),
            ..GenerateOptions::default()
        };
        let mut streamed = Vec::new();
        let out = model
            .generate(&prompt, &options, |id| {
                streamed.push(id);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.tokens, expected, "{}", case["name"]);
        assert_eq!(out.prompt_tokens, prompt.len());
        assert_eq!(out.stopped, !stop_tokens.is_empty(), "{}", case["name"]);
        // The callback sees every token but the stop token.
        let shown = if out.stopped {
            expected.len() - 1
        } else {
            expected.len()
        };
        assert_eq!(streamed, expected[..shown], "{}", case["name"]);
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn greedy_decoding_matches_transformers_with_grouped_query_attention() {
    greedy_matches_transformers("qwen3_a");
}

#[test]
fn greedy_decoding_matches_transformers_with_tied_embeddings() {
    greedy_matches_transformers("qwen3_b");
}

/// The logits of a prompt run in pieces through the cache (a prefill, then tokens one at a
/// time, across a growth of the cache) equal the uncached model's on the whole sequence.
#[test]
fn cached_steps_equal_the_uncached_forward_pass() {
    for name in ["qwen3_a", "qwen3_b"] {
        let model = load(name);
        let prompt: Vec<i32> = (0..300).map(|i| (i * 7 + 3) % 600).collect();
        let whole = Array::from_slice(&prompt, &[1, prompt.len() as i32]);
        let hidden = model.model.forward(&whole).unwrap();
        let logits_at = |pos: i32| {
            let h = hidden.slice_axis(1, pos, pos + 1);
            let l = match &model.lm_head {
                Some(head) => head.forward(&h),
                None => model.model.embed_tokens.as_linear(&h),
            };
            l.reshape(&[-1]).to_vec::<f32>().unwrap()
        };
        let mut cache = model.new_cache(1);
        let first = 250;
        let ids = Array::from_slice(&prompt[..first], &[1, first as i32]);
        let out = model.forward(&ids, &mut cache).unwrap();
        let err = relative_error(&out.reshape(&[-1]).to_vec().unwrap(), &logits_at(249));
        assert!(err < 1e-4, "{name} prefill: {err}");
        assert_eq!((cache.len(), cache.capacity()), (250, 256));
        for pos in first..prompt.len() {
            let ids = Array::from_slice(&prompt[pos..pos + 1], &[1, 1]);
            let out = model.forward(&ids, &mut cache).unwrap();
            let err = relative_error(
                &out.reshape(&[-1]).to_vec().unwrap(),
                &logits_at(pos as i32),
            );
            assert!(err < 1e-4, "{name} position {pos}: {err}");
        }
        assert_eq!((cache.len(), cache.capacity()), (300, 512));
    }
}

#[test]
fn bad_prompts_and_settings_are_refused() {
    let model = load("qwen3_b");
    let run = |prompt: &[u32], options: GenerateOptions| {
        model
            .generate(prompt, &options, |_| ControlFlow::Continue(()))
            .unwrap_err()
            .to_string()
    };
    let err = run(&[1, 605], GenerateOptions::default());
    assert!(
        err.contains("605 is outside the vocabulary of 605"),
        "{err}"
    );
    assert!(run(&[], GenerateOptions::default()).contains("at least one token"));
    let hot = |temperature, top_p| GenerateOptions {
        sampling: Sampling {
            temperature,
            top_k: 0,
            top_p,
        },
        ..GenerateOptions::default()
    };
    assert!(run(&[1], hot(-1.0, 1.0)).contains("temperature"));
    assert!(run(&[1], hot(f32::NAN, 1.0)).contains("temperature"));
    assert!(run(&[1], hot(1.0, 0.0)).contains("top_p"));
    assert!(run(&[1], hot(1.0, 1.5)).contains("top_p"));
    // No new tokens asked: none made, no error.
    let none = GenerateOptions {
        max_tokens: 0,
        ..GenerateOptions::default()
    };
    let out = model
        .generate(&[1, 2], &none, |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(out.tokens.is_empty());
}

#[test]
fn a_partly_loaded_model_is_refused() {
    let mut model = load("qwen3_a");
    model.model.layers.pop();
    let err = model
        .generate(&[1, 2], &GenerateOptions::default(), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("2 of its 3 layers"), "{err}");
    let mut cache = model.new_cache(1);
    let err = model
        .forward(&Array::from_slice(&[1i32], &[1, 1]), &mut cache)
        .unwrap_err();
    assert!(err.to_string().contains("2 of its 3 layers"), "{err}");
}

#[test]
fn a_cache_of_another_layout_is_refused() {
    let model = load("qwen3_a");
    let other = load("qwen3_b");
    let ids = Array::from_slice(&[1i32, 2], &[1, 2]);
    for mut cache in [other.new_cache(1), model.new_cache(2)] {
        let err = model.forward(&ids, &mut cache).unwrap_err().to_string();
        assert!(err.contains("the cache does not fit the model"), "{err}");
    }
    let mut cache = model.new_cache(1);
    cache.layers[1].values = Array::zeros(&[1, 2, 0], Dtype::F32);
    let err = model.forward(&ids, &mut cache).unwrap_err().to_string();
    assert!(err.contains("the cache does not fit the model"), "{err}");
}
