"""Noise optimisation (ReNO) with pixel and latent rewards, and negative-concept steering, on HELD-OUT prompts.

Part 1: for each prompt, optimise the initial noise of the short (default 4-step) DDIM generator with a pixel-CLIP
reward, then with a Latent-CLIP reward (same seed, same settings, one process, so time per iteration is comparable);
after the run, decode the best-so-far iterate at every iteration and judge it with the exact checker: accuracy
against iterations and against wall time. `--split train` runs the same on train prompts: defaults (the iteration
count the Shapes pipeline recommends) are chosen there, never on held-out prompts.
Part 2 (steering): two-object prompts where one object's colour or shape is the concept to avoid; before (no
optimisation) and after (prompt reward + avoid reward, Latent-CLIP and pixel CLIP), the rate at which the avoided
concept still appears and how often the other object is still drawn right.

python benchmarks/noise_optimization.py --seeds 3   # writes rows.jsonl, table.md, table.json, accuracy.png
                                                    # under benchmarks/results/noise_optimization/
An interrupted run resumes from rows.jsonl (one line per finished prompt and seed; more --seeds adds seeds to an
earlier run). The steering part runs seed 0.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm.auto import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.adapters import Denoiser  # noqa: E402
from latentalign.bench import read_rows, wilson_interval  # noqa: E402
from latentalign.generation import generate, to_pil  # noqa: E402
from latentalign.methods import (  # noqa: E402
    NoiseOptimization,
    Reward,
    recommended_iterations,
    recommended_steps,
)
from latentalign.methods.noise_optimization import concept_texts  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.world import check, parse, suite  # noqa: E402
from latentalign.world.checker import detect  # noqa: E402

SUITES = ("two_objects", "relation", "counting")
STEER_TAGS = ("before", "after_latent", "after_pixel")
SHIPPED_REWARDS = {"pixel": "shapes-pixel", "latent": "shapes-latent"}  # rows without scorer names used these


def prompts_for(per_suite: int, split: str = "heldout") -> list[tuple[str, str]]:
    out = []
    for name in SUITES:
        chosen = suite(name, split)
        random.Random(1).shuffle(chosen)
        out += [(name, p) for p in chosen[:per_suite]]
    return out


def noise_optimization(pipe, prompt: str, *, rewards: list[Reward], config: dict, seed: int = 0, on_iterate=None):
    """ReNO through `config["steps"]` generator steps for `config["iterations"]` iterations."""
    stage = NoiseOptimization(iterations=config["iterations"], rewards=rewards, on_iterate=on_iterate)
    return generate(pipe, prompt, method=stage, seed=seed, num_inference_steps=config["steps"])


def run(pipe, prompt: str, seed: int, rewards: list[Reward], cfg: dict):
    """One optimisation; returns (the best-so-far latents after each iteration, seconds per iteration, result)."""
    iterates = []
    result = noise_optimization(pipe, prompt, rewards=rewards, seed=seed, config=cfg, on_iterate=iterates.append)
    best, best_value, trace = None, -np.inf, []
    for info in iterates:
        if best is None or info["reward"] > best_value:
            best, best_value = info["latents"], info["reward"]
        trace.append(best)
    return torch.cat(trace), result.cost.seconds / len(iterates), result


@torch.no_grad()
def judge(pipe, latents: torch.Tensor, prompt: str) -> list[bool]:
    return [check(im, prompt).ok for im in to_pil(Denoiser(pipe).decode(latents))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-suite", type=int, default=16)
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="default: the pipeline's recommendation (latentalign.json), else 50",
    )
    ap.add_argument(
        "--generator-steps",
        type=int,
        default=None,
        help="DDIM steps of the generator back-propagated through (default: the pipeline's recommendation, else 4)",
    )
    ap.add_argument("--seeds", type=int, default=1, help="part 1 runs every prompt with N seeds, from --first-seed on")
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="the first seed of part 1 (a replication on fresh seeds starts past the seeds of an earlier run)",
    )
    ap.add_argument("--steering-prompts", type=int, default=24, help="0 skips part 2")
    ap.add_argument(
        "--split",
        choices=("heldout", "train"),
        default="heldout",
        help="train: the prompts on which defaults (the iteration count) are chosen; heldout: the reported figures",
    )
    ap.add_argument("--model", default="shapes", help="'shapes' (the shipped pipeline) or a Shapes pipeline folder")
    for kind in ("pixel", "latent"):
        ap.add_argument(
            f"--{kind}-scorer",
            default=SHIPPED_REWARDS[kind],
            help=f"the {kind} reward: a shipped name or a folder (default shapes-{kind})",
        )
    ap.add_argument("--out", default="benchmarks/results/noise_optimization")
    args = ap.parse_args()
    if args.per_suite < 1 or args.seeds < 1 or (args.generator_steps or 1) < 1 or args.steering_prompts < 0:
        ap.error("--per-suite, --seeds and --generator-steps must be >= 1, --steering-prompts >= 0")
    if args.first_seed < 0:
        ap.error("--first-seed must be >= 0")
    if args.iterations is not None and args.iterations < 1:
        ap.error("--iterations must be >= 1")
    if args.split == "train" and args.steering_prompts:
        ap.error("the steering part runs on held-out prompts only: pass --steering-prompts 0 with --split train")
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model)
    pixel = load_scorer(args.pixel_scorer, vae=pipe.vae)
    latent = load_scorer(args.latent_scorer)
    # the "latent" reward reads the latents without decoding: a Latent-CLIP or a latent judge
    if pixel.kind != "pixel" or latent.kind not in ("latent", "judge"):
        ap.error(f"--pixel-scorer is a {pixel.kind} scorer and --latent-scorer a {latent.kind} one")
    scorers = {"pixel_scorer": args.pixel_scorer, "latent_scorer": args.latent_scorer}
    if args.iterations is None:
        args.iterations = recommended_iterations(pipe)
    if args.generator_steps is None:
        args.generator_steps = recommended_steps(pipe)
    cfg = {"iterations": args.iterations, "steps": args.generator_steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # One JSON line per finished unit of work, so an interrupted run resumes where it stopped.
    rows_path = out / "rows.jsonl"
    rows = {row_key(r): r for r in read_rows(rows_path)}
    stale = [
        k
        for k, r in rows.items()
        if (r["iterations"], r.get("split", "heldout"), r.get("generator_steps", 4), r.get("model", "shapes"))
        != (args.iterations, args.split, args.generator_steps, args.model)
        or any(r.get(f"{k}_scorer", default) != scorers[f"{k}_scorer"] for k, default in SHIPPED_REWARDS.items())
    ]
    if stale:
        raise SystemExit(
            f"{rows_path} holds rows of other --iterations, --split, --generator-steps, --model or scorers"
        )

    def record(row: dict) -> None:
        with rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows[row_key(row)] = row

    # Part 1: accuracy against iterations and time; pixel and latent rewards interleaved per prompt.
    jobs = [
        (name, p, seed)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for name, p in prompts_for(args.per_suite, args.split)
    ]
    for _, prompt, seed in tqdm(jobs, desc="reward optimisation"):
        if ("reward", prompt, seed) in rows:
            continue
        row = {"part": "reward", "prompt": prompt, "seed": seed, "iterations": args.iterations}
        row.update(split=args.split, generator_steps=args.generator_steps, model=args.model, **scorers)
        for kind, scorer in (("pixel", pixel), ("latent", latent)):
            trace, per_iter, _ = run(pipe, prompt, seed, [Reward(scorer)], cfg)
            row[kind] = {"correct": judge(pipe, trace, prompt), "seconds_per_iteration": per_iter}
        record(row)
    part1 = summarise_rewards([rows[("reward", p, s)] for _, p, s in jobs], jobs, cfg, args.iterations)
    part1["split"] = args.split
    part1.update(scorers)
    if not args.steering_prompts:
        (out / "table.json").write_text(json.dumps({"rewards": part1}, indent=1) + "\n")
        write_report(out, part1, None)
        return

    # Part 2: steering away from a concept, with latent and with pixel rewards (same seed, same settings).
    cfg0 = {"iterations": 0, "steps": args.generator_steps}
    two = suite("two_objects", "heldout")
    random.Random(2).shuffle(two)
    for i, prompt in enumerate(tqdm(two[: args.steering_prompts], desc="steering")):
        if ("steer", prompt, 0) in rows:  # resumed
            continue
        a, b = parse(prompt).objects
        field = "colour" if i % 2 == 0 else "shape"
        concept = getattr(a, field)
        row = {"part": "steer", "prompt": prompt, "iterations": args.iterations, "avoid": concept, "field": field}
        row.update(split=args.split, generator_steps=args.generator_steps, model=args.model, **scorers)
        if concept == getattr(b, field):
            record({**row, "skipped": "both objects share the concept"})
            continue
        texts = concept_texts(pipe, concept)
        runs = {"before": noise_optimization(pipe, prompt, rewards=[Reward(latent)], config=cfg0)}
        for kind, scorer in (("latent", latent), ("pixel", pixel)):
            rewards = [Reward(scorer), Reward(scorer, 1.0, texts, avoid=True)]
            runs[f"after_{kind}"] = noise_optimization(pipe, prompt, rewards=rewards, config=cfg)
        for tag, res in runs.items():
            dets = detect(res.images[0])
            row[f"{tag}_appears"] = any(getattr(d, field) == concept for d in dets)
            row[f"{tag}_rest_ok"] = any(d.colour == b.colour and d.shape == b.shape for d in dets)
            row[f"{tag}_seconds"] = res.cost.seconds
        record(row)
    steer = [rows[("steer", p, 0)] for p in two[: args.steering_prompts]]
    steer = [r for r in steer if "skipped" not in r]
    part2 = {"prompts": len(steer), "rows": steer}
    for tag in STEER_TAGS:
        for key in ("appears", "rest_ok"):
            k = sum(r[f"{tag}_{key}"] for r in steer)
            part2[f"{tag}_{key}"] = {"rate": round(k / len(steer), 4), "ci95": list(wilson_interval(k, len(steer)))}
        part2[f"{tag}_seconds"] = round(float(np.mean([r[f"{tag}_seconds"] for r in steer])), 3)

    (out / "table.json").write_text(json.dumps({"rewards": part1, "steering": part2}, indent=1) + "\n")
    write_report(out, part1, part2)


def row_key(row: dict) -> tuple:
    """A row's identity: part, prompt and seed (rows written before --seeds existed are seed 0)."""
    return row["part"], row["prompt"], row.get("seed", 0)


