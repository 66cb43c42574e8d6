"""Writes tiny-sd's 128x128 references (tests/fixtures/models/tiny-sd/ref128_*): for the Euler, DDIM
and PNDM schedulers, seeded initial latents and the image diffusers makes from them. At 128x128
the UNet attends over 4,096 tokens and the VAE over 16,384, so the tiled attention, the large
convolution tiles and the group norms are checked, not only the 64x64 fast path.

Run with the test environment's Python (torch, diffusers 0.42.1):
    PY=$(.venv/bin/python -c 'import sys; sys.path.insert(0, "tests/python"); import torch_env; print(torch_env.serve_python())')
    $PY scripts/make_sd_reference.py
"""
import json
import pathlib

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline
from PIL import Image

SD = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / "tiny-sd"
SCHEDULERS = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler}
SIZE, STEPS, GUIDANCE = 128, 4, 7.5
PROMPT = "a watercolour of a lighthouse at dusk"


def main():
    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(str(SD), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    factor = pipe.vae_scale_factor
    config = pipe.scheduler.config
    prompt_ids = pipe.tokenizer(PROMPT).input_ids
    cases = []
    for seed, (name, cls) in enumerate(SCHEDULERS.items()):
        pipe.scheduler = cls.from_config(config)
        shape = (1, pipe.unet.config.in_channels, SIZE // factor, SIZE // factor)
        latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            image = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                         guidance_scale=GUIDANCE, latents=latents.clone(), output_type="np").images[0]
        stem = f"ref128_{name}"
        # The image as 8-bit PNG: its rounding (at most 1/510) is far inside the 2e-2 the test
        # allows, and it keeps the committed files small.
        Image.fromarray((image * 255).round().clip(0, 255).astype(np.uint8)).save(SD / f"{stem}_image.png")
        np.save(SD / f"{stem}_latents.npy", latents.numpy().astype(np.float32))
        cases.append({"scheduler": name, "prompt": PROMPT, "num_inference_steps": STEPS,
                      "guidance_scale": GUIDANCE, "height": SIZE, "width": SIZE,
                      "latents": f"{stem}_latents.npy", "png": f"{stem}_image.png",
                      "prompt_ids": prompt_ids})
    (SD / "reference_images_128.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {SD}")


if __name__ == "__main__":
    main()
