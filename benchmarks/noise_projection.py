"""Noise projection against plain sampling (and Best-of-N with pixel CLIP) on the compositional Shapes suites, on
the one-step pipeline the projector was trained through and on the 20-step pipeline it was distilled from.

A projector is chosen on TRAIN prompts (`--split train`); held-out prompts report it. Each (model, method, prompt,
seed) row is appended to rows.jsonl as it finishes, so an interrupted run resumes. Compute per image (denoiser
evaluations, projector calls, wall seconds) is measured in this run.

python benchmarks/noise_projection.py --projector runs/projector/projector --split train --per-suite 40 --seeds 2 \
    --out runs/projector_train
python benchmarks/noise_projection.py --projector shapes-projector --per-suite 40 --seeds 4 --best-of 2 \
    --out benchmarks/results/noise_projection
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import generate, load_pipeline  # noqa: E402
from latentalign.bench import accuracy_cells, claim_run_folder, method_summary, plan, read_rows  # noqa: E402
from latentalign.methods import NoiseProjection, load_projector  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.world import check  # noqa: E402

SUITES = ("two_objects", "relation", "counting")


def run_one(pipe, method: str, prompt: str, seed: int, projector, scorer) -> dict:
    start = time.perf_counter()
    if method == "plain":
        result = generate(pipe, prompt, seed=seed)
    elif method == "noise projection":
        result = generate(pipe, prompt, seed=seed, method=NoiseProjection(projector=projector))
    else:
        n = int(method.split()[0].removeprefix("best-of-"))
        result = generate(pipe, prompt, seed=seed, method="best-of-n", n=n, scorer=scorer)
    seconds = time.perf_counter() - start
    cost = result.cost
    return {
        "ok": check(result.images[0], prompt).ok,
        "evals": cost.denoiser_evals,
        "projector_calls": cost.projector_calls,
        "seconds": round(seconds, 4),
    }


def summarise(rows: list[dict], models: list[str], methods: list[str]) -> list[dict]:
    table = []
    for model in models:
        for m in methods:
            mine = [r for r in rows if r["method"] == m and r["model"] == model]
            if mine:
                calls = sum(r["projector_calls"] for r in mine) / len(mine)
                table.append({"model": model, "method": m, **method_summary(mine, SUITES), "projector_calls": calls})
    return table


def paired(rows: list[dict], model: str, a: str, b: str) -> dict:
    """Per (prompt, seed): how often method b is right where a is wrong, and the reverse (same noise seed)."""
    by = {(r["method"], r["prompt"], r["seed"]): r["ok"] for r in rows if r["model"] == model}
    keys = [(p, s) for (m, p, s) in by if m == a and (b, p, s) in by]
    gains = sum(by[(b, *k)] and not by[(a, *k)] for k in keys)
    losses = sum(by[(a, *k)] and not by[(b, *k)] for k in keys)
    return {"pairs": len(keys), "fixed": int(gains), "broken": int(losses)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projector", required=True, help="a projector folder or shipped name")
    ap.add_argument("--models", nargs="+", default=["shapes-one-step", "shapes"])
    ap.add_argument("--split", choices=("train", "heldout"), default="heldout")
    ap.add_argument("--per-suite", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--best-of", type=int, nargs="*", default=[], help="also Best-of-N with pixel CLIP at these N")
    ap.add_argument("--out", default="benchmarks/results/noise_projection")
    args = ap.parse_args()
    if any(n < 1 for n in args.best_of):
        ap.error("--best-of must be >= 1")
    jobs = plan(list(SUITES), args.seeds, split=args.split, limit_prompts=args.per_suite)
    projector = load_projector(args.projector)  # refuses a bad folder before any work
    methods = ["plain", "noise projection", *(f"best-of-{n} pixel CLIP" for n in args.best_of)]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out = claim_run_folder(args.out, settings)

    rows_path = out / "rows.jsonl"
    rows = read_rows(rows_path)
    done = {(r["model"], r["method"], r["prompt"], r["seed"]) for r in rows}
    for model in args.models:
        # methods interleaved per prompt and seed, so a drift in machine speed does not favour one method's timing
        todo = [(m, *job) for job in jobs for m in methods if (model, m, job[1], job[2]) not in done]
        if not todo:
            continue
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        scorer = load_scorer("shapes-pixel", vae=pipe.vae) if args.best_of else None
        for method, suite_name, prompt, seed in tqdm(todo, desc=f"noise projection on {model}"):
            row = {"model": model, "method": method, "suite": suite_name, "prompt": prompt, "seed": seed}
            row.update(run_one(pipe, method, prompt, seed, projector, scorer))
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)

    table = summarise(rows, args.models, methods)
    pairs = {m: paired(rows, m, "plain", "noise projection") for m in args.models}
    report = {"settings": settings, "table": table, "plain_vs_projection": pairs}
    (out / "table.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"{args.split} split, suites {', '.join(SUITES)}: up to {args.per_suite} prompts each x {args.seeds} seeds; "
        f"projector `{args.projector}`. Accuracy by the exact checker; compute per image measured in this run "
        "(seconds: the median).",
        "",
        "| model | method | accuracy | 95% CI | " + " | ".join(SUITES) + " | denoiser evals | projector | seconds |",
        "|---|---|---:|---|" + "---:|" * len(SUITES) + "---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['model']} | {r['method']} | {accuracy_cells(r, SUITES)} | {r['denoiser_evals']:.1f} | "
            f"{r['projector_calls']:.0f} | {r['median_seconds']:.3f} |"
        )
    lines += ["", "Same prompt and seed, plain -> projection: " + json.dumps(pairs)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(out / "accuracy.png", table, args.split)
    print("\n".join(lines))


def plot(path: Path, table: list[dict], split: str) -> None:
    """Accuracy with its 95% CI, per model and method, against wall seconds per image."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in table:
        err = [[r["accuracy"] - r["ci95"][0]], [r["ci95"][1] - r["accuracy"]]]
        marker = "o" if r["model"] == "shapes" else "s"
        ax.errorbar(
            r["median_seconds"], r["accuracy"], yerr=err, fmt=marker, capsize=3, label=f"{r['model']}: {r['method']}"
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("seconds / image (median, this run)")
    ax.set_ylabel(f"accuracy by the exact checker ({split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
