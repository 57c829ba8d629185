//! The `dit` command end to end: its flags, files and JSON, and its errors (one `error:`
//! line and a non-zero exit, never a panic).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mlx::io::{load_safetensors, save_safetensors};
use mlx::{random, Array, Dtype};
use serde_json::Value;

mod common;
use common::{dit, dit_fixtures, fail, fixtures, last_json, path, relative_error, succeed};

/// Every generation of the built-in pipelines needs a prompt.
const PROMPT: [&str; 2] = ["--prompt", "a red fox in the snow"];

#[test]
fn init_info_and_generate_on_the_written_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    succeed(&["init", "--model", "tiny", "--out", path(&model)]);
    assert!(model.join("model_index.json").is_file());
    for file in [
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ] {
        assert!(model.join(file).is_file(), "no {file}");
    }

    let info = last_json(&succeed(&["info", "--model", path(&model), "--json"]));
    assert_eq!(info["architecture"], "ZImageTransformer2DModel");
    assert_eq!(info["layers"]["main"], 2);
    assert_eq!(info["quantization"]["mode"], "none");
    assert_eq!(info["quantization"]["quantized_layers"], 0);
    let builtin = last_json(&succeed(&["info", "--model", "tiny", "--json"]));
    assert_eq!(info["parameters"], builtin["parameters"]);
    assert!(succeed(&["info", "--model", path(&model)]).contains("parameters"));

    let png = dir.path().join("out.png");
    let latents = dir.path().join("latents.safetensors");
    let run = |model: &str, latents: &Path| {
        let stdout = succeed(&[
            "generate",
            "--model",
            model,
            PROMPT[0],
            PROMPT[1],
            "--steps",
            "3",
            "--width",
            "128",
            "--height",
            "96",
            "--seed",
            "7",
            "--out",
            path(&png),
            "--save-latents",
            path(latents),
            "--json",
        ]);
        last_json(&stdout)
    };
    let report = run(path(&model), &latents);
    for key in [
        "model",
        "steps",
        "width",
        "height",
        "forward_passes",
        "cache_hits",
        "step_ms",
        "active_bytes",
        "peak_bytes",
        "weights_bytes",
        "compute_dtype",
        "encode_ms",
        "decode_ms",
        "prompt_tokens",
        "encode_peak_bytes",
        "denoise_peak_bytes",
        "decode_peak_bytes",
    ] {
        assert!(report.get(key).is_some(), "no `{key}` in {report}");
    }
    assert_eq!(report["forward_passes"], 3);
    assert_eq!(report["step_ms"].as_array().unwrap().len(), 3);
    // The denoising peak is its steps' highest, above what a step leaves behind: the step
    // loop resets MLX's peak at each boundary, which must not hide the steps from it.
    let bytes = |key: &str| -> Vec<u64> {
        let values = report[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {report}"));
        values.iter().map(|v| v.as_u64().unwrap()).collect()
    };
    let (step_peaks, active) = (bytes("step_peak_bytes"), bytes("active_bytes"));
    assert_eq!(step_peaks.len(), 3);
    let highest = *step_peaks.iter().max().unwrap();
    assert!(
        report["denoise_peak_bytes"].as_u64().unwrap() >= highest,
        "{report}"
    );
    assert!(highest > active[2], "{report}");
    assert_eq!(report["compute_dtype"], "float32");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (128, 96));
    let file = load_safetensors(&latents).unwrap();
    let from_dir = file.tensors.get("latents").unwrap();
    assert_eq!(from_dir.shape(), [1, 16, 12, 16]);

    // The folder holds exactly the built-in pipeline: the same run gives the same bits.
    let builtin_latents = dir.path().join("builtin.safetensors");
    run("tiny", &builtin_latents);
    let builtin = load_safetensors(&builtin_latents).unwrap();
    assert_eq!(
        builtin.tensors["latents"].to_vec::<f32>().unwrap(),
        from_dir.to_vec::<f32>().unwrap()
    );
}

