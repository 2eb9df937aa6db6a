"""Sample grids of noise optimisation with the latent judge as reward, to inspect for adversarial images (issue 23).

For held-out prompts of the composite suites: the plain one-step sample, ReNO with the judge as reward and ReNO
with pixel CLIP, same seed and iterations. Each tile has a green (checker accepts) or red (rejects) border; the
judge's own probability for its final latents and the checker's verdict go to `grid.json`. A reward that found
adversarial latents shows as a high judge probability on tiles the checker rejects.

python benchmarks/judge_grids.py --out benchmarks/results/judge_reno_one_step/grids
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from latentalign import load_pipeline
from latentalign.files import atomic_save_png, atomic_write_text
from latentalign.generation import generate
from latentalign.methods import NoiseOptimization
from latentalign.scorers import load_scorer
from latentalign.world import check, suite

SUITES = ("two_objects", "relation", "counting")
SCALE = 3


def tile(image: Image.Image, ok: bool) -> Image.Image:
    big = image.resize((image.width * SCALE, image.height * SCALE), Image.Resampling.NEAREST)
    out = Image.new("RGB", (big.width + 6, big.height + 6), (40, 160, 60) if ok else (200, 40, 40))
    out.paste(big, (3, 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-one-step")
    ap.add_argument("--judge", default="shapes-judge")
    ap.add_argument("--per-suite", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/judge_reno_one_step/grids")
    args = ap.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model)
    judge = load_scorer(args.judge).for_pipeline_latents(pipe.vae)
    pixel = load_scorer("shapes-pixel", vae=pipe.vae)
    prompts = []
    for name in SUITES:
        chosen = suite(name, "heldout")
        random.Random(5).shuffle(chosen)
        prompts += chosen[: args.per_suite]
    columns = {"plain": None, "ReNO, judge reward": judge, "ReNO, pixel CLIP reward": pixel}
    rows, tiles = [], []
    for prompt in prompts:
        row = {"prompt": prompt}
        for label, reward in columns.items():
            extra = {} if reward is None else {"method": NoiseOptimization(iterations=args.iterations, scorer=reward)}
            res = generate(pipe, prompt, seed=args.seed, **extra)
            ok = check(res.images[0], prompt).ok
            with torch.no_grad():
                p_judge = float(torch.sigmoid(judge.score(res.latents, prompt))[0])
            row[label] = {"checker_ok": ok, "judge_probability": round(p_judge, 4)}
            tiles.append(tile(res.images[0], ok))
        rows.append(row)
    w, h = tiles[0].size
    label_h = 14
    grid = Image.new("RGB", (len(columns) * w + 260, len(prompts) * h + label_h), "white")
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(columns):
        draw.text((j * w + 2, 1), label[:18], fill="black")
    for i, prompt in enumerate(prompts):
        for j in range(len(columns)):
            grid.paste(tiles[i * len(columns) + j], (j * w, label_h + i * h))
        draw.text((len(columns) * w + 4, label_h + i * h + h // 2 - 5), prompt, fill="black")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_png(out / "grid.png", grid)
    summary = {
        label: {
            "checker_accepts": sum(r[label]["checker_ok"] for r in rows),
            "judge_confident_but_rejected": sum(
                (not r[label]["checker_ok"]) and r[label]["judge_probability"] > 0.5 for r in rows
            ),
        }
        for label in columns
    }
    record = {"command": "python benchmarks/judge_grids.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
              vars(args).items()), "prompts": len(rows), "summary": summary, "rows": rows}  # fmt: skip
    atomic_write_text(out / "grid.json", json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
