"""Writes a Stable Diffusion 1.5-shaped pipeline with random weights (diffusers layout) to OUT:
the UNet and VAE with SD 1.5's architecture (UNet levels of 320/640/1280/1280 channels, two
ResNets each, 8 attention heads, 768-wide cross-attention; VAE of 128/256/512/512 channels, scale
factor 8), a small CLIP text encoder of SD 1.5's width (768) and tiny-sd's tokenizer. At 512x512
its first UNet level attends over 4,096 tokens, as SD 1.5 does. About 3.5 GB in float32, so it
is made where it is used (scripts/bench.py), not committed.

    $PY scripts/make_sd15_shaped.py ~/.cache/ferroserve/sd15-shaped
"""
import json
import pathlib
import shutil
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from make_diffusion_fixture import randomise as fixture_randomise

TINY = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "tiny-sd"


def randomise(model, seed):
    # Narrower spreads than the small fixture's (0.2 and 0.1), as the benchmark's pipeline was made.
    fixture_randomise(model, seed, weight_spread=0.1, bias_spread=0.05)


def main():
    out = pathlib.Path(sys.argv[1]).expanduser()
    done = out / "model_index.json"
    if done.exists():
        print(f"{out} exists")
        return
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(0)
    # UNet2DConditionModel's defaults are SD 1.5's but for the text width.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    randomise(unet, 1)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    del unet
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
    ).eval()
    randomise(vae, 2)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    del vae
    tiny_text = json.loads((TINY / "text_encoder" / "config.json").read_text())
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=tiny_text["vocab_size"], hidden_size=768, intermediate_size=3072, num_hidden_layers=2,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tiny_text["bos_token_id"], eos_token_id=tiny_text["eos_token_id"],
        pad_token_id=tiny_text["pad_token_id"])).eval()
    randomise(text, 3)
    text.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(TINY / part, tmp / part)
    shutil.copy(TINY / "model_index.json", tmp / "model_index.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
