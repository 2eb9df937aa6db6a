"""Fidelity of a noise reward model on HELD-OUT prompts, as the noise-projection paper checks its reward model:
how well R(noise, prompt)'s per-word probabilities match the checker's word verdicts on the image plain generation
makes from that noise (per-word AUROC and Pearson correlation, by word role), and the within-prompt AUROC of R's
image log-odds. Reported once; nothing is chosen on it.

    python benchmarks/noise_reward_fidelity.py --model shapes-one-step \
        --reward runs/noise_reward_one_step/noise_reward \
        --out benchmarks/results/noise_projection_paper/fidelity_one_step.json

Seeds from 45_000_000 on (used by no other run); the recorded feedback is cached in --data (resumable).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from latentalign.pipeline import load_pipeline
from latentalign.scorers.noise_reward import load_noise_reward
from latentalign.training.noise_reward import fidelity, record_feedback
from latentalign.world.dataset import sample_prompts

SEED_BASE = 45_000_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--reward", required=True, help="a noise reward folder (latentalign train noise-reward)")
    ap.add_argument("--prompts", type=int, default=128, help="held-out prompts (the train category mix)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--data", default=None, help="cache of the recorded feedback (default: beside --out)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reward = load_noise_reward(args.reward)
    pipe = load_pipeline(args.model)
    prompts = sample_prompts(args.prompts, random.Random(45), split="heldout", weights=[0.05, 0.35, 0.35, 0.25])
    out = Path(args.out)
    data_dir = Path(args.data) if args.data else out.with_suffix("") / "data"
    start = time.time()
    data = record_feedback(pipe, reward, prompts, args.seeds, data_dir, seed_base=SEED_BASE, desc="held-out feedback")
    report = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "reward": args.reward,
        "split": "heldout",
        "prompts": len(set(prompts)),
        "seeds_per_prompt": args.seeds,
        "seed_base": SEED_BASE,
        "preview_steps": reward.preview_steps,
        "fidelity": fidelity(reward, data),
        "seconds": round(time.time() - start, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    print(json.dumps(report["fidelity"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
