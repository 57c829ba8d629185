//! A long decoding run on a tiny random model: the loop carries exactly the KV caches and
//! the last token, memory grows only when the cache does, and each cache capacity is traced
//! once. One test in its own binary: trace counts and memory statistics are process-wide.

use std::ops::ControlFlow;

use mlx::Dtype;
use qwen3::causal_lm::CACHE_STEP;
use qwen3::{weights, GenerateOptions, Qwen3Config, Sampling, Tokenizer};

const NEW_TOKENS: usize = 2000;

#[test]
fn two_thousand_tokens_carry_only_the_caches_and_the_last_token() {
    // Wide kv heads, so that one step of cache (1 MiB) dwarfs a step's temporaries.
    let config = Qwen3Config {
        num_attention_heads: 4,
        num_key_value_heads: 4,
        head_dim: 64,
        ..Qwen3Config::tiny()
    };
    let layers = config.num_hidden_layers as usize;
    let model = weights::builtin_causal_lm(&config, Dtype::F32).unwrap();
    let tokenizer = Tokenizer::builtin().unwrap();
    let prompt = tokenizer
        .prompt_ids("a red fox in the snow", 512)
        .unwrap()
        .ids;
    let prompt: Vec<u32> = prompt.iter().map(|&id| id as u32).collect();
    let options = GenerateOptions {
        max_tokens: NEW_TOKENS,
        sampling: Sampling {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.9,
        },
        record_steps: true,
        ..GenerateOptions::default()
    };
    let out = model
        .generate(&prompt, &options, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(out.tokens.len(), NEW_TOKENS);
    assert_eq!(out.steps.len(), NEW_TOKENS);
    // Bytes of every layer's keys and values at a capacity.
    let kv_bytes = |capacity: usize| {
        2 * layers * (config.num_key_value_heads * config.head_dim) as usize * capacity * 4
    };
    let chunk = CACHE_STEP as usize;
    let steps = &out.steps;

    // The Keep set of every step but the last (which builds nothing): the caches (keys and
    // values of each layer) and the next token, int32 [1], nothing else.
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.stats.carried, 2 * layers + 1, "step {i}");
        if i + 1 < steps.len() {
            assert_eq!(s.stats.kept, 2 * layers + 1, "step {i}");
            assert_eq!(s.stats.kept_bytes, kv_bytes(s.capacity) + 4, "step {i}");
        } else {
            assert_eq!(s.stats.kept, 0);
        }
    }

    // The cache grows by whole chunks exactly when the next position needs it (step i
    // writes token i at position prompt + i), and each capacity is traced once: by the
    // first step that runs it.
    for (i, s) in steps[..steps.len() - 1].iter().enumerate() {
        assert_eq!(
            s.capacity,
            (prompt.len() + i + 1).div_ceil(chunk) * chunk,
            "step {i}"
        );
    }
    let mut chunks: Vec<(usize, &[qwen3::generate::StepRecord])> = Vec::new();
    for (i, window) in steps.windows(2).enumerate() {
        let (before, now) = (&window[0], &window[1]);
        if now.capacity == before.capacity {
            assert_eq!(now.traces, before.traces, "step {} traced again", i + 1);
        } else {
            assert!(
                now.traces > before.traces,
                "step {} ran a new capacity untraced",
                i + 1
            );
        }
    }
    let mut first = 0;
    for i in 1..=steps.len() {
        if i == steps.len() || steps[i].capacity != steps[first].capacity {
            chunks.push((steps[first].capacity, &steps[first..i]));
            first = i;
        }
    }
    let capacities: Vec<usize> = chunks.iter().map(|(c, _)| *c).collect();
    assert_eq!(capacities, (1..=8).map(|k| k * chunk).collect::<Vec<_>>());

    // Memory is flat within a capacity once the growth's old buffers are gone (the two
    // steps after growing), with a peak that never holds a second copy of the cache (the
    // cache is written in place), and grows by one chunk of cache per capacity.
    let slack = kv_bytes(chunk) / 8;
    let mut settled = Vec::new();
    for (capacity, records) in &chunks {
        let steady = &records[2.min(records.len())..records.len() - 1];
        let active: Vec<usize> = steady.iter().map(|s| s.stats.active_bytes).collect();
        let (lo, hi) = (active.iter().min().unwrap(), active.iter().max().unwrap());
        assert!(hi - lo <= slack, "capacity {capacity}: active {lo}..{hi}");
        let peak = steady.iter().map(|s| s.stats.peak_bytes).max().unwrap();
        assert!(
            peak <= lo + 2 * slack,
            "capacity {capacity}: peak {peak}, active {lo}"
        );
        assert!(*lo >= kv_bytes(*capacity), "capacity {capacity}: {lo}");
        settled.push(*lo);
    }
    for (k, pair) in settled.windows(2).enumerate() {
        let growth = pair[1] as f64 - pair[0] as f64;
        let expected = kv_bytes(chunk) as f64;
        assert!(
            (growth - expected).abs() <= 0.1 * expected,
            "capacity {}: grew {growth} bytes, one chunk of cache is {expected}",
            capacities[k + 1]
        );
    }
    eprintln!(
        "{} tokens: capacities {capacities:?}, traces {}..{}, settled active {settled:?}",
        out.tokens.len(),
        steps[0].traces,
        steps[steps.len() - 1].traces
    );
}