def time_saving(curves: dict, per_iter: dict, iterations: int) -> tuple[int | None, float, float | None]:
    """(first iteration from which the latent accuracy never again falls below the pixel reward's final accuracy,
    pixel total seconds, latent seconds to that iteration); the first crossing alone is luck on a noisy curve."""
    acc = {k: v.mean(axis=0) for k, v in curves.items()}
    above = acc["latent"] >= acc["pixel"][-1] - 1e-9
    reach = next((i for i in range(len(above)) if above[i:].all()), None)
    pixel_total = per_iter["pixel"] * (iterations + 1)
    return reach, pixel_total, None if reach is None else per_iter["latent"] * (reach + 1)


def summarise_rewards(rows: list[dict], jobs: list[tuple[str, str, int]], cfg, iterations: int) -> dict:
    curves = {k: np.array([r[k]["correct"] for r in rows], dtype=float) for k in ("pixel", "latent")}
    acc = {k: v.mean(axis=0) for k, v in curves.items()}
    per_iter = {k: float(np.mean([r[k]["seconds_per_iteration"] for r in rows])) for k in curves}
    reach, pixel_total, latent_total = time_saving(curves, per_iter, iterations)
    # How sure is the saving? Resample (prompt, seed) rows with replacement; a resample whose latent curve never
    # stays at the pixel reward's final accuracy has no saving at all (-inf: it never gets there, whatever the
    # price of an iteration), so it counts against the target and pulls the interval's low end to "never".
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(1000):
        pick = rng.integers(0, len(rows), len(rows))
        r, p_total, l_total = time_saving({k: v[pick] for k, v in curves.items()}, per_iter, iterations)
        boot.append(-np.inf if r is None else 1 - l_total / p_total)
    finite = lambda x: round(float(x), 4) if np.isfinite(x) else None  # noqa: E731
    seeds = sorted({s for _, _, s in jobs})
    per_seed = {}
    for seed in seeds:
        m = np.array([s == seed for _, _, s in jobs])
        r, p_total, l_total = time_saving({k: v[m] for k, v in curves.items()}, per_iter, iterations)
        per_seed[seed] = None if r is None else round(1 - l_total / p_total, 4)
    final_k = {k: int(round(v[:, -1].sum())) for k, v in curves.items()}
    names = [n for n, _, _ in jobs]
    by_suite = lambda k, i, s: round(float(np.mean([c[i] for c, n in zip(curves[k], names, strict=True) if n == s])), 4)  # noqa: E731
    return {
        "prompts": len({p for _, p, _ in jobs}),
        "seeds": seeds,
        "runs": len(rows),
        "iterations": iterations,
        # the run's settings as the report names them: ReNO's defaults beside this run's steps and iterations
        "config": {
            **{k: getattr(NoiseOptimization(), k) for k in ("lr", "momentum", "grad_clip", "reg_weight")},
            "num_inference_steps": cfg["steps"],
            "iterations": cfg["iterations"],
        },
        "accuracy_by_iteration": {k: [round(float(a), 4) for a in v] for k, v in acc.items()},
        "final_ci95": {k: [round(x, 3) for x in wilson_interval(final_k[k], len(rows))] for k in curves},
        "per_suite_final": {k: {s: by_suite(k, -1, s) for s in SUITES} for k in curves},
        "per_suite_initial": {s: by_suite("pixel", 0, s) for s in SUITES},
        "seconds_per_iteration": per_iter,
        # the iteration count a default should use: where the two rewards' mean accuracy peaks (fewest on ties);
        # chosen on --split train, then measured on held-out prompts with --iterations set to it
        "best_mean_accuracy_at_iteration": int(np.argmax((acc["pixel"] + acc["latent"]) / 2)),
        "latent_reaches_final_pixel_accuracy_at_iteration": reach,
        "pixel_total_seconds": pixel_total,
        "latent_seconds_to_reach": latent_total,
        "time_saving": None if latent_total is None else round(1 - latent_total / pixel_total, 4),
        "time_saving_per_iteration": round(1 - per_iter["latent"] / per_iter["pixel"], 4),
        "time_saving_by_seed": per_seed,
        "time_saving_bootstrap": {
            "median": finite(np.median(boot)),  # None: most resamples never reach it
            "ci95": [finite(x) for x in np.percentile(boot, [2.5, 97.5], method="lower")],
            "share_never_reaching": round(float(np.mean(np.isinf(boot))), 4),
            "share_at_least_0.20": round(float(np.mean(np.array(boot) >= 0.2)), 4),
        },
    }


