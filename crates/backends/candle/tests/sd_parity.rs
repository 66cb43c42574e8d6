//! tiny-sd against diffusers: prompt token ids, and the decoded image from the same latents for
//! every scheduler and guidance case of `reference_images.json` (64x64) and
//! `reference_images_128.json` (128x128, made by `scripts/make_sd_reference.py`: the UNet attends
//! over 4,096 tokens and the VAE over 16,384, past the tiled attention's blocks).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ferroserve_backend_candle::diffusion::{
    DiffusionInputs, ImageSettings, SchedulerKind, StableDiffusion,
};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures/models/tiny-sd")
}

fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = arr.shape().iter().map(|&d| d as usize).collect();
    (shape, arr.into_vec::<f32>().unwrap())
}

/// Token ids padded to the encoder's 77 positions with the pad token, as the pipeline does.
fn padded(tokenizer: &tokenizers::Tokenizer, text: &str) -> (Vec<u32>, Tensor) {
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    let pad = tokenizer.token_to_id("<|endoftext|>").unwrap();
    let mut all = ids.clone();
    all.resize(77, pad);
    (ids, Tensor::from_vec(all, (1, 77), &Device::Cpu).unwrap())
}

/// diffusers' image of a case: float32 HWC in [0, 1], from `.npy` or an 8-bit PNG.
fn reference_image(case: &Value) -> (Vec<usize>, Vec<f32>) {
    if let Some(npy_file) = case["image"].as_str() {
        return npy(&fixture().join(npy_file));
    }
    let png = image::open(fixture().join(case["png"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let shape = vec![png.height() as usize, png.width() as usize, 3];
    (
        shape,
        png.as_raw().iter().map(|&v| v as f32 / 255.0).collect(),
    )
}

#[test]
fn images_match_diffusers_at_64() {
    images_match_diffusers("reference_images.json");
}

#[test]
fn images_match_diffusers_at_128() {
    images_match_diffusers("reference_images_128.json");
}

fn images_match_diffusers(cases: &str) {
    let sd = StableDiffusion::load(&fixture(), &Device::Cpu).unwrap();
    let tokenizer =
        tokenizers::Tokenizer::from_file(fixture().join("tokenizer/tokenizer.json")).unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join(cases)).unwrap()).unwrap();
    let (_, negative) = padded(&tokenizer, "");
    for case in cases.as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let (ids, prompt_ids) = padded(&tokenizer, prompt);
        let want_ids: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want_ids, "token ids of '{prompt}'");
        let (shape, latents) = npy(&fixture().join(case["latents"].as_str().unwrap()));
        let latents = Tensor::from_vec(latents, shape, &Device::Cpu).unwrap();
        let settings = ImageSettings {
            height: case["height"].as_u64().unwrap() as usize,
            width: case["width"].as_u64().unwrap() as usize,
            steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            guidance_scale: case["guidance_scale"].as_f64().unwrap(),
            scheduler: case["scheduler"]
                .as_str()
                .unwrap()
                .parse::<SchedulerKind>()
                .unwrap(),
        };
        let inputs = DiffusionInputs {
            prompt_ids: &prompt_ids,
            negative_ids: &negative,
            latents: &latents,
        };
        let image = sd
            .generate(&inputs, &settings, &|_, _, _| true)
            .unwrap()
            .remove(0)
            .unwrap();
        let got: Vec<f32> = image.flatten_all().unwrap().to_vec1().unwrap();
        let (want_shape, want) = reference_image(case);
        assert_eq!(image.dims(), want_shape.as_slice());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-2, "{settings:?}: largest difference {worst}");
        eprintln!(
            "{:?} {} at {}: largest difference {worst}",
            settings.scheduler, settings.guidance_scale, settings.height
        );
    }
}
