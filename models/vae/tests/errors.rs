//! Bad inputs give one-line errors that name the tensor or file at fault.

use std::collections::BTreeMap;
use std::path::Path;

use mlx::io::{load_safetensors, save_safetensors};
use mlx::{Array, Dtype};
use vae::weights::WEIGHTS_FILE;
use vae::{AutoencoderKL, Parts, VaeConfig};

mod common;
use common::fixtures;

/// A copy of the fixture model in a temporary directory.
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", WEIGHTS_FILE] {
        std::fs::copy(fixtures().join("vae").join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn load_error(dir: &Path) -> String {
    let err = AutoencoderKL::load(dir, Dtype::F32, Parts::Both)
        .err()
        .expect("loading fails")
        .to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    eprintln!("{err}");
    err
}

#[test]
fn latents_with_the_wrong_channel_count() {
    let vae = AutoencoderKL::load(fixtures().join("vae"), Dtype::F32, Parts::Both).unwrap();
    let err = vae
        .decode(&Array::zeros(&[1, 4, 6, 10], Dtype::F32))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "latents: expected [batch, 16, height, width], found [1, 4, 6, 10]"
    );
    let err = vae
        .decode(&Array::zeros(&[16, 6, 10], Dtype::F32))
        .unwrap_err()
        .to_string();
    assert!(err.contains("found [16, 6, 10]"), "{err}");
    let err = vae
        .encode(&Array::zeros(&[1, 4, 32, 32], Dtype::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("image: expected [batch, 3, height, width]"),
        "{err}"
    );
    let err = vae
        .decode(&Array::zeros(&[1, 16, 6, 10], Dtype::I32))
        .unwrap_err()
        .to_string();
    assert!(err.contains("floating-point"), "{err}");
}

#[test]
fn an_image_too_small_for_the_downsamplings() {
    let vae = AutoencoderKL::load(fixtures().join("vae"), Dtype::F32, Parts::Both).unwrap();
    // 3 levels, 2 downsamplings: 3 rows become 1 after the first, which the second cannot
    // take.
    let err = vae
        .encode(&Array::zeros(&[1, 3, 3, 16], Dtype::F32))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("image: a 3x16 region is too small"),
        "{err}"
    );
    assert!(vae.encode(&Array::zeros(&[1, 3, 4, 4], Dtype::F32)).is_ok());
}

#[test]
fn a_config_with_channels_not_divisible_by_groups() {
    let dir = copy_of_fixture();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["norm_num_groups"] = 3.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
    assert!(
        err.ends_with("block_out_channels[0] = 8 is not divisible by norm_num_groups 3"),
        "{err}"
    );
}

#[test]
fn a_config_that_is_not_json_names_the_file() {
    let dir = copy_of_fixture();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "{\"block_out_channels\": [8, 16,").unwrap();
    let err = load_error(dir.path());
    assert!(err.starts_with(&format!("{}: ", path.display())), "{err}");
}

#[test]
fn every_missing_unexpected_and_misshapen_tensor_at_once() {
    let dir = copy_of_fixture();
    let path = dir.path().join(WEIGHTS_FILE);
    let original = load_safetensors(&path).unwrap();
    let gone = [
        "decoder.conv_in.weight",
        "decoder.mid_block.attentions.0.to_q.bias",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    ];
    let mut tensors: BTreeMap<String, Array> = original
        .tensors
        .iter()
        .filter(|(name, _)| !gone.contains(&name.as_str()))
        .map(|(name, array)| (name.clone(), array.clone()))
        .collect();
    tensors.insert(
        "decoder.extra.weight".into(),
        Array::zeros(&[2], Dtype::F32),
    );
    tensors.insert(
        "decoder.conv_out.bias".into(),
        Array::zeros(&[4], Dtype::F32),
    );
    // Written under another name and moved over: the mapped original stays intact.
    let written = dir.path().join("new.safetensors");
    save_safetensors(&written, tensors.iter(), &BTreeMap::new()).unwrap();
    drop((original, tensors));
    std::fs::rename(&written, &path).unwrap();

    let err = load_error(dir.path());
    assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("3 missing"), "{err}");
    for name in gone {
        assert!(err.contains(name), "{name} not named: {err}");
    }
    assert!(err.contains("1 unexpected: decoder.extra.weight"), "{err}");
    assert!(
        err.contains("1 wrongly shaped: decoder.conv_out.bias (expected [3], found [4])"),
        "{err}"
    );
}