def write_report(out: Path, part1: dict, part2: dict | None) -> None:
    iters = part1["iterations"]
    acc = part1["accuracy_by_iteration"]
    t = part1["seconds_per_iteration"]
    split = {"heldout": "held-out", "train": "train"}[part1.get("split", "heldout")]
    peak = part1["best_mean_accuracy_at_iteration"]
    lines = [
        f"{part1['prompts']} {split} prompts ({', '.join(SUITES)}) x seeds {part1['seeds']} = {part1['runs']} runs "
        f"per reward, {part1['config']['num_inference_steps']}-step DDIM generator, "
        f"ReNO defaults (lr {part1['config']['lr']}, Nesterov momentum {part1['config']['momentum']}, "
        f"grad-norm clip {part1['config']['grad_clip']}, chi regulariser {part1['config']['reg_weight']}). "
        f"Rewards: pixel {part1.get('pixel_scorer', SHIPPED_REWARDS['pixel'])}, "
        f"latent {part1.get('latent_scorer', SHIPPED_REWARDS['latent'])}.",
        "",
    ]
    marks = sorted({i for i in (0, 5, 10, 20, 30, 50) if i <= iters} | {iters})
    lines += [
        "| reward | s / iteration | " + " | ".join(f"acc. it {i}" for i in marks) + " |",
        "|---|---:|" + "---:|" * len(marks),
    ]
    for k in ("pixel", "latent"):
        lines.append(f"| {k} | {t[k]:.4f} | " + " | ".join(f"{acc[k][i]:.3f}" for i in marks) + " |")
    lines += [
        "",
        f"Final accuracy 95% CI: {json.dumps(part1['final_ci95'])}.",
        f"Per suite, final: {json.dumps(part1['per_suite_final'])}; initial: {json.dumps(part1['per_suite_initial'])}",
        f"Time per iteration: latent reward {part1['time_saving_per_iteration']:.1%} less than pixel reward.",
        f"Latent reward stays at or above the pixel reward's final accuracy ({acc['pixel'][-1]:.3f}) from iteration "
        f"{part1['latent_reaches_final_pixel_accuracy_at_iteration']}: "
        f"{part1['latent_seconds_to_reach']} s against {part1['pixel_total_seconds']:.3f} s for the pixel run "
        f"(time saving {part1['time_saving']}; target >= 0.20). By seed: {json.dumps(part1['time_saving_by_seed'])}; "
        f"bootstrap over runs: median {part1['time_saving_bootstrap']['median']}, 95% interval "
        f"{part1['time_saving_bootstrap']['ci95']} (None: never reaches it), share of resamples >= 0.20: "
        f"{part1['time_saving_bootstrap']['share_at_least_0.20']}, never reaching it: "
        f"{part1['time_saving_bootstrap']['share_never_reaching']}.",
        f"Mean accuracy of the two rewards peaks at iteration {peak} "
        f"({(acc['pixel'][peak] + acc['latent'][peak]) / 2:.3f}).",
    ]
    if part2 is not None:
        lines += steering_lines(part2)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(out, part1, split)
    print((out / "table.md").read_text())


