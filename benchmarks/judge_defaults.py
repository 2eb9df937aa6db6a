"""The evidence for the Best-of-N default on TRAIN prompts: Best-of-8 among each kept-aside train prompt's 8 recorded
samples (train prompts `latentalign train judge` set aside and never trained on), by the judge, pixel CLIP and
Latent-CLIP, against the oracle and the first sample.

cd benchmarks && python judge_defaults.py --data ../runs/judge_final/data --out results/judge_train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from latentalign import load_pipeline
from latentalign.checkpoint import load_prompted_tensors
from latentalign.files import atomic_write_text
from latentalign.scorers import load_scorer
from latentalign.scorers.factory import scorer_folder
from latentalign.training.judge import within_prompt_auroc

COMMAND = "cd benchmarks && python judge_defaults.py --data ../runs/judge_final/data --out results/judge_train"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/judge_final/data", help="the judge's recorded trajectories")
    ap.add_argument("--judge", default="shapes-judge")
    ap.add_argument("--out", default="benchmarks/results/judge_train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    judge = load_scorer(args.judge)
    aside = set(json.loads((scorer_folder(args.judge) / "training.json").read_text())["kept_aside_prompts"])
    parts = [load_prompted_tensors(p) for p in sorted(Path(args.data).glob("chunk*.safetensors"))]
    prompts = [q for p in parts for q in p["prompts"]]
    rows = [i for i, p in enumerate(prompts) if p in aside]
    final = torch.cat([p["final"] for p in parts])[rows]
    labels = torch.cat([p["labels"] for p in parts])[rows].numpy()
    prompts = [prompts[i] for i in rows]
    pipe = load_pipeline("shapes")
    pixel, latent = load_scorer("shapes-pixel", vae=pipe.vae), load_scorer("shapes-latent")
    with torch.no_grad():
        log_odds, passes = judge.score_terms(final, prompts)
        scores = {
            "judge": judge.combine(log_odds, passes).numpy(),
            "judge log-odds alone": log_odds.numpy(),
            "pixel CLIP": pixel.score(pixel.decode(final), prompts).numpy(),
            "Latent-CLIP": latent.score(final, prompts).numpy(),
        }
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)  # one prompt's samples (a prompt drawn twice has 16)
    best = {k: float(np.mean([labels[ix][int(np.argmax(v[ix]))] for ix in groups.values()])) for k, v in scores.items()}
    result = {
        "command": COMMAND,
        "prompts": len(groups),
        "samples": len(rows),
        "first sample (plain)": float(np.mean([labels[ix[0]] for ix in groups.values()])),
        "oracle": float(np.mean([labels[ix].max() for ix in groups.values()])),
        "best_of_all_samples": {k: round(v, 4) for k, v in best.items()},
        "within_prompt_auroc": {
            k: within_prompt_auroc(v.tolist(), labels.tolist(), prompts) for k, v in scores.items()
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.json", json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