#[test]
fn decoding_only_skips_the_encoder_tensors_without_reading_them() {
    // An encoder tensor of the wrong shape is no problem when only decoding.
    let dir = copy_of_fixture();
    let path = dir.path().join(WEIGHTS_FILE);
    let original = load_safetensors(&path).unwrap();
    let mut tensors: BTreeMap<String, Array> = original.tensors.clone().into_iter().collect();
    tensors.insert(
        "encoder.conv_in.bias".into(),
        Array::zeros(&[5], Dtype::F32),
    );
    let written = dir.path().join("new.safetensors");
    save_safetensors(&written, tensors.iter(), &BTreeMap::new()).unwrap();
    drop((original, tensors));
    std::fs::rename(&written, &path).unwrap();
    assert!(AutoencoderKL::load(dir.path(), Dtype::F32, Parts::Decoder).is_ok());
    assert!(load_error(dir.path()).contains("encoder.conv_in.bias (expected [8], found [5])"));
}

#[test]
fn a_sharded_checkpoint_loads_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("vae/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let single = load_safetensors(fixtures().join("vae").join(WEIGHTS_FILE)).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (shard, prefix) in [(1, "encoder."), (2, "decoder.")] {
        let file = format!("diffusion_pytorch_model-0000{shard}-of-00002.safetensors");
        let tensors: Vec<(&String, &Array)> = single
            .tensors
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .collect();
        for (name, _) in &tensors {
            weight_map.insert(name.to_string(), file.clone().into());
        }
        save_safetensors(dir.path().join(&file), tensors, &BTreeMap::new()).unwrap();
    }
    assert_eq!(weight_map.len(), single.tensors.len());
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join(format!("{WEIGHTS_FILE}.index.json")),
        index.to_string(),
    )
    .unwrap();
    let sharded = AutoencoderKL::load(dir.path(), Dtype::F32, Parts::Both).unwrap();
    let whole = AutoencoderKL::load(fixtures().join("vae"), Dtype::F32, Parts::Both).unwrap();
    let z = Array::ones(&[1, 16, 4, 4], Dtype::F32);
    assert_eq!(
        sharded.decode(&z).unwrap().to_vec::<f32>().unwrap(),
        whole.decode(&z).unwrap().to_vec::<f32>().unwrap()
    );
}

#[test]
fn a_truncated_safetensors_file_names_the_file() {
    let dir = copy_of_fixture();
    let path = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(err.starts_with(&path.display().to_string()), "{err}");
}

#[test]
fn a_missing_directory_and_a_missing_config() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nowhere");
    assert!(load_error(&nowhere).starts_with(&nowhere.display().to_string()));
    let err = load_error(dir.path());
    assert!(
        err.starts_with(&dir.path().join("config.json").display().to_string()),
        "{err}"
    );
}

#[test]
fn a_random_model_saves_and_loads_back() {
    let config = VaeConfig {
        block_out_channels: vec![8, 8],
        down_block_types: vec!["DownEncoderBlock2D".into(); 2],
        up_block_types: vec!["UpDecoderBlock2D".into(); 2],
        norm_num_groups: 4,
        use_quant_conv: true,
        use_post_quant_conv: true,
        ..VaeConfig::tiny()
    };
    let vae = AutoencoderKL::random(&config, 3, Dtype::F32).unwrap();
    assert!(vae.quant_conv.is_some() && vae.post_quant_conv.is_some());
    let dir = tempfile::tempdir().unwrap();
    vae.save(dir.path(), Dtype::F32).unwrap();
    let back = AutoencoderKL::load(dir.path(), Dtype::F32, Parts::Both).unwrap();
    let err = vae.save(dir.path(), Dtype::F32).unwrap_err().to_string();
    assert!(
        err.ends_with("already holds a checkpoint; choose a new directory"),
        "{err}"
    );
    assert_eq!(back.config.block_out_channels, config.block_out_channels);
    let image = mlx::random::uniform(-1.0, 1.0, &[1, 3, 8, 8], Dtype::F32, &mlx::random::key(1));
    let z = vae.encode(&image).unwrap().mode();
    assert_eq!(z.shape(), &[1, 16, 4, 4]);
    assert_eq!(
        back.decode(&z).unwrap().to_vec::<f32>().unwrap(),
        vae.decode(&z).unwrap().to_vec::<f32>().unwrap()
    );
    // The same seed gives the same weights; another seed others.
    let again = AutoencoderKL::random(&config, 3, Dtype::F32).unwrap();
    let other = AutoencoderKL::random(&config, 4, Dtype::F32).unwrap();
    let weight = |m: &AutoencoderKL| m.decoder.conv_in.weight.to_vec::<f32>().unwrap();
    assert_eq!(weight(&again), weight(&vae));
    assert_ne!(weight(&other), weight(&vae));
}
