"""latentalign's wall time against the stock pipeline's `__call__`, and early exit's wall time against full Best-of-N.

Part 1: `generate` (plain) and the stock `StableDiffusionPipeline.__call__` on the same prompts, generators and
settings (the embedded `shapes` pipeline at its recommended 20 steps, guidance 1.5, PIL output), interleaved call
by call, at batch 1 and 8. Part 2: the default early exit (NoisyCLIP prunes after 30% of the steps, keeping a quarter)
against full Best-of-N (pixel CLIP) at N = 4, 8 and 16, interleaved, with P prompts per call (the survivors of every
prompt are denoised together); its wall-time ratio beside its denoiser-evaluation ratio. Part 3: noise projection
against plain generation on shapes-one-step, batch 1. Train prompts only (timing
chooses nothing, but held-out prompts are kept for accuracy reports). One CPU thread (timings on a 2-core machine
with two threads are noisy). Medians over the repeats; every call's time is kept in table.json.

python benchmarks/overhead.py   # ~10 min on 2 cores; writes benchmarks/results/overhead/{table.md,table.json}
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from latentalign import generate, load_pipeline
from latentalign.methods import BestOfN, EarlyExit
from latentalign.world import suite


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_prompts(k: int, seed: int = 0) -> list[str]:
    pool = [p for name in ("single_object", "two_objects", "relation", "counting") for p in suite(name, "train")]
    random.Random(seed).shuffle(pool)
    return pool[:k]


def overhead(pipe, batch: int, repeats: int) -> dict:
    steps, guidance = 20, 1.5
    prompts = train_prompts(batch * repeats)
    times = {"latentalign": [], "stock": []}
    for r in range(-1, repeats):  # r = -1: one warm-up call each
        chunk = prompts[max(r, 0) * batch : (max(r, 0) + 1) * batch]
        seeds = list(range(max(r, 0) * batch, (max(r, 0) + 1) * batch))

        def gens(seeds=seeds):
            return [torch.Generator().manual_seed(s) for s in seeds]

        calls = {
            "latentalign": lambda chunk=chunk: generate(
                pipe, chunk, generator=gens(), num_inference_steps=steps, guidance_scale=guidance
            ),
            "stock": lambda chunk=chunk: pipe(
                chunk, generator=gens(), num_inference_steps=steps, guidance_scale=guidance
            ),
        }
        order = list(calls) if r % 2 == 0 else list(reversed(calls))  # alternate who goes first
        for name in order:
            t = timed(calls[name])
            if r >= 0:
                times[name].append(t)
    ours, stock = statistics.median(times["latentalign"]), statistics.median(times["stock"])
    return {
        "batch": batch,
        "repeats": repeats,
        "median_s": {"latentalign": ours, "stock": stock},
        "ratio": ours / stock,
        "times": times,
    }


def early_exit(pipe, n: int, prompts_per_call: int, repeats: int) -> dict:
    prompts = train_prompts(prompts_per_call * repeats, seed=1)
    methods = {"full best-of-n (pixel CLIP)": BestOfN(n=n), "early exit (NoisyCLIP)": EarlyExit(n=n)}
    times = {k: [] for k in methods}
    evals = {}
    for r in range(-1, repeats):
        chunk = prompts[max(r, 0) * prompts_per_call : (max(r, 0) + 1) * prompts_per_call]
        seeds = list(range(len(chunk)))
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            start = time.perf_counter()
            result = generate(pipe, chunk, method=methods[name], seed=seeds)
            t = time.perf_counter() - start
            if r >= 0:
                times[name].append(t)
                evals[name] = evals.get(name, 0) + result.cost.denoiser_evals
    full, ee = (statistics.median(times[k]) for k in methods)
    full_evals, ee_evals = (evals[k] for k in methods)
    return {
        "n": n,
        "prompts_per_call": prompts_per_call,
        "repeats": repeats,
        "median_s": dict(zip(methods, (full, ee), strict=True)),
        "wall_ratio": ee / full,
        "eval_ratio": ee_evals / full_evals,
        "times": times,
    }


def projection(repeats: int) -> dict:
    """Plain generation against noise projection on shapes-one-step (its shipped projector, named by a string as a
    user names it), batch 1, interleaved: the projector is loaded once, so the gap is its forward pass."""
    pipe = load_pipeline("shapes-one-step")
    prompts = train_prompts(repeats, seed=2)
    times = {"plain": [], "noise-projection": []}
    for r in range(-1, repeats):
        p, seed = prompts[max(r, 0)], max(r, 0)
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            t = timed(lambda name=name, p=p, seed=seed: generate(pipe, p, method=name, seed=seed))
            if r >= 0:
                times[name].append(t)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "repeats": repeats,
        "median_s": medians,
        "ratio": medians["noise-projection"] / medians["plain"],
        "times": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/overhead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("shapes")
    rows = {"overhead": [], "early_exit": []}
    for batch in (1, 8):
        rows["overhead"].append(overhead(pipe, batch, args.repeats))
        print(f"batch {batch}: ratio {rows['overhead'][-1]['ratio']:.3f}", flush=True)
    rows["projection"] = projection(args.repeats * 5)
    print(f"noise projection / plain on shapes-one-step: {rows['projection']['ratio']:.3f}", flush=True)
    for n in (4, 8, 16):
        for per_call in (1, 8):
            row = early_exit(pipe, n, per_call, max(4, args.repeats // (2 if per_call == 8 else 1) // (n // 4)))
            rows["early_exit"].append(row)
            print(
                f"N={n}, {per_call} prompts/call: wall {row['wall_ratio']:.3f}, evals {row['eval_ratio']:.3f}",
                flush=True,
            )
    revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    settings = {
        "command": " ".join(["python", *sys.argv]),
        "revision": revision,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "cpus": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps({"settings": settings, **rows}, indent=1) + "\n")
    lines = [
        "# latentalign against the stock pipeline, and early exit against full Best-of-N",
        "",
        f"`{settings['command']}` at {revision[:10]}, torch {torch.__version__}, {args.threads} thread(s).",
        "",
        "| batch | latentalign median s | stock median s | ratio (target <= 1.05) |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows["overhead"]:
        m = r["median_s"]
        lines.append(f"| {r['batch']} | {m['latentalign']:.4f} | {m['stock']:.4f} | {r['ratio']:.3f} |")
    lines += [
        "",
        "| N | prompts per call | full BoN median s | early exit median s | wall ratio | evaluation ratio | gap |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows["early_exit"]:
        full, ee = r["median_s"].values()
        gap = r["wall_ratio"] - r["eval_ratio"]
        lines.append(
            f"| {r['n']} | {r['prompts_per_call']} | {full:.3f} | {ee:.3f} | {r['wall_ratio']:.3f} | "
            f"{r['eval_ratio']:.3f} | {gap:+.3f} |"
        )
    m = rows["projection"]["median_s"]
    lines += [
        "",
        "| shapes-one-step, batch 1 | plain median ms | noise projection median ms | ratio |",
        "|---|---:|---:|---:|",
        f"| shipped projector by name | {1000 * m['plain']:.1f} | {1000 * m['noise-projection']:.1f} | "
        f"{rows['projection']['ratio']:.3f} |",
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
