"""How much of the early detection signal needs the prompt inside the denoiser: an upper-bound check for NoisyCLIP.

NoisyCLIP's image tower reads z_t and t but never the prompt, while the free alternative (Latent-CLIP on the x0
prediction) reads what the prompt-CONDITIONED denoiser makes of z_t. This study takes the detection study's
held-out candidates and, at every step, scores (with one Latent-CLIP, against each candidate's own prompt) three
readings of the same z_t:
- own prompt: the guided x0 prediction the pipeline itself made (the detection study's Latent-CLIP row);
- unconditional: the x0 prediction with the empty prompt, unguided (a function of z_t and t alone, like NoisyCLIP);
- another prompt: the guided x0 prediction under a different held-out prompt of the same suite.
The within-prompt AUROC of each, and the cosine between the Latent-CLIP image features of the own-prompt and the
other two readings, say how much of what the pipeline's x0 prediction knows about the final outcome is there in
z_t without the prompt. It proves no bound for every prompt-free model, but a NoisyCLIP that beats the
unconditional reading must do the conditional denoiser's work for every prompt in one embedding.

python benchmarks/prompt_dependence.py --out benchmarks/results/prompt_dependence
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.adapters import Denoiser  # noqa: E402
from latentalign.generation import sampling_defaults  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.trajectories import record_trajectories  # noqa: E402
from latentalign.world import check  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from detection_study import heldout_candidates, within_prompt_auroc  # noqa: E402

READINGS = ("own prompt", "unconditional", "another prompt")


def other_prompts(prompts: list[str], suites: list[str]) -> list[str]:
    """For each candidate, the next distinct prompt of its suite (cyclic): same grammar, different content."""
    by_suite: dict[str, list[str]] = {}
    for p, s in zip(prompts, suites, strict=True):
        if p not in by_suite.setdefault(s, []):
            by_suite[s].append(p)
    out = []
    for p, s in zip(prompts, suites, strict=True):
        pool = by_suite[s]
        if len(pool) < 2:
            raise ValueError(f"suite {s} needs two prompts for the 'another prompt' reading")
        out.append(pool[(pool.index(p) + 1) % len(pool)])
    return out


@torch.no_grad()
def readings(pipe, scorer, traj, others: list[str], batch: int = 64) -> dict[str, np.ndarray]:
    """Scores (candidates, steps) of each reading, and the feature cosines of the other two with the own one."""
    steps = traj.latents.shape[1]
    scale = sampling_defaults(pipe).guidance_scale
    den = Denoiser(pipe)
    sched = den.new_scheduler(steps)
    n = len(traj.prompts)
    scores = {r: np.zeros((n, steps)) for r in READINGS}
    cosines = {r: np.zeros((n, steps)) for r in READINGS[1:]}
    for i in tqdm(range(0, n, batch), desc="readings"):
        sl = slice(i, i + batch)
        own_prompts = traj.prompts[sl]
        uncond = den.encode([""] * len(own_prompts), 1.0)
        other = den.encode(others[sl], scale)
        text = scorer.embed_text(own_prompts)
        for s in range(steps):
            t = sched.timesteps[s]
            z = sched.scale_model_input(traj.latents[sl, s], t)
            x0 = {
                "own prompt": traj.x0[sl, s],
                "unconditional": den.denoise(z, t, uncond)[1],
                "another prompt": den.denoise(z, t, other)[1],
            }
            feats = {r: scorer.embed_images(x) for r, x in x0.items()}
            for r, f in feats.items():
                scores[r][sl, s] = (f * text).sum(-1).float().numpy()
                if r != "own prompt":
                    cosines[r][sl, s] = (f * feats["own prompt"]).sum(-1).float().numpy()
    return scores, cosines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts-per-suite", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--latent", default="shapes-latent-distilled", help="the Latent-CLIP: a shipped name or folder")
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--out", default="benchmarks/results/prompt_dependence")
    args = ap.parse_args()
    torch.manual_seed(0)
    pipe = load_pipeline(args.model)
    scorer = load_scorer(args.latent, vae=pipe.vae)
    if scorer.space != "latents":
        raise SystemExit(f"--latent must name a Latent-CLIP (reads clean latents), {args.latent} reads {scorer.space}")
    prompts, seeds, suites = heldout_candidates(args.prompts_per_suite, args.seeds)
    others = other_prompts(prompts, suites)
    traj = record_trajectories(pipe, prompts, seeds)
    labels = np.array([check(im, p).ok for im, p in zip(traj.images, prompts, strict=True)])
    scores, cosines = readings(pipe, scorer, traj, others)
    steps = traj.latents.shape[1]
    summary = {
        "model": args.model,
        "latent_scorer": args.latent,
        "candidates": len(prompts),
        "aligned_share": round(float(labels.mean()), 4),
        "steps": steps,
        "within_prompt_auroc": {
            r: [round(within_prompt_auroc(scores[r][:, s], labels, prompts), 4) for s in range(steps)] for r in READINGS
        },
        "feature_cosine_with_own": {
            r: [round(float(c[:, s].mean()), 4) for s in range(steps)] for r, c in cosines.items()
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_report(out, summary)


def write_report(out: Path, summary: dict) -> None:
    steps = summary["steps"]
    cols = range(0, steps, 2)
    lines = [
        f"{summary['candidates']} held-out candidates of `{summary['model']}` "
        f"({summary['aligned_share']:.1%} aligned), {steps} steps; every reading scored by "
        f"`{summary['latent_scorer']}` against the candidate's own prompt.",
        "",
        "Within-prompt AUROC at the start of step s:",
        "",
        "| x0 prediction of z_t under | " + " | ".join(f"s={s}" for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r, row in summary["within_prompt_auroc"].items():
        lines.append(f"| {r} | " + " | ".join(f"{row[s]:.3f}" for s in cols) + " |")
    lines += [
        "",
        "Mean cosine between the Latent-CLIP image features of that reading and of the own-prompt reading:",
        "",
        "| reading | " + " | ".join(f"s={s}" for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r, row in summary["feature_cosine_with_own"].items():
        lines.append(f"| {r} | " + " | ".join(f"{row[s]:.3f}" for s in cols) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    frac = np.arange(steps) / steps
    for r, row in summary["within_prompt_auroc"].items():
        axes[0].plot(frac, row, marker="o", ms=3, label=r)
    for r, row in summary["feature_cosine_with_own"].items():
        axes[1].plot(frac, row, marker="o", ms=3, label=r)
    axes[0].set_title("within-prompt AUROC of Latent-CLIP on the x0 prediction")
    axes[1].set_title("feature cosine with the own-prompt reading")
    for ax in axes:
        ax.axvline(0.4, color="grey", lw=0.8)
        ax.set_xlabel("fraction of denoising steps done")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "readings.png", dpi=120)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
