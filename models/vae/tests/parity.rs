//! The autoencoder against diffusers' `AutoencoderKL` on the fixtures written by
//! zimage/tests/fixtures/gen_fixtures.py: a random float32 model (block_out_channels
//! [8, 16, 16], every parameter randomized) and its outputs, untiled and tiled.

use mlx::io::load_safetensors;
use mlx::{Array, Dtype};
use vae::{AutoencoderKL, Parts, Tiling};

mod common;
use common::{fixtures, relative_error};

const TOLERANCE: f32 = 1e-4;

fn model(parts: Parts) -> AutoencoderKL {
    AutoencoderKL::load(fixtures().join("vae"), Dtype::F32, parts).unwrap()
}

fn reference(name: &str) -> Array {
    let file = load_safetensors(fixtures().join("reference.safetensors")).unwrap();
    file.tensors
        .get(name)
        .unwrap_or_else(|| panic!("reference.safetensors lacks {name}"))
        .clone()
}

fn check(what: &str, ours: &Array, name: &str) -> f32 {
    let err = relative_error(ours, &reference(name));
    eprintln!("{what}: max|ours - ref| / max|ref| = {err:.2e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:.2e}");
    err
}

#[test]
fn decode_untiled() {
    let vae = model(Parts::Both);
    check("decode", &vae.decode(&reference("z")).unwrap(), "decode");
}

#[test]
fn decode_tiled_and_the_same_latents_untiled() {
    let vae = model(Parts::Decoder);
    let z2 = reference("z2");
    let tiled = vae.decode_with(&z2, Tiling::Auto).unwrap();
    check("decode tiled", &tiled, "decode_tiled");
    let untiled = vae.decode(&z2).unwrap();
    check("decode z2 untiled", &untiled, "decode_z2_untiled");
    // The tiled result really is tiled: it is far from the untiled reference.
    assert!(relative_error(&tiled, &reference("decode_z2_untiled")) > 1e-3);
    assert_eq!(
        vae.decode_with(&z2, Tiling::Off)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        untiled.to_vec::<f32>().unwrap()
    );
}

#[test]
fn decode_batch_of_two() {
    let vae = model(Parts::Decoder);
    check(
        "decode batch",
        &vae.decode(&reference("z3")).unwrap(),
        "decode_batch",
    );
}

#[test]
fn encode_untiled_mean_std_logvar() {
    let vae = model(Parts::Both);
    let posterior = vae.encode(&reference("image")).unwrap();
    check("encode mean", &posterior.mean, "encode_mean");
    check("encode std", &posterior.std(), "encode_std");
    check("encode logvar", &posterior.logvar, "encode_logvar");
    assert_eq!(
        posterior.mode().to_vec::<f32>().unwrap(),
        posterior.mean.to_vec::<f32>().unwrap()
    );
}

#[test]
fn encode_tiled_and_the_same_image_untiled() {
    let vae = model(Parts::Both);
    let image2 = reference("image2");
    let tiled = vae.encode_with(&image2, Tiling::Auto).unwrap().mean;
    check("encode tiled mean", &tiled, "encode_tiled_mean");
    let untiled = vae.encode(&image2).unwrap().mean;
    check(
        "encode image2 untiled mean",
        &untiled,
        "encode_image2_untiled_mean",
    );
    assert!(relative_error(&tiled, &reference("encode_image2_untiled_mean")) > 1e-3);
}

#[test]
fn decode_latents_applies_scaling_and_shift() {
    let vae = model(Parts::Decoder);
    let z = reference("z");
    let (scale, shift) = (0.3611, 0.1159);
    assert_eq!(vae.config.scaling_factor, scale);
    assert_eq!(vae.config.shift_factor, Some(shift));
    let latents = (&z - shift) * scale;
    check(
        "decode_latents",
        &vae.decode_latents(&latents).unwrap(),
        "decode",
    );
    let round_trip = vae.unscale_latents(&vae.scale_latents(&z));
    assert!(relative_error(&round_trip, &z) < 1e-6);
}

#[test]
fn decoder_only_loading_decodes_the_same_and_cannot_encode() {
    let both = model(Parts::Both);
    let decoder = model(Parts::Decoder);
    assert!(decoder.encoder.is_none() && both.encoder.is_some());
    let z = reference("z");
    assert_eq!(
        decoder.decode(&z).unwrap().to_vec::<f32>().unwrap(),
        both.decode(&z).unwrap().to_vec::<f32>().unwrap()
    );
    let err = decoder.encode(&reference("image")).unwrap_err().to_string();
    assert!(err.contains("without its encoder"), "{err}");
}

#[test]
fn half_precisions_stay_close_to_float32() {
    for (dtype, tolerance) in [(Dtype::Bf16, 5e-2), (Dtype::F16, 5e-3)] {
        let vae = AutoencoderKL::load(fixtures().join("vae"), dtype, Parts::Both).unwrap();
        assert_eq!(vae.dtype(), dtype);
        let out = vae.decode(&reference("z")).unwrap();
        assert_eq!(out.dtype(), dtype);
        let err = relative_error(&out, &reference("decode"));
        eprintln!("decode in {dtype}: relative error {err:.2e}");
        assert!(err < tolerance, "{dtype} decode: relative error {err:.2e}");
        let mean = vae.encode(&reference("image")).unwrap().mean;
        let err = relative_error(&mean, &reference("encode_mean"));
        eprintln!("encode in {dtype}: relative error {err:.2e}");
        assert!(err < tolerance, "{dtype} encode: relative error {err:.2e}");
    }
}

#[test]
fn tiling_on_a_latent_within_one_tile_is_the_untiled_decode() {
    // z3's items are 6x6 latents: one 8x8 tile each, cropped to 24 pixels (all of it).
    let vae = model(Parts::Decoder);
    let z3 = reference("z3");
    let on = vae.decode_with(&z3, Tiling::On).unwrap();
    check("decode batch, Tiling::On", &on, "decode_batch");
    assert_eq!(
        on.to_vec::<f32>().unwrap(),
        vae.decode(&z3).unwrap().to_vec::<f32>().unwrap()
    );
}
