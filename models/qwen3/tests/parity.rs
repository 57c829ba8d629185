//! The model against transformers' `Qwen3Model` on the fixtures of
//! `zimage/tests/fixtures/gen_fixtures.py`: `qwen3_a` (a `Qwen3ForCausalLM` checkpoint,
//! float32, grouped-query attention, head_dim != hidden / heads) and `qwen3_b` (a
//! `Qwen3Model`, bfloat16, tied embeddings), with `hidden_states[-2]` and
//! `last_hidden_state` of real prompts.

use mlx::io::load_safetensors;
use mlx::{Array, Dtype};
use qwen3::{weights, Layers, LoadOptions, Qwen3Config, Qwen3Model, Tokenizer};

mod common;
use common::{fixtures, relative_error};

/// Compiled or eager is a process-wide switch: every test that runs the model holds this.
static MODE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mode() -> std::sync::MutexGuard<'static, ()> {
    MODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const TOLERANCE: f32 = 1e-4;
/// The prompts (indices into tokens.json) the fixtures hold hidden states of.
const PROMPTS: [usize; 3] = [0, 4, 6];

fn load(name: &str, layers: Layers) -> Qwen3Model {
    let options = LoadOptions {
        layers,
        ..LoadOptions::from(Dtype::F32)
    };
    weights::load(&fixtures().join(name), options).unwrap()
}

fn values(a: &Array) -> Vec<f32> {
    a.astype(Dtype::F32).to_vec::<f32>().unwrap()
}

/// For each prompt: (ids `[1, L]`, expected hidden_states[-2], expected last_hidden_state).
fn references(file: &str) -> Vec<(Array, Array, Array)> {
    let refs = load_safetensors(fixtures().join(file)).unwrap().tensors;
    PROMPTS
        .iter()
        .map(|i| {
            let get = |name: &str| refs[&format!("{name}_{i}")].clone();
            let ids = get("input_ids");
            let len = ids.shape()[0];
            (ids.reshape(&[1, len]), get("hidden"), get("last"))
        })
        .collect()
}

/// The worst relative error over the fixture's prompts, of the encoder's hidden states
/// and of the final norm's output.
fn check(model: &str, compiled: bool) -> (f32, f32) {
    let _mode = mode();
    let encoder = load(model, Layers::TextEncoder);
    let whole = load(model, Layers::All);
    mlx::compile::set_eager(!compiled);
    let traces = mlx::compile::trace_count();
    let mut worst = (0f32, 0f32);
    for (ids, hidden, last) in references(&format!("hidden_{}.safetensors", &model[6..])) {
        let ours = encoder
            .hidden_states(&ids, encoder.encoder_depth())
            .unwrap();
        let [_, l, d] = ours.dims();
        assert_eq!([l, d], [hidden.shape()[0], hidden.shape()[1]]);
        worst.0 = worst
            .0
            .max(relative_error(&values(&ours), &values(&hidden)));
        let ours = whole.forward(&ids).unwrap();
        worst.1 = worst.1.max(relative_error(&values(&ours), &values(&last)));
    }
    mlx::compile::set_eager(false);
    if compiled {
        assert!(mlx::compile::trace_count() > 0, "nothing was compiled");
    } else {
        assert_eq!(mlx::compile::trace_count(), traces, "eager mode traced");
    }
    eprintln!(
        "{model} compiled={compiled}: max|ours - ref| / max|ref|: hidden_states[-2] {:.2e}, last_hidden_state {:.2e}",
        worst.0, worst.1
    );
    worst
}

#[test]
fn causal_lm_checkpoint_with_grouped_query_attention() {
    for compiled in [true, false] {
        let (hidden, last) = check("qwen3_a", compiled);
        assert!(
            hidden <= TOLERANCE && last <= TOLERANCE,
            "compiled {compiled}: {hidden} {last}"
        );
    }
}

#[test]
fn bfloat16_base_model_with_tied_embeddings() {
    for compiled in [true, false] {
        let (hidden, last) = check("qwen3_b", compiled);
        assert!(
            hidden <= TOLERANCE && last <= TOLERANCE,
            "compiled {compiled}: {hidden} {last}"
        );
    }
}

#[test]
fn hidden_states_follow_transformers_indexing() {
    let _mode = mode();
    let model = load("qwen3_a", Layers::All);
    let (ids, hidden, _) = references("hidden_a.safetensors").remove(0);
    // hidden_states[0] is the embeddings.
    let embedded = model.hidden_states(&ids, 0).unwrap();
    let table = &model.embed_tokens.weight;
    let direct = table.take(&ids.reshape(&[-1]), 0);
    assert_eq!(values(&embedded), values(&direct));
    // The encoder's depth is num_hidden_layers - 1 and matches hidden_states[-2].
    assert_eq!(model.encoder_depth(), 2);
    let ours = model.hidden_states(&ids, 2).unwrap();
    assert!(relative_error(&values(&ours), &values(&hidden)) <= TOLERANCE);
    // A different depth is a different output.
    let deeper = model.hidden_states(&ids, 3).unwrap();
    assert!(relative_error(&values(&deeper), &values(&hidden)) > 1e-2);
}

