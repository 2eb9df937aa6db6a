"""Plain-generation accuracy by object count beside the VAE's own ceiling.

For every (prompt, seed) row of a `latentalign bench` run, the checker's verdict on the generated image is
set beside its verdict on a clean render of the same prompt (seed = the row's seed) and on that render
passed through the shipped VAE (encode, decode the posterior mean). The second is the ceiling: an image the
VAE cannot reproduce is one the generator cannot produce either, so failures at that rate are the
decoder's, not misalignment.

    python benchmarks/vae_ceiling.py --results benchmarks/results/plain --out benchmarks/results/vae_ceiling
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latentalign.bench import wilson_interval
from latentalign.pipeline import load_pipeline
from latentalign.training.world import vae_round_trip
from latentalign.world import check, parse, render
from latentalign.world.render import to_array


def n_objects(prompt: str) -> int:
    return sum(o.count for o in parse(prompt).objects)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results/plain", help="a `latentalign bench` output folder")
    ap.add_argument("--out", default="benchmarks/results/vae_ceiling")
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    rows_path = Path(args.results) / "results.jsonl"
    if not rows_path.exists():
        raise SystemExit(f"{rows_path} not found: run `latentalign bench ... --out {args.results}` first")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    vae = load_pipeline(args.model).vae.eval()

    clean_ok, rec_ok = [], []
    for i in tqdm(range(0, len(rows), args.batch), desc="render + VAE round trip"):
        chunk = rows[i : i + args.batch]
        images = np.stack([to_array(render(r["prompt"], r["seed"])) for r in chunk])
        clean_ok += [check(im, r["prompt"]).ok for im, r in zip(images, chunk, strict=True)]
        rec_ok += [check(im, r["prompt"]).ok for im, r in zip(vae_round_trip(vae, images), chunk, strict=True)]

    groups: dict[tuple[str, int], list[tuple[bool, bool, bool]]] = defaultdict(list)
    for r, c, v in zip(rows, clean_ok, rec_ok, strict=True):
        groups[(r["suite"], n_objects(r["prompt"]))].append((bool(r["ok"]), c, v))
        groups[(r["suite"], 0)].append((bool(r["ok"]), c, v))  # 0 = the whole suite

    table = []
    for (suite, k), vals in sorted(groups.items()):
        n = len(vals)
        gen, clean, rec = (sum(v[j] for v in vals) for j in range(3))
        table.append(
            {
                "suite": suite,
                "objects": k or "all",
                "n": n,
                "generated": gen / n,
                "generated_ci95": wilson_interval(gen, n),
                "clean_render": clean / n,
                "vae_reconstruction": rec / n,
                "generated_over_ceiling": gen / rec if rec else None,
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Rows: `{rows_path}`. Ceiling: clean render of the same prompt and seed, VAE encode + decode, checker.",
        "",
        "| suite | objects | n | generated | 95% CI | clean render | VAE reconstruction | generated / VAE |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for t in table:
        lo, hi = t["generated_ci95"]
        ratio = "-" if t["generated_over_ceiling"] is None else f"{t['generated_over_ceiling']:.3f}"
        lines.append(
            f"| {t['suite']} | {t['objects']} | {t['n']} | {t['generated']:.3f} | [{lo:.3f}, {hi:.3f}] | "
            f"{t['clean_render']:.3f} | {t['vae_reconstruction']:.3f} | {ratio} |"
        )
    for name, text in (("table.md", "\n".join(lines) + "\n"), ("table.json", json.dumps(table, indent=1) + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
