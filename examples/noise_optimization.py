"""ReNO on the embedded one-step Shapes pipeline: optimise the initial noise with its Latent-CLIP reward (distilled
from pixel CLIP), then with a pixel-CLIP reward, optionally steering away from a colour or shape; the checker
judges each result (with --avoid, it also says whether the avoided concept is still drawn: the steering
benchmark's question).

python examples/noise_optimization.py "two red circles" --seed 0
python examples/noise_optimization.py "a red circle and a blue square" --avoid red
"""

from __future__ import annotations

import argparse

import latentalign
from latentalign.world import check
from latentalign.world.checker import detect


def verdict(image, prompt: str, avoid: str | None) -> str:
    out = f"follows the prompt: {check(image, prompt).ok}"
    if avoid is not None:
        shown = any(avoid in (d.colour, d.shape) for d in detect(image))
        out += f", shows {avoid!r}: {shown}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--avoid", default=None, help="a Shapes colour or shape the image should not show")
    ap.add_argument("--iterations", type=int, default=None, help="default: the pipeline's recommendation (13)")
    args = ap.parse_args()

    pipe = latentalign.load_pipeline("shapes-one-step")  # one unguided UNet call per image
    plain = latentalign.generate(pipe, args.prompt, seed=args.seed)
    print(f"{'plain:':25} {verdict(plain.images[0], args.prompt, args.avoid)}  cost {plain.cost}")
    for scorer in ("shapes-latent-distilled", "shapes-pixel"):
        result = latentalign.generate(
            pipe,
            args.prompt,
            seed=args.seed,
            method="noise-optimization",
            scorer=scorer,
            avoid=args.avoid,
            iterations=args.iterations,
        )
        rewards = ", ".join(f"{r:.3f}" for r in result.rewards[0])
        print(f"{scorer + ':':25} {verdict(result.images[0], args.prompt, args.avoid)}  cost {result.cost}")
        print(f"  reward by iteration: {rewards}; kept iteration {result.best_iteration[0]}")


if __name__ == "__main__":
    main()
