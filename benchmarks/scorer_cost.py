"""What a scorer call costs, measured in one run: latent scorers against VAE decode + pixel CLIP.

The three Shapes scorers share width and depth (configs/shapes_clip_*.json: width 64, 2 layers, 64 image tokens),
so the difference is the decode; the distilled Latent-CLIP (shapes-latent-distilled) adds a convolutional stem on the
latent grid to the same tower. The latent judge (shapes-judge, a joint transformer over prompt tokens and latent
cells) is timed as a call (log-odds plus the clause verdict on its predicted object map) and its log-odds alone,
against issue 23's target of <= 0.25 of decode + pixel CLIP. Also times one denoiser evaluation, the unit the
methods' benchmarks convert to.

python benchmarks/scorer_cost.py   # writes benchmarks/results/scorer_cost/{table.md,table.json}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentalign import load_pipeline
from latentalign.adapters import Denoiser
from latentalign.bench import median_seconds
from latentalign.scorers import load_scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distilled", default="shapes-latent-distilled", help="the Latent-CLIP with a stem to time")
    ap.add_argument("--judge", default="shapes-judge", help="the latent judge to time")
    ap.add_argument("--out", default="benchmarks/results/scorer_cost")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("shapes")
    pixel = load_scorer("shapes-pixel", vae=pipe.vae)
    latent = load_scorer("shapes-latent")
    noisy = load_scorer("shapes-noisy")
    distilled = load_scorer(args.distilled)
    judge = load_scorer(args.judge)
    den = Denoiser(pipe)
    z = den.initial_noise(list(range(args.batch)))
    t = torch.full((args.batch,), 500)
    prompts = ["a red circle left of a blue square"] * args.batch
    two = ("a red circle left of a blue square", "two green squares")  # two token lengths: the padded path
    mixed = [two[i % 2] for i in range(args.batch)]
    cond = den.encode(prompts[:1], 1.0)  # unguided: one evaluation per latent
    embeds = cond.prompt_embeds.expand(args.batch, -1, -1)

    with torch.no_grad():
        calls = {
            "denoiser evaluation (UNet)": lambda: den.model(z, 500, embeds),
            "VAE decode": lambda: pixel.decode(z),
            "pixel CLIP image tower (on decoded pixels)": lambda: pixel.embed_images(pixel.decode(z)),
            "latent CLIP image tower": lambda: latent.embed_images(z),
            "noisy CLIP image tower": lambda: noisy.embed_images(z, t),
            "VAE decode + pixel CLIP score": lambda: pixel.score(pixel.decode(z), prompts),
            "Latent-CLIP score": lambda: latent.score(z, prompts),
            "NoisyCLIP score": lambda: noisy.score(z, prompts, t),
            "distilled Latent-CLIP score (stem)": lambda: distilled.score(z, prompts),
            "latent judge score": lambda: judge.score(z, prompts, t),
            "latent judge log-odds alone": lambda: judge(z, prompts, t.float()),
            "latent judge score, two prompts of two lengths": lambda: judge.score(z, mixed, t),
        }
        seconds = {name: median_seconds(fn, args.repeats) for name, fn in calls.items()}
        pixels = pixel.decode(z)
        tower = median_seconds(lambda: pixel.embed_images(pixels), args.repeats)
        seconds["pixel CLIP image tower (on decoded pixels)"] = tower
    per_item = {k: v / args.batch for k, v in seconds.items()}
    unit = per_item["denoiser evaluation (UNet)"]
    pixel_total = per_item["VAE decode + pixel CLIP score"]
    ratios = {
        "Latent-CLIP score / (decode + pixel CLIP score)": per_item["Latent-CLIP score"] / pixel_total,
        "NoisyCLIP score / (decode + pixel CLIP score)": per_item["NoisyCLIP score"] / pixel_total,
        "distilled Latent-CLIP score / (decode + pixel CLIP score)": per_item["distilled Latent-CLIP score (stem)"]
        / pixel_total,
    }
    judge_ratios = {
        f"{name} / (decode + pixel CLIP score)": per_item[name] / pixel_total
        for name in (
            "latent judge score",
            "latent judge log-odds alone",
            "latent judge score, two prompts of two lengths",
        )
    }
    result = {
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds_per_item": {k: round(v, 7) for k, v in per_item.items()},
        "denoiser_eval_equivalents": {k: round(v / unit, 4) for k, v in per_item.items()},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "target_met": all(v <= 0.5 for v in ratios.values()),
        "judge_ratios": {k: round(v, 4) for k, v in judge_ratios.items()},
        "judge_target_met": {k: v <= 0.25 for k, v in judge_ratios.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Batch {args.batch}, {args.threads} CPU threads, median of {args.repeats} runs, no gradients.",
        "",
        "| call | ms per item | denoiser-evaluation equivalents |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v * 1000:.4f} | {v / unit:.3f} |" for k, v in per_item.items()]
    lines += ["", "| ratio | value (target <= 0.5) |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    lines += ["", "| the latent judge | value (target <= 0.25) |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} ({'met' if v <= 0.25 else 'NOT met'}) |" for k, v in judge_ratios.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