#[test]
fn memory_is_flat_across_steps() {
    let runs: [&[&str]; 5] = [
        &[],
        &["--cfg", "3.5"],
        &["--no-compile"],
        &["--teacache", "naive", "--threshold", "0.3"],
        &["--teacache", "poly", "--threshold", "0.6", "--cfg", "2"],
    ];
    for extra in runs {
        let mut args = vec![
            "generate", "--steps", "5", "--width", "64", "--height", "64", "--json",
        ];
        args.extend_from_slice(&PROMPT);
        args.extend_from_slice(extra);
        let report = last_json(&succeed(&args));
        let active: Vec<u64> = report["active_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(active.len(), 5);
        assert!(
            active[1..].iter().all(|&a| a == active[1]),
            "{extra:?}: {active:?}"
        );
        let passes = report["forward_passes"].as_u64().unwrap();
        let hits = report["cache_hits"].as_u64().unwrap();
        assert_eq!(
            passes + hits,
            5,
            "{extra:?}: guidance batches both branches"
        );
        assert_eq!(
            hits > 0,
            extra.contains(&"--teacache"),
            "{extra:?}: {report}"
        );
    }
}

#[test]
fn teacache_flags_report_and_fit() {
    let dir = tempfile::tempdir().unwrap();
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "generate", "--steps", "8", "--width", "64", "--height", "64", "--json",
        ];
        args.extend_from_slice(&PROMPT);
        args.extend_from_slice(extra);
        args
    }
    let report = last_json(&succeed(&with(&[
        "--teacache",
        "naive",
        "--threshold",
        "0.3",
    ])));
    assert_eq!(report["teacache"]["mode"], "naive");
    assert_eq!(report["teacache"]["threshold"], 0.3);
    let passes = report["forward_passes"].as_u64().unwrap();
    let hits = report["cache_hits"].as_u64().unwrap();
    assert!(hits > 0 && passes + hits == 8, "{report}");
    let off = last_json(&succeed(&with(&[])));
    assert_eq!(off["teacache"]["mode"], "off");
    assert_eq!(off["cache_hits"], 0);

    // Fitted coefficients are written, and generate takes them.
    let fitted = dir.path().join("coefficients.json");
    succeed(&[
        "teacache-fit",
        "--model",
        "tiny",
        "--runs",
        "2",
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        path(&fitted),
    ]);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&fitted).unwrap()).unwrap();
    assert_eq!(json["coefficients"].as_array().unwrap().len(), 5);
    assert_eq!(json["pairs"], 6);
    let report = last_json(&succeed(&with(&[
        "--teacache",
        "poly",
        "--coefficients",
        path(&fitted),
    ])));
    assert_eq!(report["teacache"]["coefficients"], json["coefficients"]);

    // A directory carries its coefficients; without them, poly says what to do.
    let model = dir.path().join("model");
    succeed(&["init", "--model", "tiny", "--out", path(&model)]);
    let coefficients = model.join("transformer/teacache_coefficients.json");
    assert!(coefficients.is_file());
    succeed(&with(&["--model", path(&model), "--teacache", "poly"]));
    std::fs::remove_file(coefficients).unwrap();
    assert!(fail(&with(&["--model", path(&model), "--teacache", "poly"])).contains("teacache-fit"));
    std::fs::write(&fitted, r#"{"coefficients": []}"#).unwrap();
    let err = fail(&with(&[
        "--teacache",
        "poly",
        "--coefficients",
        path(&fitted),
    ]));
    assert!(err.contains("coefficients"), "{err}");
    assert!(fail(&with(&["--teacache", "naive", "--threshold", "-1"])).contains("--threshold"));
    assert!(fail(&with(&["--teacache", "sometimes"])).contains("--teacache"));
}

