"""Attention refinement (Attend-and-Excite with refine steps) against plain sampling and Best-of-N at about the same
compute, on the Shapes suites where objects go missing or wrong (two objects, relation).

Step sizes are swept on TRAIN prompts (`--split train --step-sizes ...`); the held-out run uses the one chosen there.
Each (method, prompt, seed) row is appended to rows.jsonl as it finishes, so an interrupted run resumes. Compute is
reported as denoiser evaluations and wall seconds per image, both measured in this run.

python benchmarks/attention_refinement.py --split train --per-suite 16 --seeds 2 --step-sizes 5 20 80 \
    --out benchmarks/results/attention_refinement_train
python benchmarks/attention_refinement.py --split train --per-suite 16 --seeds 2 --step-sizes 0.5 1 2 \
    --out benchmarks/results/attention_refinement_train_small
python benchmarks/attention_refinement.py --per-suite 40 --seeds 3 --step-sizes 1 --best-of 2 8 \
    --out benchmarks/results/attention_refinement     # step size 1: the best on train prompts
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import generate, load_pipeline  # noqa: E402
from latentalign.bench import accuracy_cells, claim_run_folder, method_summary, plan, read_rows  # noqa: E402
from latentalign.methods import AttentionRefinement  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.world import check  # noqa: E402

SUITES = ("two_objects", "relation")


def run_one(pipe, method: str, prompt: str, seed: int, scorer) -> tuple[bool, int, float]:
    """(the checker's verdict, denoiser evaluations, wall seconds) of one image."""
    start = time.perf_counter()
    if method == "plain":
        result = generate(pipe, prompt, seed=seed)
    elif method.startswith("best-of-"):
        n = int(method.split()[0].removeprefix("best-of-"))
        result = generate(pipe, prompt, seed=seed, method="best-of-n", n=n, scorer=scorer)
    else:
        step_size = float(method.split("=")[1])
        result = generate(pipe, prompt, seed=seed, method=AttentionRefinement(step_size=step_size))
    seconds = time.perf_counter() - start
    return check(result.images[0], prompt).ok, result.cost.denoiser_evals, seconds


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    mine = {m: [r for r in rows if r["method"] == m] for m in methods}
    return [{"method": m, **method_summary(mine[m], SUITES)} for m in methods if mine[m]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("train", "heldout"), default="heldout")
    ap.add_argument("--per-suite", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--step-sizes", type=float, nargs="+", default=[20.0], help="Attend-and-Excite step sizes")
    ap.add_argument("--best-of", type=int, nargs="*", default=[], help="also Best-of-N with pixel CLIP at these N")
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--out", default="benchmarks/results/attention_refinement")
    args = ap.parse_args()
    if any(n < 1 for n in args.best_of) or any(s < 0 for s in args.step_sizes):
        ap.error("--best-of must be >= 1 and --step-sizes >= 0")
    jobs = plan(list(SUITES), args.seeds, split=args.split, limit_prompts=args.per_suite)
    methods = ["plain", *(f"attend-and-excite step={s:g}" for s in args.step_sizes)]
    methods += [f"best-of-{n} pixel CLIP" for n in args.best_of]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out = claim_run_folder(args.out, settings)

    pipe = load_pipeline(args.model)
    scorer = load_scorer("shapes-pixel", vae=pipe.vae) if args.best_of else None
    rows_path = out / "rows.jsonl"
    rows = read_rows(rows_path)
    done = {(r["method"], r["prompt"], r["seed"]) for r in rows}
    todo = [(m, *job) for m in methods for job in jobs if (m, job[1], job[2]) not in done]
    for method, suite_name, prompt, seed in tqdm(todo, desc="attention refinement"):
        ok, evals, seconds = run_one(pipe, method, prompt, seed, scorer)
        row = {"method": method, "suite": suite_name, "prompt": prompt, "seed": seed, "ok": ok, "evals": evals}
        row["seconds"] = round(seconds, 4)
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)

    table = summarise(rows, methods)
    (out / "table.json").write_text(json.dumps({"settings": settings, "table": table}, indent=1) + "\n")
    lines = [
        f"{args.split} split, suites {', '.join(SUITES)}: {args.per_suite} prompts each x {args.seeds} seeds "
        f"(`{args.model}`). Accuracy by the exact checker; compute per image measured in this run.",
        "",
        "| method | accuracy | 95% CI | " + " | ".join(SUITES) + " | denoiser evals | seconds |",
        "|---|---:|---|" + "---:|" * len(SUITES) + "---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {accuracy_cells(r, SUITES)} | {r['denoiser_evals']:.1f} | {r['seconds']:.2f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(out / "compute.png", table, args.split)
    print("\n".join(lines))


def plot(path: Path, table: list[dict], split: str) -> None:
    """Accuracy (with its 95% CI) against denoiser evaluations and against wall time per image."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in zip(
        axes, ("denoiser_evals", "seconds"), ("denoiser evaluations / image", "seconds / image"), strict=True
    ):
        for r in table:
            err = [[r["accuracy"] - r["ci95"][0]], [r["ci95"][1] - r["accuracy"]]]
            ax.errorbar(r[key], r["accuracy"], yerr=err, fmt="o", capsize=3, label=r["method"])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy by the exact checker ({split})")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
