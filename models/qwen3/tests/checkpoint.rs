//! Loading and writing checkpoints: layouts, dtypes, shards, and what is reported about
//! checkpoints that do not fit.

use std::collections::BTreeMap;
use std::path::Path;

use mlx::io::{load_safetensors, save_safetensors};
use mlx::{Array, Dtype, Module};
use qwen3::{weights, Layers, LoadOptions, Qwen3Config, Qwen3Error, Qwen3Model};

mod common;
use common::{fixtures, one_line_naming, relative_error};

/// Compiled graphs are process-wide state: one model-running test at a time keeps the
/// trace counts and timing of the tests predictable.
static RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn values(a: &Array) -> Vec<f32> {
    a.astype(Dtype::F32).to_vec::<f32>().unwrap()
}

fn ids() -> Array {
    Array::from_slice(&[601i32, 84, 82, 261, 198, 7, 602], &[1, 7])
}

/// The fixture checkpoint `name` as a config and its tensors.
fn fixture(name: &str) -> (String, BTreeMap<String, Array>) {
    let dir = fixtures().join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let tensors = load_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .tensors;
    (config, tensors)
}

/// A checkpoint directory of `config` and `tensors` in one file.
fn write_dir(config: &str, tensors: &BTreeMap<String, Array>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    save_safetensors(
        dir.path().join("model.safetensors"),
        tensors.iter(),
        &BTreeMap::new(),
    )
    .unwrap();
    dir
}

fn load_err(dir: &Path) -> Qwen3Error {
    weights::load(dir, Dtype::F32).unwrap_err()
}

