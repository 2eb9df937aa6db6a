"""Two bench folders of one model, image by image: accuracy of each and the paired sign test (fixed / broken).

`--unseen-by JUDGE` keeps only the prompts that judge never trained on (its training.json), e.g. to check that an
early-exit choice on train prompts is not an artefact of the judge having trained on them.

python benchmarks/compare_rows.py benchmarks/results/frontier/shapes/early-exit_n8 \
    benchmarks/results/frontier/shapes/early-exit_n8_scorershapes-judge_at0.3_keep_share0.5
python benchmarks/compare_rows.py A B --unseen-by shapes-judge
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentalign.bench import RESULTS, sign_test
from latentalign.scorers.factory import scorer_folder


def rows(folder: Path) -> dict[tuple[str, int], bool]:
    lines = (folder / RESULTS).read_text().splitlines()
    return {(r["prompt"], r["seed"]): r["ok"] for r in map(json.loads, lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--unseen-by", default=None, help="keep prompts this judge (name or folder) never trained on")
    args = ap.parse_args()
    a, b = rows(args.a), rows(args.b)
    if set(a) != set(b):
        raise SystemExit(f"{args.a} and {args.b} hold different (prompt, seed) rows")
    keys = sorted(a)
    if args.unseen_by:
        trained = set(json.loads((scorer_folder(args.unseen_by) / "training.json").read_text())["train_prompts"])
        keys = [k for k in keys if k[0] not in trained]
    if not keys:
        raise SystemExit("no rows left to compare")
    fixed = sum(a[k] and not b[k] for k in keys)
    broken = sum(b[k] and not a[k] for k in keys)
    acc = lambda r: sum(r[k] for k in keys) / len(keys)  # noqa: E731
    print(f"{len(keys)} images: {args.a.name} {acc(a):.3f}, {args.b.name} {acc(b):.3f}")
    print(f"{args.a.name} right where {args.b.name} is wrong: {fixed}; the reverse: {broken}; "
          f"sign test p = {sign_test(fixed, broken):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