#[test]
fn forward_matches_the_diffusers_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let inputs = dit_fixtures().join("model_b_batch_mask.inputs.safetensors");
    let model = dit_fixtures().join("model_b");
    succeed(&[
        "forward",
        "--model",
        path(&model),
        "--inputs",
        path(&inputs),
        "--out",
        path(&out),
    ]);
    let ours = load_safetensors(&out).unwrap().tensors["out"]
        .to_vec::<f32>()
        .unwrap();
    let expected = load_safetensors(dit_fixtures().join("model_b_batch_mask.expected.safetensors"))
        .unwrap()
        .tensors["out"]
        .to_vec::<f32>()
        .unwrap();
    let err = relative_error(&ours, &expected);
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn caption_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shape: &[i32]| {
        let file = dir.path().join(name);
        let feats = random::normal(shape, Dtype::F32, &random::key(3));
        save_safetensors(&file, [("cap_feats", &feats)], &BTreeMap::new()).unwrap();
        file
    };
    let good = write("good.safetensors", &[10, 64]);
    let base = [
        "generate",
        "--steps",
        "1",
        "--width",
        "32",
        "--height",
        "32",
        "--cap-feats",
    ];
    let mut args = base.to_vec();
    args.push(path(&good));
    succeed(&args);

    let narrow = write("narrow.safetensors", &[10, 32]);
    let mut args = base.to_vec();
    args.push(path(&narrow));
    assert!(fail(&args).contains("cap_feat_dim"));
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(fail(&["generate", "--bogus"]).contains("--bogus"));
    assert!(fail(&["generate", "--steps", "many"]).contains("--steps"));
    let generate = |extra: &[&str]| fail(&[&["generate"], &PROMPT[..], extra].concat());
    assert!(generate(&["--width", "100"]).contains("multiples of 16"));
    assert!(generate(&["--steps", "0"]).contains("between 1 and"));
    assert!(generate(&["--steps", "18446744073709551615"]).contains("between 1 and"));
    assert!(generate(&["--cfg", "nan"]).contains("--cfg"));
    assert!(generate(&["--cfg", "-2"]).contains("--cfg"));
    assert!(generate(&["--cfg-normalization", "-1"]).contains("--cfg-normalization"));
    assert!(fail(&["generate"]).contains("--prompt"));
    let err = fail(&[
        "teacache-fit",
        "--model",
        "tiny",
        "--steps",
        "100000000000",
        "--out",
        "x",
    ]);
    assert!(err.contains("--steps"), "{err}");
    assert!(fail(&["info", "--model", path(&d.join("nope"))]).contains("is not a directory"));
    assert!(fail(&["init", "--model", path(d), "--out", path(&d.join("x"))]).contains("built-in"));

    // A transformer with a malformed config.
    let pipeline = d.join("pipeline");
    succeed(&["init", "--model", "tiny", "--out", path(&pipeline)]);
    let err = fail(&["init", "--model", "tiny", "--out", path(&pipeline)]);
    assert!(err.contains("already holds a checkpoint"), "{err}");
    let model = pipeline.join("transformer");
    std::fs::write(model.join("config.json"), "{\"dim\": \"wide\"").unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("config.json"));
    std::fs::write(model.join("config.json"), "{\"dim\": 64, \"n_heads\": 3}").unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("divisible"));

    // Weights that do not fit the config: every problem is listed at once.
    let config = serde_json::json!({"dim": 64, "n_heads": 2, "n_layers": 3, "n_refiner_layers": 1,
        "cap_feat_dim": 64, "axes_dims": [8, 12, 12]});
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let err = fail(&["info", "--model", path(&model)]);
    assert!(
        err.contains("missing") && err.contains("layers.2.attention.to_q.weight"),
        "{err}"
    );

    // A truncated weights file.
    let weights = model.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        model.join("config.json"),
        serde_json::json!({"dim": 64, "n_heads": 2,
        "n_layers": 2, "n_refiner_layers": 1, "cap_feat_dim": 64, "axes_dims": [8, 12, 12]})
        .to_string(),
    )
    .unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("safetensors"));

    // forward: missing tensors and mismatched shapes.
    let inputs = d.join("inputs.safetensors");
    let latents = Array::zeros(&[1, 16, 8, 8], Dtype::F32);
    save_safetensors(&inputs, [("latents", &latents)], &BTreeMap::new()).unwrap();
    let out = d.join("out.safetensors");
    let args = [
        "forward",
        "--model",
        "tiny",
        "--inputs",
        path(&inputs),
        "--out",
        path(&out),
    ];
    assert!(fail(&args).contains("timestep"));
    let t = Array::zeros(&[1], Dtype::F32);
    let caps = Array::zeros(&[1, 4, 64], Dtype::F32);
    let lens = Array::from_slice(&[9i32], &[1]);
    save_safetensors(
        &inputs,
        [
            ("latents", &latents),
            ("timestep", &t),
            ("cap_feats", &caps),
            ("cap_lens", &lens),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(fail(&args).contains("`cap_lens` holds 9, more than the 4 tokens of `cap_feats`"));
    assert!(!out.exists());
}

#[test]
fn numerical_bad_input_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, tensors: &[(&str, &Array)]| {
        let file = d.join(name);
        save_safetensors(&file, tensors.iter().copied(), &BTreeMap::new()).unwrap();
        file
    };
    let (latents, t) = (
        Array::zeros(&[1, 16, 8, 8], Dtype::F32),
        Array::zeros(&[1], Dtype::F32),
    );
    let caps = Array::zeros(&[1, 4, 64], Dtype::F32);
    let nan = Array::full(&[1, 16, 8, 8], f32::NAN, Dtype::F32);
    let out = d.join("out.safetensors");
    let forward = |inputs: &[(&str, &Array)]| {
        let file = write("inputs.safetensors", inputs);
        dit(&[
            "forward",
            "--model",
            "tiny",
            "--inputs",
            path(&file),
            "--out",
            path(&out),
        ])
    };
    let forward_error = |inputs: &[(&str, &Array)]| {
        let run = forward(inputs);
        assert!(!run.status.success());
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let cases: [(&str, &Array, &str); 6] = [
        (
            "latents",
            &latents.astype(Dtype::I32),
            "`latents` must be floating point, found int32",
        ),
        ("latents", &nan, "`latents` holds NaN or infinite values"),
        (
            "latents",
            &Array::zeros(&[16, 8, 8], Dtype::F32),
            "`latents` must be [batch, 16",
        ),
        (
            "timestep",
            &Array::full(&[1], f32::INFINITY, Dtype::F32),
            "`timestep` holds NaN",
        ),
        (
            "timestep",
            &Array::zeros(&[2], Dtype::F32),
            "`timestep` must be [1]",
        ),
        (
            "cap_feats",
            &Array::zeros(&[1, 0, 64], Dtype::F32),
            "at least one token",
        ),
    ];
    for (name, bad, expected) in cases {
        let mut inputs = vec![
            ("latents", &latents),
            ("timestep", &t),
            ("cap_feats", &caps),
        ];
        inputs.iter_mut().find(|(n, _)| *n == name).unwrap().1 = bad;
        let err = forward_error(&inputs);
        assert!(
            err.contains("inputs.safetensors") && err.contains(expected),
            "{name}: {err}"
        );
    }
    // Timesteps outside [0, 1] are what diffusers' transformer takes too: a finite answer.
    for value in [-1.0f32, 2.5] {
        let t = Array::full(&[1], value, Dtype::F32);
        let run = forward(&[
            ("latents", &latents),
            ("timestep", &t),
            ("cap_feats", &caps),
        ]);
        assert!(run.status.success(), "t = {value}");
        assert!(load_safetensors(&out).unwrap().tensors["out"]
            .all_finite()
            .unwrap());
    }

    // Latents to decode or to start from, caption features.
    let file = write("nan.safetensors", &[("latents", &nan), ("cap_feats", &nan)]);
    let picture = d.join("p.png");
    let err = fail(&[
        "decode",
        "--model",
        "tiny",
        "--latents",
        path(&file),
        "--out",
        path(&picture),
    ]);
    assert!(
        err.contains("nan.safetensors: `latents` holds NaN"),
        "{err}"
    );
    let err = fail(&[&["generate", "--init-latents", path(&file)], &PROMPT[..]].concat());
    assert!(
        err.contains("nan.safetensors: `latents` holds NaN"),
        "{err}"
    );
    let err = fail(&["generate", "--steps", "1", "--cap-feats", path(&file)]);
    assert!(
        err.contains("nan.safetensors: `cap_feats` holds NaN"),
        "{err}"
    );
    let ints = write(
        "ints.safetensors",
        &[("latents", &latents.astype(Dtype::I32))],
    );
    let err = fail(&[&["generate", "--init-latents", path(&ints)], &PROMPT[..]].concat());
    assert!(
        err.contains("`latents` must be floating point, found int32"),
        "{err}"
    );

    // NaN in a weight: the run says so instead of writing a black picture.
    let pipeline = d.join("pipeline");
    succeed(&["init", "--model", "tiny", "--out", path(&pipeline)]);
    let weights = pipeline.join("transformer/diffusion_pytorch_model.safetensors");
    let mut tensors = load_safetensors(&weights).unwrap().tensors;
    let name = "layers.0.attention.to_q.weight";
    let poisoned = tensors[name].astype(Dtype::F32) * f32::NAN;
    tensors.insert(name.into(), poisoned);
    save_safetensors(
        &weights,
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &BTreeMap::new(),
    )
    .unwrap();
    let model = ["--model", path(&pipeline)];
    let err = fail(
        &[
            &["generate", "--steps", "2", "--out", path(&picture)],
            &model[..],
            &PROMPT,
        ]
        .concat(),
    );
    assert!(
        err.contains("NaN or infinite values in the latents after 2 steps"),
        "{err}"
    );
    assert!(!picture.exists());

    // In the VAE's: the decoded image.
    std::fs::remove_dir_all(&pipeline).unwrap();
    succeed(&["init", "--model", "tiny", "--out", path(&pipeline)]);
    let weights = pipeline.join("vae/diffusion_pytorch_model.safetensors");
    let mut tensors = load_safetensors(&weights).unwrap().tensors;
    let name = "decoder.conv_out.bias";
    tensors.insert(name.into(), tensors[name].astype(Dtype::F32) * f32::NAN);
    save_safetensors(
        &weights,
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &BTreeMap::new(),
    )
    .unwrap();
    let latents = write("latents.safetensors", &[("latents", &latents)]);
    let err = fail(
        &[
            &[
                "decode",
                "--latents",
                path(&latents),
                "--out",
                path(&picture),
            ],
            &model[..],
        ]
        .concat(),
    );
    assert!(
        err.contains("NaN or infinite values in the decoded image"),
        "{err}"
    );
    assert!(!picture.exists());
}

#[test]
fn the_command_runs_on_openblas_when_the_build_found_it() {
    if !mlx::build_info().blas.contains("OpenBLAS") {
        return; // built without OpenBLAS (MLX_NO_OPENBLAS, or not installed)
    }
    let Ok(ldd) = Command::new("ldd").arg(env!("CARGO_BIN_EXE_dit")).output() else {
        return; // no ldd on this system
    };
    let libraries = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        libraries.contains("libopenblas"),
        "dit does not load OpenBLAS, so float32 matmul runs on the reference BLAS:\n{libraries}"
    );
}

