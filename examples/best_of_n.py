"""Best-of-N with early exit on the embedded Shapes world: 8 candidates, the latent judge prunes them after 30% of
the steps, half of them finish, the best is kept; the checker judges every candidate's fate.

python examples/best_of_n.py "a red circle left of a cyan diamond" --n 8
"""

from __future__ import annotations

import argparse

import latentalign
from latentalign.world import check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pipe = latentalign.load_pipeline("shapes")
    plain = latentalign.generate(pipe, args.prompt, seed=args.seed)
    result = latentalign.generate(pipe, args.prompt, seed=args.seed, method="early-exit", n=args.n)
    for i, (scores, pruned) in enumerate(zip(result.scores[0], result.pruned_at[0], strict=True)):
        fate = f"pruned after step {pruned}" if pruned is not None else "finished"
        mark = "  <- chosen" if i == result.chosen[0] else ""
        print(f"candidate {i} (seed {result.candidate_seeds[0][i]}): {scores} {fate}{mark}")
    print(f"plain:      {check(plain.images[0], args.prompt).ok}  cost {plain.cost}")
    print(f"early exit: {check(result.images[0], args.prompt).ok}  cost {result.cost}")


if __name__ == "__main__":
    main()
