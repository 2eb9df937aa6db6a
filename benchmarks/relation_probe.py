"""Does the pipeline read the relation word? Same prompt and seed with "left of" swapped for another relation.

For train-split "A left of B" prompts, generate the prompt and its twin from the same seed and compare the
two layouts (checker detections). `--twin "right of"` (direction): a pipeline that reads the direction flips
the objects' left-to-right order in most pairs. `--twin above` (axis): one that reads the axis turns the
pair's dominant axis from horizontal to vertical in most pairs. One that ignores the word keeps what the
noise gave.

    python benchmarks/relation_probe.py                                    # the shipped pipeline, direction
    python benchmarks/relation_probe.py --twin above                       # axis
    python benchmarks/relation_probe.py --model runs/world_v2/pipeline     # any pipeline folder
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import latentalign
from latentalign.world import check, parse, suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--twin", choices=("right of", "above", "below"), default="right of")
    ap.add_argument("--out", default="benchmarks/results/relation_probe/runs.jsonl")
    args = ap.parse_args()
    pipe = latentalign.load_pipeline(args.model)
    left = random.Random(0).sample([p for p in suite("relation", "train") if " left of " in p], args.pairs)
    twin = [p.replace(" left of ", f" {args.twin} ") for p in left]
    seeds = list(range(args.pairs))

    def layout(d: dict, first, second) -> bool:
        """--twin 'right of': is the first object left of the second? Else: is the dominant axis horizontal?"""
        dx, dy = d[first].cx - d[second].cx, d[first].cy - d[second].cy
        return dx < 0 if args.twin == "right of" else abs(dx) > abs(dy)

    counts = {"left_ok": 0, "right_ok": 0, "same_order": 0, "flipped": 0, "unreadable": 0}
    for i in range(0, args.pairs, 16):
        a = latentalign.generate(pipe, left[i : i + 16], seed=seeds[i : i + 16])
        b = latentalign.generate(pipe, twin[i : i + 16], seed=seeds[i : i + 16])
        for pa, pb, ia, ib in zip(left[i : i + 16], twin[i : i + 16], a.images, b.images, strict=True):
            va, vb = check(ia, pa), check(ib, pb)
            counts["left_ok"] += va.ok
            counts["right_ok"] += vb.ok
            first, second = ((o.colour, o.shape) for o in parse(pa).objects)
            da = {(d.colour, d.shape): d for d in va.detections}
            db = {(d.colour, d.shape): d for d in vb.detections}
            if not all(k in d for k in (first, second) for d in (da, db)):
                counts["unreadable"] += 1  # an object missing or misdrawn in either image
                continue
            counts["same_order" if layout(da, first, second) == layout(db, first, second) else "flipped"] += 1
    readable = counts["same_order"] + counts["flipped"]
    row = {
        "model": str(args.model),
        "twin": args.twin,
        "pairs": args.pairs,
        **counts,
        "flip_rate": round(counts["flipped"] / readable, 3) if readable else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
