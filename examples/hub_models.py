"""Plain generation, Best-of-N and noise optimisation (ReNO) on a diffusers model of yours, judged by a CLIP.

The model is a Hub id or a local folder (SD 1.x/2.x, SD-Turbo, SDXL, SDXL-Turbo, SD3, Flux, PixArt); the reward
and judge is a transformers `CLIPModel` reading the decoded image (`PixelCLIPScorer`), so no latent scorer is
needed. Every result prints its CLIP score and what it cost; images go to --out.

python examples/hub_models.py "a red cube on top of a blue sphere" --model stabilityai/sd-turbo --steps 1 --guidance 0
python examples/hub_models.py "two cats and a dog" --model stabilityai/stable-diffusion-xl-base-1.0 --steps 30 \
    --dtype float16 --device cuda --iterations 0
python examples/hub_models.py "a green apple left of a red book" \
    --model stabilityai/stable-diffusion-3-medium-diffusers --no-t5 --steps 28 --guidance 7 \
    --dtype float16 --device cuda
python examples/hub_models.py "three red apples on a table" --model black-forest-labs/FLUX.1-schnell --steps 4 \
    --guidance 0 --max-sequence-length 256 --dtype bfloat16 --offload model
python examples/hub_models.py "a blue bird on a yellow chair" --model PixArt-alpha/PixArt-XL-2-512x512 --steps 20 \
    --dtype float16 --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import latentalign
from latentalign.scorers import PixelCLIPScorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--model", required=True, help="a diffusers pipeline: Hub id or folder")
    ap.add_argument("--clip", default="openai/clip-vit-large-patch14", help="a CLIPModel: Hub id or folder")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's, else 50)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's, else 7.5)")
    ap.add_argument("--n", type=int, default=4, help="Best-of-N candidates (0 skips Best-of-N)")
    ap.add_argument("--iterations", type=int, default=10, help="noise-optimisation iterations (0 skips it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-t5", action="store_true", help="SD3: load without the T5 text encoder (as diffusers can)")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    ap.add_argument("--device", default=None, help="cpu or cuda (default cpu; not with --offload)")
    ap.add_argument("--offload", choices=("model", "sequential"), default=None, help="CPU offloading (needs CUDA)")
    ap.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    ap.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")
    ap.add_argument("--max-sequence-length", type=int, default=None, help="T5 tokens (SD3, Flux, PixArt)")
    ap.add_argument("--no-binning", action="store_true", help="PixArt: no resolution binning (use_resolution_binning)")
    ap.add_argument("--out", default="out/hub_models")
    args = ap.parse_args()
    if args.n < 0 or args.iterations < 0:
        ap.error("--n and --iterations must be >= 0")

    extra = {"text_encoder_3": None, "tokenizer_3": None} if args.no_t5 else {}
    dtype = getattr(torch, args.dtype)
    pipe = latentalign.load_pipeline(args.model, device=args.device, dtype=dtype, offload=args.offload, **extra)
    device = "cuda" if args.offload else (args.device or "cpu")
    clip = PixelCLIPScorer.from_pretrained(args.clip, vae=pipe.vae).to(device, dtype)
    common = {"seed": args.seed, "num_inference_steps": args.steps, "guidance_scale": args.guidance}
    common.update(height=args.height, width=args.width)
    if args.max_sequence_length is not None:
        common["max_sequence_length"] = args.max_sequence_length
    if args.no_binning:
        common["use_resolution_binning"] = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    runs = {"plain": latentalign.generate(pipe, args.prompt, **common)}
    if args.n:
        runs["best-of-n"] = latentalign.generate(pipe, args.prompt, method="best-of-n", n=args.n, scorer=clip, **common)
    if args.iterations:
        runs["noise-optimization"] = latentalign.generate(
            pipe, args.prompt, method="noise-optimization", scorer=clip, iterations=args.iterations, **common
        )
    for name, result in runs.items():
        with torch.no_grad():
            score = float(clip.score_latents(result.latents, args.prompt))
        result.images[0].save(out / f"{name}.png")
        print(f"{name:>18}: CLIP score {score:.4f}  {result.cost}  -> {out / (name + '.png')}")


if __name__ == "__main__":
    main()