#[test]
fn the_encoder_loads_only_the_layers_it_runs() {
    let _mode = mode();
    let encoder = load("qwen3_a", Layers::TextEncoder);
    assert_eq!(encoder.layers.len(), 2);
    let err = encoder
        .forward(&Array::from_slice(&[1i32, 2], &[1, 2]))
        .unwrap_err();
    assert!(err.to_string().contains("2 of its 3 layers"), "{err}");
    let err = encoder
        .hidden_states(&Array::from_slice(&[1i32, 2], &[1, 2]), 3)
        .unwrap_err();
    assert!(err.to_string().contains("3 layers"), "{err}");
    let first = load("qwen3_a", Layers::First(1));
    assert_eq!(first.layers.len(), 1);
}

#[test]
fn right_padded_batches_give_each_prompts_own_states() {
    let _mode = mode();
    let model = load("qwen3_b", Layers::TextEncoder);
    let refs = references("hidden_b.safetensors");
    let lens: Vec<i32> = refs.iter().map(|(ids, ..)| ids.shape()[1]).collect();
    let max = *lens.iter().max().unwrap();
    let mut batch = Vec::new();
    for (ids, ..) in &refs {
        let mut row = ids.to_vec::<i32>().unwrap();
        row.resize(max as usize, 600); // the pipeline pads with <|endoftext|>
        batch.extend(row);
    }
    let ids = Array::from_slice(&batch, &[refs.len() as i32, max]);
    let out = model.hidden_states(&ids, model.encoder_depth()).unwrap();
    for (i, ((_, hidden, _), len)) in refs.iter().zip(&lens).enumerate() {
        let row = out
            .slice_axis(0, i as i32, i as i32 + 1)
            .slice_axis(1, 0, *len);
        let err = relative_error(&values(&row), &values(hidden));
        assert!(err <= TOLERANCE, "prompt {i}: {err}");
    }
}

#[test]
fn bad_ids_are_refused_before_the_lookup() {
    let _mode = mode();
    let model = load("qwen3_b", Layers::All);
    for (ids, needle) in [
        (
            Array::from_slice(&[3i32, 605], &[1, 2]),
            "605 is outside the vocabulary of 605",
        ),
        (Array::from_slice(&[-1i32], &[1, 1]), "-1 is outside"),
        (Array::from_slice(&[1i32, 2], &[2]), "[batch, tokens]"),
        (Array::from_slice(&[0.5f32], &[1, 1]), "integers"),
        (Array::zeros(&[1, 0], Dtype::I32), "at least one token"),
    ] {
        let err = model.hidden_states(&ids, 1).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn builtin_models_are_deterministic_and_follow_the_prompt() {
    let _mode = mode();
    let tokenizer = Tokenizer::builtin().unwrap();
    let config = Qwen3Config::tiny();
    assert_eq!(config.vocab_size as usize, tokenizer.vocab_size());
    let model = weights::builtin(&config, LoadOptions::text_encoder(Dtype::F32)).unwrap();
    let again = weights::builtin(&config, Dtype::F32).unwrap();
    let encode = |m: &Qwen3Model, prompt: &str| {
        let ids = tokenizer.prompt_ids(prompt, 512).unwrap().ids;
        let ids = Array::from_slice(&ids, &[1, ids.len() as i32]);
        values(&m.hidden_states(&ids, m.encoder_depth()).unwrap())
    };
    let a = encode(&model, "a red fox in the snow");
    assert_eq!(a, encode(&again, "a red fox in the snow"));
    assert!(a.iter().all(|v| v.is_finite()));
    let b = encode(&model, "a blue whale in the sea");
    // The template's shared prefix gives equal states; the prompts' tokens do not.
    let dim = config.hidden_size as usize;
    let (head_a, head_b) = (&a[..4 * dim], &b[..4 * dim]);
    assert_eq!(head_a, head_b);
    let tail_diff = a[a.len() - dim..]
        .iter()
        .zip(&b[b.len() - dim..])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(tail_diff > 0.1, "{tail_diff}");
    let small =
        weights::builtin(&Qwen3Config::small(), LoadOptions::text_encoder(Dtype::F32)).unwrap();
    assert_eq!(small.layers.len(), 3);
    assert_eq!(encode(&small, "x").len() % 512, 0);
}