#[test]
fn a_missing_tensor_is_one_line_naming_the_directory_and_tensor() {
    let (config, mut tensors) = fixture("qwen3_a");
    tensors.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    let dir = write_dir(&config, &tensors);
    let text = one_line_naming(load_err(dir.path()), dir.path());
    assert!(
        text.contains("1 missing: layers.1.mlp.up_proj.weight"),
        "{text}"
    );
    // A layer the encoder does not load may be missing.
    let options = LoadOptions {
        layers: Layers::First(1),
        ..LoadOptions::from(Dtype::F32)
    };
    weights::load(dir.path(), options).unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let (config, mut tensors) = fixture("qwen3_b");
    tensors.remove("norm.weight").unwrap();
    tensors.remove("layers.0.self_attn.q_norm.weight").unwrap();
    tensors.insert(
        "layers.0.self_attn.q_proj.bias".into(),
        Array::zeros(&[24], Dtype::F32),
    );
    tensors.insert(
        "layers.7.mlp.up_proj.weight".into(),
        Array::zeros(&[40, 24], Dtype::F32),
    );
    tensors.insert(
        "embed_tokens.weight".into(),
        Array::zeros(&[605, 23], Dtype::F32),
    );
    tensors.insert(
        "layers.1.mlp.down_proj.weight".into(),
        Array::zeros(&[24, 40], Dtype::I32),
    );
    let dir = write_dir(&config, &tensors);
    let err = load_err(dir.path());
    let text = one_line_naming(&err, dir.path());
    for needle in [
        "2 missing: layers.0.self_attn.q_norm.weight, norm.weight",
        "2 unexpected: layers.0.self_attn.q_proj.bias, layers.7.mlp.up_proj.weight",
        "1 wrongly shaped: embed_tokens.weight (expected [605, 24], found [605, 23])",
        "1 wrongly stored: layers.1.mlp.down_proj.weight (stored as int32)",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let Qwen3Error::Checkpoint { report, .. } = err else {
        panic!("{err}");
    };
    assert_eq!(report.missing.len(), 2);
}

#[test]
fn a_hidden_size_that_disagrees_with_the_tensors_is_reported() {
    let (config, tensors) = fixture("qwen3_b");
    let config = config.replace("\"hidden_size\": 24", "\"hidden_size\": 32");
    let dir = write_dir(&config, &tensors);
    let text = one_line_naming(load_err(dir.path()), dir.path());
    assert!(
        text.contains("wrongly shaped: embed_tokens.weight (expected [605, 32], found [605, 24])"),
        "{text}"
    );
    assert!(text.contains("and ") && text.contains(" more"), "{text}");
}

#[test]
fn a_bad_config_is_one_line_naming_config_json() {
    let (config, tensors) = fixture("qwen3_a");
    for (bad, needle) in [
        (
            config.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 0"),
            "num_attention_heads",
        ),
        (
            config.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
            "divisible",
        ),
        (
            config.replace("\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""),
            "yarn",
        ),
        (
            config.replace("\"attention_bias\": false", "\"attention_bias\": true"),
            "attention_bias",
        ),
        (
            config.replace("\"vocab_size\": 605", "\"vocab_size\": \"605\""),
            "invalid type",
        ),
        ("{\"hidden_size\": 32,\n".to_string(), "EOF"),
    ] {
        let dir = write_dir(&bad, &tensors);
        let text = one_line_naming(load_err(dir.path()), &dir.path().join("config.json"));
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

#[test]
fn absent_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    one_line_naming(
        load_err(&dir.path().join("nowhere")),
        &dir.path().join("nowhere"),
    );
    one_line_naming(load_err(dir.path()), &dir.path().join("config.json"));
    let (config, _) = fixture("qwen3_a");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    one_line_naming(load_err(dir.path()), dir.path());
}

/// Splits `tensors` into two shards with an index, as transformers writes big models.
fn write_sharded(config: &str, tensors: &BTreeMap<String, Array>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let mut shards: [BTreeMap<&String, &Array>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (i, (name, array)) in tensors.iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        shards[i % 2].insert(name, array);
        weight_map.insert(name.clone(), shard.into());
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        save_safetensors(path, shard.iter().map(|(n, a)| (*n, *a)), &BTreeMap::new()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    dir
}

#[test]
fn sharded_unprefixed_and_prefixed_layouts_load_the_same_model() {
    let _run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    let (config, tensors) = fixture("qwen3_a");
    let reference = weights::load(&fixtures().join("qwen3_a"), Dtype::F32).unwrap();
    let expected = values(&reference.forward(&ids()).unwrap());

    let sharded = write_sharded(&config, &tensors);
    let model = weights::load(sharded.path(), Dtype::F32).unwrap();
    assert_eq!(values(&model.forward(&ids()).unwrap()), expected);

    // The base model's names without `model.` (and no lm_head) load as well.
    let unprefixed: BTreeMap<String, Array> = tensors
        .iter()
        .filter_map(|(n, a)| Some((n.strip_prefix("model.")?.to_string(), a.clone())))
        .collect();
    let dir = write_dir(&config, &unprefixed);
    let model = weights::load(dir.path(), Dtype::F32).unwrap();
    assert_eq!(values(&model.forward(&ids()).unwrap()), expected);
}

#[test]
fn stored_dtypes_convert_to_the_compute_dtype() {
    let _run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = fixtures().join("qwen3_b"); // stored bfloat16
    let f32_model = weights::load(&dir, Dtype::F32).unwrap();
    let bf16_model = weights::load(&dir, Dtype::Bf16).unwrap();
    assert_eq!(f32_model.dtype(), Dtype::F32);
    assert_eq!(bf16_model.dtype(), Dtype::Bf16);
    let (a, b) = (
        f32_model.forward(&ids()).unwrap(),
        bf16_model.forward(&ids()).unwrap(),
    );
    assert_eq!(b.dtype(), Dtype::Bf16);
    // bfloat16 arithmetic: close, not equal.
    let err = relative_error(&values(&b), &values(&a));
    assert!(err < 5e-2 && err > 0.0, "{err}");

    let (config, tensors) = fixture("qwen3_b");
    let f16: BTreeMap<String, Array> = tensors
        .iter()
        .map(|(n, a)| (n.clone(), a.astype(Dtype::F16)))
        .collect();
    let f16_dir = write_dir(&config, &f16);
    let model = weights::load(f16_dir.path(), Dtype::F32).unwrap();
    let err = relative_error(&values(&model.forward(&ids()).unwrap()), &values(&a));
    assert!(err < 1e-2, "{err}");
}

#[test]
fn saved_models_load_back_identically_and_refuse_to_overwrite() {
    let _run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    let model = weights::load(&fixtures().join("qwen3_a"), Dtype::F32).unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("saved");
    weights::check_new_target(&target).unwrap();
    weights::save(&model, &target, Dtype::F32).unwrap();
    assert!(weights::check_new_target(&target).is_err());

    // transformers' names, no prefix, no lm_head.
    let saved = load_safetensors(target.join("model.safetensors"))
        .unwrap()
        .tensors;
    assert!(saved.contains_key("embed_tokens.weight"));
    assert!(saved.contains_key("layers.2.self_attn.k_norm.weight"));
    assert_eq!(saved.len(), model.parameters().len());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(target.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "Qwen3Model");
    assert_eq!(config["rope_parameters"]["rope_theta"], 1e6);
    assert_eq!(config["head_dim"], 16);

    let back = weights::load(&target, Dtype::F32).unwrap();
    assert_eq!(back.config.rope_theta, model.config.rope_theta);
    assert_eq!(
        values(&back.forward(&ids()).unwrap()),
        values(&model.forward(&ids()).unwrap())
    );

    let bf16 = out.path().join("bf16");
    weights::save(&model, &bf16, Dtype::Bf16).unwrap();
    let saved = load_safetensors(bf16.join("model.safetensors"))
        .unwrap()
        .tensors;
    assert!(saved.values().all(|a| a.dtype() == Dtype::Bf16));
    let config = Qwen3Config::from_file(&bf16.join("config.json")).unwrap();
    assert_eq!(config.dtype.as_deref(), Some("bfloat16"));

    let encoder = weights::load(
        &fixtures().join("qwen3_a"),
        LoadOptions::text_encoder(Dtype::F32),
    )
    .unwrap();
    let err = weights::save(&encoder, &out.path().join("partial"), Dtype::F32).unwrap_err();
    assert!(err.to_string().contains("2 of its 3 layers"), "{err}");
}

#[test]
fn builtin_models_save_and_load_back() {
    let _run = RUN.lock().unwrap_or_else(|p| p.into_inner());
    let model = weights::builtin(&Qwen3Config::tiny(), Dtype::F32).unwrap();
    let out = tempfile::tempdir().unwrap();
    weights::save(&model, out.path(), Dtype::F32).unwrap();
    let back = weights::load(out.path(), Dtype::F32).unwrap();
    assert_eq!(
        back.config,
        Qwen3Config {
            dtype: Some("float32".into()),
            ..Qwen3Config::tiny()
        }
    );
    assert_eq!(
        values(&back.forward(&ids()).unwrap()),
        values(&model.forward(&ids()).unwrap())
    );
    // Norm weights are 1 + 0.1 N(0, 1): not all ones.
    let norm = values(&model.norm.weight);
    assert!(norm.iter().any(|w| (w - 1.0).abs() > 0.01));
    let bad = Qwen3Config {
        num_attention_heads: 0,
        ..Qwen3Config::tiny()
    };
    assert!(weights::builtin(&bad, Dtype::F32).is_err());
    let err = weights::builtin(&Qwen3Config::tiny(), Dtype::I32).unwrap_err();
    assert!(err.to_string().contains("float dtype"), "{err}");
    let _: &Qwen3Model = &model;
}
