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
import statistics
import time
from pathlib import Path

import torch

from latentalign import load_pipeline
from latentalign.adapters import Denoiser
from latentalign.scorers import load_scorer


def interleaved_median_seconds(calls: dict, repeats: int) -> dict[str, float]:
    """Each call's median wall seconds over `repeats` rounds, every round timing each call once in turn (after one
    warm-up round), so that a shared machine's drifting load weighs on every call alike and the ratios hold."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


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
        pixels = pixel.decode(z)
        calls = {
            "denoiser evaluation (UNet)": lambda: den.model(z, 500, embeds),
            "VAE decode": lambda: pixel.decode(z),
            "pixel CLIP image tower (on decoded pixels)": lambda: pixel.embed_images(pixels),
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
        seconds = interleaved_median_seconds(calls, args.repeats)
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
        f"Batch {args.batch}, {args.threads} CPU threads, median of {args.repeats} interleaved rounds, no gradients.",
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