/// A copy of `src` (a directory tree) at `dst`.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn encode_and_decode_match_the_pipeline_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline");
    let case = load_safetensors(fixtures().join("nocfg.safetensors")).unwrap();
    let out = dir.path().join("embeds.safetensors");
    succeed(&[
        "encode",
        "--model",
        path(&model),
        "--prompt",
        "a red fox in the snow",
        "--dtype",
        "f32",
        "--out",
        path(&out),
    ]);
    let file = load_safetensors(&out).unwrap();
    let embeds = &file.tensors["prompt_embeds"];
    let expected = &case.tensors["prompt_embeds"];
    assert_eq!(embeds.shape(), expected.shape());
    let err = relative_error(
        &embeds.to_vec::<f32>().unwrap(),
        &expected.to_vec::<f32>().unwrap(),
    );
    assert!(err <= 1e-4, "prompt_embeds: {err}");
    let ids = &file.tensors["input_ids"];
    assert_eq!(
        (ids.dtype(), ids.shape()),
        (Dtype::I32, &expected.shape()[..1])
    );

    let latents = dir.path().join("latents.safetensors");
    save_safetensors(
        &latents,
        [("latents", &case.tensors["final_latents"])],
        &BTreeMap::new(),
    )
    .unwrap();
    let image = dir.path().join("image.safetensors");
    let png = dir.path().join("image.png");
    succeed(&[
        "decode",
        "--model",
        path(&model),
        "--latents",
        path(&latents),
        "--dtype",
        "f32",
        "--out",
        path(&png),
        "--save-image",
        path(&image),
    ]);
    let ours = load_safetensors(&image).unwrap().tensors["image"]
        .to_vec::<f32>()
        .unwrap();
    let expected = case.tensors["image_raw"].to_vec::<f32>().unwrap();
    let err = relative_error(&ours, &expected);
    assert!(err <= 1e-4, "decoded image: {err}");
    assert!(png.is_file());
}

