"""Misalignment detection during denoising (NoisyCLIP's central figure), on HELD-OUT prompts only.

Generates candidates with plain generation, labels each with the exact checker, and at every denoising step
measures how well each scorer separates aligned from misaligned candidates (AUROC):
pixel CLIP on the decoded x0 prediction, Latent-CLIP on the x0 prediction, NoisyCLIP on z_t.

python benchmarks/detection_study.py   # writes benchmarks/results/detection/{table.md,table.json,auroc.png}
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.bench import auroc  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.trajectories import record_trajectories  # noqa: E402
from latentalign.world import SUITE_NAMES, check, suite  # noqa: E402

SCORERS = {  # name -> (scorer, what it reads)
    "pixel CLIP on decoded x0": ("shapes-pixel", "decoded_x0"),
    "Latent-CLIP on x0": ("shapes-latent", "x0"),
    "NoisyCLIP on z_t": ("shapes-noisy", "z_t"),
    "Latent-CLIP on z_t": ("shapes-latent", "z_t"),
}


@torch.no_grad()
def score_all(scorer, reads: str, traj, step: int | None, prompts: list[str], batch: int = 256) -> np.ndarray:
    """One scorer at one step (None: the final latents) over every candidate."""
    out = []
    for i in range(0, len(prompts), batch):
        sl = slice(i, i + batch)
        if step is None:
            z = traj.final[sl]
            x, t = z, torch.zeros(z.shape[0], dtype=torch.long)
        else:
            x = traj.x0[sl, step] if reads in ("x0", "decoded_x0") else traj.latents[sl, step]
            t = traj.timesteps[step].long().expand(x.shape[0])
        if reads == "decoded_x0":
            out.append(scorer.score(scorer.decode(x), prompts[sl]))
        elif scorer.space == "noisy_latents":
            out.append(scorer.score(x, prompts[sl], t))
        else:
            out.append(scorer.score(x, prompts[sl]))
    return torch.cat(out).float().numpy()


def heldout_candidates(prompts_per_suite: int, seeds_per_prompt: int) -> tuple[list[str], list[int], list[str]]:
    """The study's candidates: up to `prompts_per_suite` held-out prompts of each suite (a fixed shuffle), each with
    seeds 0 .. seeds_per_prompt - 1; returns (prompts, seeds, suite names), one entry per candidate."""
    prompts, seeds, suites = [], [], []
    for name in SUITE_NAMES:
        chosen = suite(name, "heldout")
        random.Random(0).shuffle(chosen)
        for p in chosen[:prompts_per_suite]:
            prompts += [p] * seeds_per_prompt
            seeds += list(range(seeds_per_prompt))
            suites += [name] * seeds_per_prompt
    return prompts, seeds, suites


def within_prompt_auroc(scores: np.ndarray, labels: np.ndarray, prompts: list[str]) -> float:
    """Mean AUROC over prompts that have both aligned and misaligned candidates (the Best-of-N view)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    values = [auroc(scores[ix], labels[ix]) for ix in groups.values() if 0 < labels[ix].sum() < len(ix)]
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts-per-suite", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/detection")
    ap.add_argument("--noisy", default="shapes-noisy", help="the NoisyCLIP scorer: a shipped name or a saved folder")
    ap.add_argument("--latent", default="shapes-latent", help="the Latent-CLIP scorer: a shipped name or a folder")
    ap.add_argument("--pixel", default="shapes-pixel", help="the pixel CLIP scorer: a shipped name or a folder")
    ap.add_argument(
        "--model", default="shapes", help="the generator (for 'shapes-one-step', read the final column: the rewards)"
    )
    ap.add_argument("--report-only", action="store_true", help="redraw table.md and auroc.png from table.json")
    args = ap.parse_args()
    if args.report_only:
        write_report(Path(args.out), json.loads((Path(args.out) / "table.json").read_text()))
        return
    torch.manual_seed(0)
    pipe = load_pipeline(args.model)
    chosen = {"shapes-noisy": args.noisy, "shapes-latent": args.latent, "shapes-pixel": args.pixel}
    keys = {name: chosen[key] for name, (key, _) in SCORERS.items()}
    scorers = {name: load_scorer(key, vae=pipe.vae) for name, key in keys.items()}
    prompts, seeds, suites = heldout_candidates(args.prompts_per_suite, args.seeds)
    traj = record_trajectories(pipe, prompts, seeds)
    labels = np.array([check(im, p).ok for im, p in zip(traj.images, prompts, strict=True)])
    steps = traj.latents.shape[1]
    print(f"{len(prompts)} candidates, {labels.mean():.3f} aligned, {steps} steps")

    table: dict[str, dict] = {}
    for name, (_, reads) in SCORERS.items():
        per_step = [score_all(scorers[name], reads, traj, s, prompts) for s in range(steps)]
        final = score_all(scorers[name], reads if reads != "z_t" else "x0", traj, None, prompts)
        table[name] = {
            "auroc": [round(auroc(s, labels), 4) for s in per_step],
            "within_prompt_auroc": [round(within_prompt_auroc(s, labels, prompts), 4) for s in per_step],
            "final_auroc": round(auroc(final, labels), 4),
            "final_within_prompt_auroc": round(within_prompt_auroc(final, labels, prompts), 4),
        }
        print(name, table[name]["auroc"], "final", table[name]["final_auroc"])

    summary = {
        "noisy_scorer": args.noisy,
        "latent_scorer": args.latent,
        "pixel_scorer": args.pixel,
        "model": args.model,
        "candidates": len(prompts),
        "aligned_share": round(float(labels.mean()), 4),
        "per_suite_aligned": {n: round(float(labels[np.array(suites) == n].mean()), 4) for n in SUITE_NAMES},
        "steps": steps,
        "scorers": table,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_report(out, summary)


def target(summary: dict, key: str) -> dict:
    """When NoisyCLIP on z_t first reaches 0.9 of the final pixel-CLIP AUROC (`key`: pooled or within prompt)."""
    steps = summary["steps"]
    reference = summary["scorers"]["pixel CLIP on decoded x0"][f"final_{key}"]
    noisy = summary["scorers"]["NoisyCLIP on z_t"][key]
    by = int(np.ceil(0.4 * steps))  # z_t at step s has seen s denoising steps
    reached = next((s for s, a in enumerate(noisy) if a >= 0.9 * reference), None)
    return {"reference": reference, "reached_at": reached, "by": by, "met": reached is not None and reached <= by}


def write_report(out: Path, summary: dict) -> None:
    steps, table = summary["steps"], summary["scorers"]
    lines = [
        f"{summary['candidates']} held-out candidates ({summary['aligned_share']:.1%} aligned by the exact checker; "
        f"per suite {json.dumps(summary['per_suite_aligned'])}), {steps} DDIM steps.",
        "AUROC of aligned vs misaligned at the start of step s (after s steps): pooled over all candidates / mean "
        "within prompt (over prompts with both kinds; the Best-of-N view).",
        "",
        "| scorer | " + " | ".join(f"s={s}" for s in range(0, steps, 2)) + " | final |",
        "|---|" + "---:|" * (len(range(0, steps, 2)) + 1),
    ]
    for name, row in table.items():
        cells = [f"{row['auroc'][s]:.3f} / {row['within_prompt_auroc'][s]:.3f}" for s in range(0, steps, 2)]
        final = f"{row['final_auroc']:.3f} / {row['final_within_prompt_auroc']:.3f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {final} |")
    lines.append("")
    for key, label in (("auroc", "pooled"), ("within_prompt_auroc", "within prompt")):
        t = target(summary, key)
        lines.append(
            f"- {label}: final pixel CLIP {t['reference']:.3f}, 0.9 of it {0.9 * t['reference']:.3f}; NoisyCLIP "
            f"reaches it at step {t['reached_at']} (target: by step {t['by']} of {steps}): "
            f"{'met' if t['met'] else 'NOT met'}."
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    frac = np.arange(steps) / steps
    for ax, (key, label) in zip(axes, (("auroc", "pooled"), ("within_prompt_auroc", "within prompt")), strict=True):
        for name, row in table.items():
            ax.plot(frac, row[key], marker="o", ms=3, label=name)
        reference = table["pixel CLIP on decoded x0"][f"final_{key}"]
        ax.axhline(reference, color="k", ls=":", lw=1, label="pixel CLIP, final image")
        ax.axhline(0.9 * reference, color="grey", ls="--", lw=1, label="0.9 x that")
        ax.axvline(0.4, color="grey", lw=0.8)
        ax.set_title(f"AUROC, {label}")
        ax.set_xlabel("fraction of denoising steps done")
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUROC aligned vs misaligned (held-out)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=120)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
