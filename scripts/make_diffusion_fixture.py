"""Writes tests/fixtures/diffusion-parts: a small random UNet shaped like Stable Diffusion 2.x
(attention heads per level, linear projections, three levels, two ResNets per level, a plain
last level whose transformer depth the middle block takes) and a three-level VAE whose attention
weights carry diffusers' old names, with diffusers' outputs for odd-sized latents.

Run with the project's .venv (diffusers 0.42.1, torch): .venv/bin/python scripts/make_diffusion_fixture.py
"""
import json
import pathlib

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "diffusion-parts"


def randomise(model, seed, weight_spread=0.2, bias_spread=0.1):
    # Default initialisation leaves norms at 1/0 and some projections at zero; random values
    # everywhere make every weight matter to the output. Matrices are scaled by their fan-in;
    # vectors spread around 1 (norm weights) or 0 (biases).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(r / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + weight_spread * r)
            else:
                p.copy_(bias_spread * r)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 2, 2),
        use_linear_projection=True,
        cross_attention_dim=16,
        norm_num_groups=8,
    ).eval()
    randomise(unet, 1)
    unet.save_pretrained(OUT / "unet", safe_serialization=True)

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ).eval()
    randomise(vae, 2)
    vae.save_pretrained(OUT / "vae", safe_serialization=True)
    # Older checkpoints name the VAE attention's weights query/key/value/proj_attn.
    path = OUT / "vae" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in load_file(path).items():
        for new, was in old.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{was}.")
        renamed[k] = v.contiguous()
    save_file(renamed, path)

    g = torch.Generator().manual_seed(3)
    latents = torch.randn((2, 4, 5, 7), generator=g)
    context = torch.randn((2, 6, 16), generator=g)
    t = 637
    with torch.inference_mode():
        noise = unet(latents, t, encoder_hidden_states=context).sample
        image = vae.decode(latents).sample
    for name, a in [("latents", latents), ("context", context), ("unet_out", noise), ("vae_out", image)]:
        np.save(OUT / f"{name}.npy", a.numpy().astype(np.float32))
    (OUT / "case.json").write_text(json.dumps({"timestep": t}) + "\n")


if __name__ == "__main__":
    main()