#[test]
fn pipeline_folders_that_do_not_fit_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("pipeline");
    copy_tree(&fixtures().join("pipeline"), &model);
    let out = dir.path().join("out.png");
    let generate = || {
        fail(&[
            "generate",
            "--model",
            path(&model),
            PROMPT[0],
            PROMPT[1],
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            path(&out),
        ])
    };

    // A text encoder whose width is not the transformer's caption width.
    let encoder = model.join("text_encoder");
    std::fs::rename(&encoder, dir.path().join("text_encoder")).unwrap();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/qwen3/tests/fixtures/qwen3_b"),
        &encoder,
    );
    let err = generate();
    assert!(
        err.contains("text_encoder/config.json")
            && err.contains("hidden_size 24 differs from the transformer's cap_feat_dim 32"),
        "{err}"
    );
    std::fs::remove_dir_all(&encoder).unwrap();
    std::fs::rename(dir.path().join("text_encoder"), &encoder).unwrap();

    // A malformed tokenizer.json, then a chat template that does not compile.
    let tokenizer = model.join("tokenizer/tokenizer.json");
    let good = std::fs::read(&tokenizer).unwrap();
    std::fs::write(&tokenizer, b"{\"model\": 12").unwrap();
    let err = generate();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::write(&tokenizer, &good).unwrap();
    let template = model.join("tokenizer/chat_template.jinja");
    let good = std::fs::read(&template).unwrap();
    std::fs::write(&template, "{% for m in messages %}{{ m.content }").unwrap();
    let err = generate();
    assert!(err.contains("chat_template.jinja"), "{err}");
    std::fs::write(&template, &good).unwrap();

    // An unknown pipeline class, then a missing component.
    let index_path = model.join("model_index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    std::fs::write(&index_path, index.replace("ZImagePipeline", "FluxPipeline")).unwrap();
    let err = generate();
    assert!(
        err.contains("model_index.json") && err.contains("FluxPipeline"),
        "{err}"
    );
    std::fs::write(&index_path, &index).unwrap();
    std::fs::rename(model.join("vae"), dir.path().join("vae")).unwrap();
    let err = generate();
    assert!(
        err.contains("model_index.json") && err.contains("`vae` folder is missing"),
        "{err}"
    );
    std::fs::rename(dir.path().join("vae"), model.join("vae")).unwrap();

    // Latents of the wrong channel count, to generate and to decode.
    let latents = dir.path().join("latents.safetensors");
    let four = Array::zeros(&[1, 4, 8, 8], Dtype::F32);
    save_safetensors(&latents, [("latents", &four)], &BTreeMap::new()).unwrap();
    let err = fail(&[
        "decode",
        "--model",
        path(&model),
        "--latents",
        path(&latents),
        "--out",
        path(&out),
    ]);
    assert!(
        err.contains("latents.safetensors") && err.contains("[B, 16, h, w]"),
        "{err}"
    );
    let err = fail(&[
        "generate",
        "--model",
        path(&model),
        PROMPT[0],
        PROMPT[1],
        "--init-latents",
        path(&latents),
        "--out",
        path(&out),
    ]);
    assert!(
        err.contains("latents.safetensors") && err.contains("[B, 16, h, w]"),
        "{err}"
    );
    let ints = Array::zeros(&[1, 16, 8, 8], Dtype::I32);
    save_safetensors(&latents, [("latents", &ints)], &BTreeMap::new()).unwrap();
    let err = fail(&[
        "decode",
        "--model",
        path(&model),
        "--latents",
        path(&latents),
        "--out",
        path(&out),
    ]);
    assert!(err.contains("floating point"), "{err}");
    assert!(!out.exists(), "a failed run left {}", out.display());

    // The folder itself is fine.
    succeed(&[
        "generate",
        "--model",
        path(&model),
        PROMPT[0],
        PROMPT[1],
        "--steps",
        "1",
        "--width",
        "32",
        "--height",
        "32",
        "--out",
        path(&out),
    ]);
}

