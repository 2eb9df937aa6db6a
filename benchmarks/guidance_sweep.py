"""Choose the Shapes pipeline's default guidance scale on TRAIN-split prompts (never on held-out ones).

python benchmarks/guidance_sweep.py            # writes benchmarks/results/guidance_sweep/{table.md,plot.png}
python benchmarks/guidance_sweep.py --rejudge  # after a checker change: judge the saved images again
python benchmarks/guidance_sweep.py --model runs/world/pipeline --out runs/sweep  # a pipeline not shipped yet
python benchmarks/guidance_sweep.py --model runs/flow/pipeline --steps 10 20 --shifts 1 3 --scales 1.5 3 5 \
    --limit-prompts 12 --seeds 2 --out benchmarks/results/flow_sweep  # flow matching: steps x shift x guidance
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.bench import run_bench  # noqa: E402
from latentalign.world import SUITE_NAMES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 7.5])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--limit-prompts", type=int, default=24)
    ap.add_argument("--out", default="benchmarks/results/guidance_sweep")
    ap.add_argument("--rejudge", action="store_true", help="check saved images again (after a checker change)")
    ap.add_argument("--model", default="shapes", help="'shapes' (the shipped pipeline) or a pipeline folder")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="step counts to sweep (default: the pipeline's)")
    ap.add_argument("--shifts", type=float, nargs="+", default=None, help="flow-matching schedule shifts to sweep")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    original = pipe.scheduler
    out = Path(args.out)
    table = {}  # (steps, shift, scale) -> per-suite summary
    for steps in args.steps or [None]:
        for shift in args.shifts or [None]:
            if shift is not None:  # FlowMatchEulerDiscreteScheduler's `shift`; the folder's own otherwise
                pipe.scheduler = type(original).from_config({**original.config, "shift": shift})
            for scale in args.scales:
                name = "".join([f"s{steps}_" if steps else "", f"sh{shift}_" if shift else "", f"g{scale}"])
                summary = run_bench(
                    pipe,
                    ["all"],
                    args.seeds,
                    split="train",
                    limit_prompts=args.limit_prompts,
                    out=out / name,
                    steps=steps,
                    guidance=scale,
                    rejudge=args.rejudge,
                )
                table[(steps, shift, scale)] = {c["suite"]: c for c in summary["categories"]}
    pipe.scheduler = original
    keys = ["steps"] * bool(args.steps) + ["shift"] * bool(args.shifts) + ["guidance"]
    lines = ["| " + " | ".join(keys + [*SUITE_NAMES, "all"]) + " |", "|---:" * len(keys) + "|" + "---:|" * 5]
    for (steps, shift, scale), cats in table.items():
        head = [str(steps)] * bool(args.steps) + [str(shift)] * bool(args.shifts) + [str(scale)]
        cells = [f"{cats[s]['accuracy']:.3f} (n={cats[s]['n']})" for s in [*SUITE_NAMES, "all"]]
        lines.append("| " + " | ".join(head + cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    flat = {"_".join(str(x) for x in k if x is not None): v for k, v in table.items()}
    (out / "table.json").write_text(json.dumps(flat, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = (
        [(s, None, None) for s in [*SUITE_NAMES, "all"]]
        if len({k[:2] for k in table}) == 1
        else [("all", steps, shift) for steps, shift in dict.fromkeys(k[:2] for k in table)]
    )
    for s, steps, shift in curves:
        pick = [(k[2], v[s]) for k, v in table.items() if steps is None or k[:2] == (steps, shift)]
        scales, cats = [x for x, _ in pick], [c for _, c in pick]
        acc = [c["accuracy"] for c in cats]
        lo = [max(0.0, c["accuracy"] - c["ci95"][0]) for c in cats]
        hi = [max(0.0, c["ci95"][1] - c["accuracy"]) for c in cats]  # float noise at 0 or 1
        label = s if steps is None and shift is None else f"all, {steps} steps, shift {shift}"
        ax.errorbar(scales, acc, yerr=[lo, hi], marker="o", capsize=3, label=label, lw=2 if s == "all" else 1)
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel("checker accuracy (train-split prompts)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
