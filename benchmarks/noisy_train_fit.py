"""How well a NoisyCLIP ranks the samples of its OWN training trajectories (within-prompt AUROC of z_t scores at
a few steps): set beside its held-out detection study, the gap says whether it learnt or memorised.

python benchmarks/noisy_train_fit.py --trajectories runs/noisy_rank/trajectories.safetensors \
    --scorer runs/noisy_rank/scorer shapes-noisy --out benchmarks/results/detection_noisy_ranking/train_fit.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latentalign.checkpoint import load_prompted_tensors
from latentalign.scorers import load_scorer

sys.path.insert(0, str(Path(__file__).parent))
from detection_study import within_prompt_auroc  # noqa: E402


@torch.no_grad()
def fit(scorer, traj: dict, steps: list[int], batch: int = 512) -> dict[str, float]:
    prompts, labels = traj["prompts"], traj["aligned"].numpy()
    out = {}
    for step in steps:
        scores = []
        for i in range(0, len(prompts), batch):
            x = traj["latents"][i : i + batch, step]
            t = traj["timesteps"][step].long().expand(x.shape[0])
            scores.append(scorer.score(x, prompts[i : i + batch], t))
        out[str(step)] = round(within_prompt_auroc(torch.cat(scores).float().numpy(), labels, prompts), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", required=True, help="a scorer run's trajectories.safetensors")
    ap.add_argument("--scorer", nargs="+", required=True, help="noisy scorers: shipped names or folders")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 19], help="denoising steps (0-based)")
    ap.add_argument("--out", required=True, help="a JSON file")
    args = ap.parse_args()
    torch.set_num_threads(2)
    traj = load_prompted_tensors(args.trajectories)
    if max(args.steps) >= traj["latents"].shape[1] or min(args.steps) < 0:
        ap.error(f"--steps must lie in [0, {traj['latents'].shape[1]})")
    report = {"trajectories": args.trajectories, "samples": len(traj["prompts"]), "prompts": len(set(traj["prompts"]))}
    report["within_prompt_auroc"] = {}
    for name in args.scorer:
        scorer = load_scorer(name).eval()
        if scorer.space != "noisy_latents":
            ap.error(f"{name} is not a noisy scorer")
        report["within_prompt_auroc"][name] = fit(scorer, traj, args.steps)
        print(name, report["within_prompt_auroc"][name], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