#[test]
fn prompts_are_never_errors() {
    let run = |prompt: &str| {
        let out = dit(&[
            "generate", "--prompt", prompt, "--steps", "1", "--width", "32", "--height", "32",
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{prompt:?}: {stderr}");
        (last_json(&String::from_utf8(out.stdout).unwrap()), stderr)
    };
    // The empty prompt is the chat template alone, as diffusers encodes it.
    let (report, stderr) = run("");
    let tokens = report["prompt_tokens"][0].as_u64().unwrap();
    assert!(
        tokens > 0 && !stderr.contains("warning"),
        "{report} {stderr}"
    );

    let long = "a very long prompt about foxes and snow ".repeat(100);
    let (report, stderr) = run(&long);
    assert_eq!(report["prompt_tokens"][0], 512);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("were dropped"), "{stderr}");
}

#[test]
fn the_text_encoder_leaves_memory_before_denoising_unless_kept() {
    let run = |extra: &[&str]| {
        let args = [
            &[
                "generate", "--steps", "2", "--width", "32", "--height", "32", "--json",
            ][..],
            &PROMPT[..],
            extra,
        ]
        .concat();
        last_json(&succeed(&args))
    };
    let dropped = run(&[]);
    let kept = run(&["--keep-text-encoder"]);
    let info = last_json(&succeed(&["info", "--model", "tiny", "--json"]));
    let encoder = info["components"]["text_encoder"]["weights_bytes"]
        .as_u64()
        .unwrap() as f64;
    let active = |r: &Value| r["active_bytes"][0].as_u64().unwrap() as f64;
    let extra = active(&kept) - active(&dropped);
    assert!(
        (0.9 * encoder..=1.5 * encoder).contains(&extra),
        "keeping the text encoder ({encoder} B) added {extra} B to the step loop's memory"
    );
    assert_eq!(
        kept["weights_bytes"].as_u64().unwrap() - dropped["weights_bytes"].as_u64().unwrap(),
        encoder as u64
    );
}

#[test]
fn the_device_is_chosen_and_reported() {
    let info = last_json(&succeed(&[
        "info", "--model", "tiny", "--json", "--device", "cpu",
    ]));
    assert_eq!(info["device"]["device"], "cpu");
    assert_eq!(info["compute_dtype"], "float32");
    let backend = info["device"]["backend"].as_str().unwrap().to_string();
    assert!(
        ["cpu", "cuda", "metal"].contains(&backend.as_str()),
        "{info}"
    );
    assert!(
        fail(&["info", "--model", "tiny", "--device", "tpu"]).contains("\"tpu\" is not a device")
    );
    if !mlx::gpu_available() {
        let err = fail(&["info", "--model", "tiny", "--device", "gpu"]);
        assert!(
            err.contains("--device gpu:0") && err.contains("not available"),
            "{err}"
        );
        // With no GPU, the default is the CPU.
        let info = last_json(&succeed(&["info", "--model", "tiny", "--json"]));
        assert_eq!(info["device"]["device"], "cpu");
    }
}
