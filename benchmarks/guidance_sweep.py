"""Choose the Shapes pipeline's default guidance scale on TRAIN-split prompts (never on held-out ones).

python benchmarks/guidance_sweep.py            # writes benchmarks/results/guidance_sweep/{table.md,plot.png}
python benchmarks/guidance_sweep.py --rejudge  # after a checker change: judge the saved images again
python benchmarks/guidance_sweep.py --model runs/world/pipeline --out runs/sweep  # a pipeline not shipped yet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

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
    args = ap.parse_args()
    pipe = load_pipeline(args.model)
    out = Path(args.out)
    table = {}
    for scale in args.scales:
        summary = run_bench(
            pipe,
            ["all"],
            args.seeds,
            split="train",
            limit_prompts=args.limit_prompts,
            out=out / f"g{scale}",
            guidance=scale,
            rejudge=args.rejudge,
        )
        table[scale] = {c["suite"]: c for c in summary["categories"]}
    lines = ["| guidance | " + " | ".join([*SUITE_NAMES, "all"]) + " |", "|---:|" + "---:|" * (len(SUITE_NAMES) + 1)]
    for scale, cats in table.items():
        cells = [f"{cats[s]['accuracy']:.3f} (n={cats[s]['n']})" for s in [*SUITE_NAMES, "all"]]
        lines.append(f"| {scale} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(json.dumps({str(k): v for k, v in table.items()}, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in [*SUITE_NAMES, "all"]:
        acc = [table[g][s]["accuracy"] for g in args.scales]
        lo = [max(0.0, table[g][s]["accuracy"] - table[g][s]["ci95"][0]) for g in args.scales]
        hi = [max(0.0, table[g][s]["ci95"][1] - table[g][s]["accuracy"]) for g in args.scales]  # float noise at 0 or 1
        ax.errorbar(args.scales, acc, yerr=[lo, hi], marker="o", capsize=3, label=s, lw=2 if s == "all" else 1)
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
