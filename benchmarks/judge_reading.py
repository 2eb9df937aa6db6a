"""What the latent judge should read in the middle of sampling, chosen on TRAIN prompts: z_t with its timestep, or the
generator's own x0 prediction at that step (free: the sampler computes it). The evidence for `shapes-judge`'s
`space` setting (docs/judges.md).

The judge's kept-aside train prompts (train prompts `latentalign train judge` set aside and never trained on), 16
fresh seeds each, plain generation: the within-prompt AUROC of the judge per step on z_t and on the x0 prediction,
and Best-of-8 (two groups of 8 seeds a prompt) picked by the judge on the final latents or on the mean of its scores
of the last x0 predictions. One row a prompt, appended as it finishes (an interrupted run resumes).

python benchmarks/judge_reading.py --out benchmarks/results/judge_reading_train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentalign import load_pipeline
from latentalign.bench import read_rows, wilson_interval
from latentalign.files import atomic_write_text
from latentalign.scorers import load_scorer
from latentalign.scorers.factory import scorer_folder
from latentalign.training.judge import within_prompt_auroc
from latentalign.trajectories import record_trajectories
from latentalign.world import check

SEED_BASE = 70_000_000  # fresh seeds: the judge's recordings used others
SEEDS = 16
GROUP = 8  # Best-of-8: seeds [0, 8) and [8, 16) of each prompt
LAST = (1, 2, 4, 8)  # Best-of-N picks by the mean judge score of the final latents and the last k x0 predictions


@torch.no_grad()
def prompt_row(pipe, judge, prompt: str) -> dict:
    seeds = [SEED_BASE + i for i in range(SEEDS)]
    traj = record_trajectories(pipe, [prompt] * SEEDS, seeds, batch=SEEDS, progress=False)
    steps = traj.latents.shape[1]
    t = traj.timesteps.float().repeat(SEEDS)
    noisy = judge.reading("noisy_latents")
    clean = judge.reading("latents")
    z = noisy.score(traj.latents.flatten(0, 1), prompt, t).view(SEEDS, steps)
    x0 = clean.score(traj.x0.flatten(0, 1), prompt).view(SEEDS, steps)
    final = clean.score(traj.final, prompt)
    rnd = lambda v: v.round(decimals=4).tolist()  # noqa: E731
    return {
        "prompt": prompt,
        "ok": [check(im, prompt).ok for im in traj.images],
        "z_steps": rnd(z),
        "x0_steps": rnd(x0),
        "final": rnd(final),
    }


def best_of_group(rows: list[dict], pick) -> list[float]:
    """Accuracy of the candidate `pick(row, indices)` chooses, for every group of GROUP seeds."""
    out = []
    for r in rows:
        for g in range(0, SEEDS, GROUP):
            idx = list(range(g, g + GROUP))
            out.append(float(r["ok"][pick(r, idx)]))
    return out


def summarise(rows: list[dict], judge: str) -> dict:
    labels = [float(v) for r in rows for v in r["ok"]]
    groups = [r["prompt"] for r in rows for _ in r["ok"]]
    steps = len(rows[0]["z_steps"][0])

    def curve(field: str) -> list[float | None]:
        return [within_prompt_auroc([v[s] for r in rows for v in r[field]], labels, groups) for s in range(steps)]

    picks = {
        "first sample (plain)": lambda r, idx: idx[0],
        "oracle": lambda r, idx: next((i for i in idx if r["ok"][i]), idx[0]),
        "judge on the final latents": lambda r, idx: max(idx, key=lambda i: r["final"][i]),
    }
    for k in LAST[1:]:
        picks[f"judge, mean of the final latents and the last {k - 1} x0 predictions"] = lambda r, idx, k=k: max(
            idx, key=lambda i: r["final"][i] + sum(r["x0_steps"][i][-(k - 1) :])
        )
    best = {}
    for name, pick in picks.items():
        acc = best_of_group(rows, pick)
        best[name] = {
            "accuracy": round(float(np.mean(acc)), 4),
            "ci95": list(wilson_interval(round(sum(acc)), len(acc))),
        }
    return {
        "split": "train (the judge's kept-aside prompts)",
        "judge": judge,
        "prompts": len(rows),
        "samples": len(labels),
        "accepted_share": round(float(np.mean(labels)), 4),
        "seeds": f"{SEED_BASE} + [0, {SEEDS})",
        "auroc_per_step": {"judge on z_t": curve("z_steps"), "judge on the x0 prediction": curve("x0_steps")},
        "auroc_final": within_prompt_auroc([v for r in rows for v in r["final"]], labels, groups),
        "best_of_8": best,
    }


def write_report(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["auroc_per_step"]
    steps = len(next(iter(curves.values())))
    lines = [
        f"{result['split']}: {result['prompts']} prompts x {SEEDS} seeds ({result['seeds']}), {result['samples']} "
        f"samples, {result['accepted_share']:.3f} accepted by the checker. Judge: {result['judge']}.",
        "",
        "## Within-prompt AUROC after s steps (z_t after s steps; the x0 prediction the (s+1)-th evaluation made "
        "from it)",
        "",
        "| judge reads | " + " | ".join(f"s={s}" for s in range(0, steps, 2)) + " | final |",
        "|---|" + "---:|" * (len(range(0, steps, 2)) + 1),
    ]
    for name, curve in curves.items():
        cells = " | ".join(f"{curve[s]:.3f}" for s in range(0, steps, 2))
        lines.append(f"| {name} | {cells} | {result['auroc_final']:.3f} |")
    lines += ["", "## Best-of-8 (two groups of 8 seeds a prompt)", "", "| pick | accuracy | 95% CI |", "|---|---:|---|"]
    for name, e in result["best_of_8"].items():
        lines.append(f"| {name} | {e['accuracy']:.3f} | [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "table.json", json.dumps(result, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(range(steps), curve, marker="o", ms=3, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("steps done (of 20)")
    ax.set_ylabel("within-prompt AUROC")
    ax.set_title("shapes-judge on kept-aside TRAIN prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="shapes-judge", help="a shipped name or a saved folder")
    ap.add_argument("--out", default="benchmarks/results/judge_reading_train")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = json.loads((scorer_folder(args.judge) / "training.json").read_text())["kept_aside_prompts"]
    pipe = load_pipeline("shapes")
    judge = load_scorer(args.judge)
    path = out / "rows.jsonl"
    done = {r["prompt"] for r in read_rows(path)} if path.exists() else set()
    with path.open("a") as f:
        for prompt in tqdm([p for p in prompts if p not in done], desc="kept-aside train prompts"):
            f.write(json.dumps(prompt_row(pipe, judge, prompt)) + "\n")
            f.flush()
    rows = {r["prompt"]: r for r in read_rows(path)}
    write_report(out, summarise([rows[p] for p in prompts], args.judge))


if __name__ == "__main__":
    main()
