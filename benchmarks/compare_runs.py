"""Compare two result folders of `benchmarks/best_of_n.py` (e.g. one process against two under accelerate).

Checks that both hold the same (prompt, group) rows, each exactly once; that the checker's verdicts agree
exactly; how far the recorded scores differ (thread counts change float summation order); and whether the
replayed tables agree.

python benchmarks/compare_runs.py RUN_A RUN_B     # exit 1 when rows, verdicts or tables differ
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latentalign.bench import read_rows

SCORES = ("noisy_steps", "latent_x0_steps", "pixel_final", "latent_final", "noisy_final")


def load(folder: Path) -> tuple[dict, int]:
    rows = [r for path in sorted(folder.glob("candidates.rank*.jsonl")) for r in read_rows(path)]
    if not rows:
        raise SystemExit(f"{folder} has no candidates.rank*.jsonl rows")
    return {(r["prompt"], r["group"]): r for r in rows}, len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args()
    (a, na), (b, nb) = load(args.a), load(args.b)
    report = {
        "rows": [na, nb],
        "duplicates": [na - len(a), nb - len(b)],
        "same_keys": a.keys() == b.keys(),
    }
    shared = sorted(a.keys() & b.keys())
    report["verdicts_differ"] = sum(a[k]["ok"] != b[k]["ok"] for k in shared)
    diff = {f: max(float(np.abs(np.subtract(a[k][f], b[k][f])).max()) for k in shared) for f in SCORES}
    report["max_abs_score_difference"] = diff
    tables = [json.loads((f / "table.json").read_text()) for f in (args.a, args.b) if (f / "table.json").exists()]
    if len(tables) == 2:
        pairs = zip(tables[0]["table"], tables[1]["table"], strict=True)
        report["table_rows_differ"] = [x["method"] for x, y in pairs if x["accuracy"] != y["accuracy"]]
    print(json.dumps(report, indent=1))
    same = not any(report["duplicates"]) and report["same_keys"] and not report["verdicts_differ"]
    return 0 if same and not report.get("table_rows_differ") else 1


if __name__ == "__main__":
    sys.exit(main())