def steering_lines(part2: dict) -> list[str]:
    lines = [
        "",
        f"Steering, {part2['prompts']} held-out two-object prompts, avoid one object's colour or shape "
        "(prompt reward + avoid reward 1 - max score over the concept's single-object prompts, weights 1 and 1, "
        "both from the same scorer; 'before' is the unoptimised sample of the same seed):",
        "",
        "| | avoided concept appears | other object still right | s per prompt |",
        "|---|---:|---:|---:|",
    ]
    for tag in STEER_TAGS:
        a, r = part2[f"{tag}_appears"], part2[f"{tag}_rest_ok"]
        lines.append(
            f"| {tag} | {a['rate']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] | "
            f"{r['rate']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {part2[f'{tag}_seconds']:.2f} |"
        )
    return lines


def plot(out: Path, part1: dict, split: str) -> None:
    iters = part1["iterations"]
    acc = part1["accuracy_by_iteration"]
    t = part1["seconds_per_iteration"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for k in ("pixel", "latent"):
        axes[0].plot(range(iters + 1), acc[k], label=f"{k} reward")
        axes[1].plot(np.arange(iters + 1) * t[k], acc[k], label=f"{k} reward")
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("wall seconds per prompt (2 CPU threads)")
    axes[0].set_ylabel(f"{split} accuracy (exact checker)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


if __name__ == "__main__":
    main()
