"""Generate on the embedded Shapes world, watch the x0 prediction, and judge the result with the checker.

python examples/quickstart.py "a red circle left of a cyan diamond" --seeds 8
"""

from __future__ import annotations

import argparse

import latentalign
from latentalign.world import check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()

    pipe = latentalign.load_pipeline("shapes")
    x0_norms = []
    result = latentalign.generate(
        pipe,
        [args.prompt] * args.seeds,  # a batch gives the same images as one call per seed
        seed=list(range(args.seeds)),
        callback=lambda state: x0_norms.append(float(state["x0"].norm())),
    )
    for seed, image in zip(result.seeds, result.images, strict=True):
        verdict = check(image, args.prompt)
        failures = ", ".join(f"{f.kind} ({f.detail})" for f in verdict.failures) or "ok"
        print(f"seed {seed}: {failures}")
    print(f"{len(x0_norms)} denoising steps; cost: {result.cost}")


if __name__ == "__main__":
    main()
