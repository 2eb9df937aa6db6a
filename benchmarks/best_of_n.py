"""Best-of-N with early exit against compute, on the Shapes suites (held-out by default).

Stage 1 (sharded, resumable): for each (prompt, seed group) denoise 16 candidates (candidate i of group g has seed
g + i * SEED_STRIDE, exactly as `best_of_n(seed=g)` draws them), label each with the exact checker, and keep every
scorer's score at every step: NoisyCLIP on z_t, Latent-CLIP on the x0 prediction, and at the end pixel CLIP on the
decode, Latent-CLIP and NoisyCLIP (t=0) on the final latents. Candidates evolve independently, so any pruning
schedule's pick follows from these scores: stage 2 replays every method for N in {4, 8, 16} from them.
Stage 3 runs the real `best_of_n` for each method on a few prompts, to check that it picks what the replay picked and
to measure wall time in the same run. Compute is reported in denoiser-evaluation equivalents (decodes and scorer
calls converted by their cost measured in this run) and as wall-time ratios.

python benchmarks/best_of_n.py                                   # one process
accelerate launch --multi_gpu --num_processes 2 benchmarks/best_of_n.py  # same rows, sharded
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from latentalign import load_pipeline
from latentalign.adapters import Denoiser
from latentalign.bench import median_seconds, read_rows, wilson_interval
from latentalign.generation import generate, sampling_defaults, to_pil
from latentalign.methods import BestOfN, EarlyExit, PruneSchedule, early_exit_schedule, successive_halving_schedule
from latentalign.methods.best_of_n import SEED_STRIDE
from latentalign.scorers import load_scorer
from latentalign.trajectories import record_trajectories
from latentalign.world import SUITE_NAMES, check, suite

MAX_N = 16
NS = (4, 8, 16)


def plan(split: str, per_suite: int, groups: int) -> list[tuple[str, str, int]]:
    jobs = []
    for name in SUITE_NAMES:
        prompts = suite(name, split)
        random.Random(0).shuffle(prompts)
        jobs += [(name, p, g) for p in prompts[:per_suite] for g in range(groups)]
    return jobs


@torch.no_grad()
def candidate_row(pipe, scorers, name: str, prompt: str, group: int) -> dict:
    seeds = [group + i * SEED_STRIDE for i in range(MAX_N)]
    traj = record_trajectories(pipe, [prompt] * MAX_N, seeds, batch=MAX_N, progress=False)
    steps = traj.latents.shape[1]
    noisy, latent, pixel = scorers["noisy"], scorers["latent"], scorers["pixel"]
    t = traj.timesteps.long()
    flat = lambda x: x.flatten(0, 1)  # noqa: E731
    noisy_steps = noisy.score(flat(traj.latents), prompt, t.repeat(MAX_N)).view(MAX_N, steps)
    latent_steps = latent.score(flat(traj.x0), prompt).view(MAX_N, steps)
    final = traj.final
    return {
        "suite": name,
        "prompt": prompt,
        "group": group,
        "ok": [check(im, prompt).ok for im in traj.images],
        "noisy_steps": noisy_steps.round(decimals=5).tolist(),
        "latent_x0_steps": latent_steps.round(decimals=5).tolist(),
        "pixel_final": pixel.score(pixel.decode(final), prompt).round(decimals=5).tolist(),
        "latent_final": latent.score(final, prompt).round(decimals=5).tolist(),
        "noisy_final": noisy.score(final, prompt, torch.zeros(MAX_N, dtype=torch.long)).round(decimals=5).tolist(),
    }


def run_candidates(pipe, scorers, jobs, out: Path, state: PartialState) -> list[dict]:
    """Stage 1: this process's share of the jobs, appended row by row to its own shard; then all rows."""
    key = lambda r: (r["prompt"], r["group"])  # noqa: E731
    shard = out / f"candidates.rank{state.process_index}.jsonl"
    done = {key(r) for path in out.glob("candidates.rank*.jsonl") for r in read_rows(path)}
    mine = [j for j in jobs[state.process_index :: state.num_processes] if (j[1], j[2]) not in done]
    state.wait_for_everyone()  # every shard is read (and a torn last line cut) before anyone appends
    with shard.open("a") as f:
        for name, prompt, group in tqdm(mine, desc=f"candidates (rank {state.process_index})"):
            f.write(json.dumps(candidate_row(pipe, scorers, name, prompt, group)) + "\n")
            f.flush()
    state.wait_for_everyone()
    rows = {key(r): r for path in sorted(out.glob("candidates.rank*.jsonl")) for r in read_rows(path)}
    return [rows[(p, g)] for _, p, g in jobs]


def unit_costs(pipe, scorers, repeats: int = 10) -> dict[str, float]:
    """Seconds per item of one denoiser evaluation, a VAE decode and each scorer call, at batch 16."""
    den = Denoiser(pipe)
    z = den.initial_noise(list(range(MAX_N)))
    prompt = "a red circle left of a blue square"
    embeds = den.encode([prompt], 1.0).prompt_embeds.expand(MAX_N, -1, -1)
    t = torch.full((MAX_N,), 500)
    pixels = scorers["pixel"].decode(z)
    images = to_pil(pixels)
    calls = {
        "denoiser_eval": lambda: den.model(z, 500, embeds),
        "vae_decode": lambda: den.decode(z),
        "pixel_score": lambda: scorers["pixel"].score(pixels, prompt),
        "latent_score": lambda: scorers["latent"].score(z, prompt),
        "noisy_score": lambda: scorers["noisy"].score(z, prompt, t),
        "check": lambda: [check(im, prompt) for im in images],
    }
    result = {}
    with torch.no_grad():
        for name, fn in calls.items():
            result[name] = median_seconds(fn, repeats) / MAX_N
    return result


def methods_for(n: int, steps: int) -> dict[str, dict]:
    """Every method as (scores used at each prune step, schedule, final chooser)."""
    m = {
        "plain": {"kind": "plain"},
        "random pick": {"kind": "random"},
        "full BoN, pixel CLIP": {"kind": "full", "final": "pixel_final"},
        "full BoN, Latent-CLIP": {"kind": "full", "final": "latent_final"},
        "oracle (checker picks)": {"kind": "oracle"},
    }
    for frac in (0.1, 0.2, 0.3, 0.4):
        k = max(1, round(frac * steps))
        for keep in sorted({1, max(1, n // 4), max(1, 3 * n // 8), max(1, n // 2)}):
            for scorer in ("noisy", "latent_x0"):
                label = "NoisyCLIP" if scorer == "noisy" else "Latent-CLIP on x0"
                m[f"early exit, {label}, k={k}, m={keep}"] = prune(PruneSchedule((k,), (keep,)), scorer)
    default = early_exit_schedule(n, steps)
    m[f"early exit, NoisyCLIP, library default (k={default.steps[0]}, m={default.keep[0]})"] = prune(default)
    halving = successive_halving_schedule(n, steps)
    m[f"successive halving, NoisyCLIP, steps={list(halving.steps)}"] = prune(halving)
    return m


def prune(schedule: PruneSchedule, scorer: str = "noisy") -> dict:
    """A pruning method: `scorer` ("noisy" or "latent_x0") scores at the prune steps and picks at the end."""
    return {
        "kind": "prune",
        "schedule": schedule,
        "scorer": scorer,
        "final": "noisy_final" if scorer == "noisy" else "latent_final",
    }


def replay(row: dict, n: int, method: dict, rng: random.Random) -> tuple[float, int | None]:
    """(accuracy of the pick, the picked candidate) for one (prompt, group); random pick returns the expectation."""
    ok = row["ok"][:n]
    kind = method["kind"]
    if kind == "plain":
        return float(ok[0]), 0
    if kind == "random":
        return float(np.mean(ok)), None
    if kind == "oracle":
        return float(any(ok)), None
    alive = list(range(n))
    if kind == "prune":
        for k, keep in zip(method["schedule"].steps, method["schedule"].keep, strict=True):
            # NoisyCLIP (and the judge on z_t) read z_t after k steps; Latent-CLIP (and the judge on x0) the x0
            # prediction the k-th evaluation made
            s = k - 1 if method["scorer"] in ("latent_x0", "judge_x0") else k
            values = torch.tensor([row[f"{method['scorer']}_steps"][i][s] for i in alive])
            best = values.argsort(descending=True, stable=True)[:keep].sort().values.tolist()
            alive = [alive[j] for j in best]
    if len(alive) > 1:
        finals = [row[method["final"]][i] for i in alive]
        alive = [alive[int(np.argmax(finals))]]
    return float(ok[alive[0]]), alive[0]


def compute(method: dict, n: int, steps: int, guided: bool, unit: dict[str, float]) -> dict[str, float]:
    """Per-prompt compute in denoiser evaluations, decodes and scorer calls, and their sum in evaluation units."""
    per_step = 2 if guided else 1
    kind = method["kind"]
    evals, decodes, calls = 0.0, 1.0, {}
    if kind in ("plain", "random"):
        evals = per_step * steps
    elif kind in ("full", "oracle"):
        evals = per_step * steps * n
        scorer = method.get("final", "pixel_final").split("_")[0]
        if kind == "oracle" or scorer == "pixel":
            decodes = n
        calls = {"check" if kind == "oracle" else scorer: n}
    else:
        alive, done = n, 0
        calls = {}
        for k, keep in zip(method["schedule"].steps, method["schedule"].keep, strict=True):
            evals += per_step * alive * (k - done)
            calls[method["scorer"]] = calls.get(method["scorer"], 0) + alive
            alive, done = keep, k
        evals += per_step * alive * (steps - done)
        if alive > 1:
            final = method["final"].split("_")[0]
            calls[final] = calls.get(final, 0) + alive
    cost_key = {
        "noisy": "noisy_score",
        "latent": "latent_score",
        "latent_x0": "latent_score",
        "pixel": "pixel_score",
        "check": "check",
        "judge": "judge_score",
        "judge_x0": "judge_score",
        "logit": "judge_log_odds",  # the judge's forward alone, without its clause verdict
    }
    seconds = evals * unit["denoiser_eval"] + decodes * unit["vae_decode"]
    seconds += sum(c * unit[cost_key[s]] for s, c in calls.items())
    return {
        "denoiser_evals": evals,
        "vae_decodes": decodes,
        "scorer_calls": sum(calls.values()),
        "eval_equivalents": seconds / unit["denoiser_eval"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="heldout", choices=["train", "heldout"])
    ap.add_argument("--prompts-per-suite", type=int, default=40)
    ap.add_argument("--groups", type=int, default=3, help="seed groups per prompt (16 candidates each)")
    ap.add_argument("--timing-prompts", type=int, default=6, help="prompts per suite for the real-run check")
    ap.add_argument("--out", default=None)
    ap.add_argument("--noisy", default="shapes-noisy", help="the NoisyCLIP: a shipped name or a saved folder")
    ap.add_argument("--latent", default="shapes-latent", help="the Latent-CLIP: a shipped name or a saved folder")
    args = ap.parse_args()
    state = PartialState(cpu=True)
    if state.num_processes > 1:
        torch.set_num_threads(1)
    out = Path(args.out or f"benchmarks/results/best_of_n_{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes")
    scorers = {
        "pixel": load_scorer("shapes-pixel", vae=pipe.vae),
        "latent": load_scorer(args.latent),
        "noisy": load_scorer(args.noisy),
    }
    jobs = plan(args.split, args.prompts_per_suite, args.groups)
    rows = run_candidates(pipe, scorers, jobs, out, state)
    if not state.is_main_process:
        return
    steps = len(rows[0]["noisy_steps"][0])
    guidance = sampling_defaults(pipe).guidance_scale > 1.0
    unit = unit_costs(pipe, scorers)
    rng = random.Random(0)
    table = []
    for n in NS:
        full_pixel = None
        for label, method in methods_for(n, steps).items():
            picks = [replay(r, n, method, rng) for r in rows]
            acc = [a for a, _ in picks]
            cost = compute(method, n, steps, guidance, unit)
            entry = {"n": n, "method": label, "accuracy": round(float(np.mean(acc)), 4), **cost}
            k = round(sum(acc)) if method["kind"] not in ("random",) else None
            entry["ci95"] = list(wilson_interval(k, len(acc))) if k is not None else None
            entry["per_suite"] = {
                s: round(float(np.mean([a for a, r in zip(acc, rows, strict=True) if r["suite"] == s])), 4)
                for s in SUITE_NAMES
            }
            if label == "full BoN, pixel CLIP":
                full_pixel = entry
            table.append(entry)
        for entry in table:
            if entry["n"] == n:
                entry["accuracy_vs_full_pixel"] = round(entry["accuracy"] / full_pixel["accuracy"], 4)
                entry["compute_vs_full_pixel"] = round(entry["eval_equivalents"] / full_pixel["eval_equivalents"], 4)
    timing = real_runs(pipe, scorers, rows, args.timing_prompts, steps, rng) if args.timing_prompts > 0 else None
    result = {
        "split": args.split,
        "candidates": len(rows) * MAX_N,
        "prompts": len({r["prompt"] for r in rows}),
        "groups": args.groups,
        "steps": steps,
        "scorers": {"noisy": args.noisy, "latent": args.latent, "pixel": "shapes-pixel"},
        "unit_seconds": unit,
        "table": table,
        "real_runs": timing,
    }
    (out / "table.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(out, result)


def real_runs(pipe, scorers, rows, per_suite: int, steps: int, rng) -> dict:
    """Run the real `best_of_n` for N=8 on a few prompts: wall time per method, and agreement with the replay."""
    n = 8
    chosen_rows = []
    for s in SUITE_NAMES:
        chosen_rows += [r for r in rows if r["suite"] == s and r["group"] == 0][:per_suite]
    picks = {
        "full BoN, pixel CLIP": (scorers["pixel"], PruneSchedule()),
        "full BoN, Latent-CLIP": (scorers["latent"], PruneSchedule()),
    }
    methods = methods_for(n, steps)
    for label, m in methods.items():
        if m["kind"] == "prune" and m["scorer"] == "noisy":
            picks[label] = (scorers["noisy"], m["schedule"])
    result = {}
    for label, (scorer, schedule) in picks.items():
        seconds, agree = 0.0, 0
        for r in chosen_rows:
            stage = (
                EarlyExit(scorer=scorer, n=n, prune_steps=schedule.steps, keep=schedule.keep)
                if schedule.steps
                else BestOfN(scorer=scorer, n=n)
            )
            res = generate(pipe, r["prompt"], method=stage, seed=r["group"])
            seconds += res.cost.seconds
            agree += int(res.chosen[0] == replay(r, n, methods[label], rng)[1])
        result[label] = {"seconds_per_prompt": round(seconds / len(chosen_rows), 4), "agrees_with_replay": agree}
    plain_seconds = 0.0

    for r in chosen_rows:
        plain_seconds += generate(pipe, r["prompt"], seed=r["group"]).cost.seconds
    result["plain"] = {"seconds_per_prompt": round(plain_seconds / len(chosen_rows), 4)}
    base = result["full BoN, pixel CLIP"]["seconds_per_prompt"]
    for v in result.values():
        v["wall_time_vs_full_pixel"] = round(v["seconds_per_prompt"] / base, 4)
    return {"n": n, "prompts": len(chosen_rows), "methods": result}


def write_report(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"{result['split']} split: {result['prompts']} prompts x {result['groups']} seed groups, "
        f"{result['candidates']} candidates, {result['steps']} steps. Accuracy by the exact checker.",
        "Compute per prompt in denoiser-evaluation equivalents (decodes and scorer calls converted by their measured "
        "cost); ratios against full pixel-CLIP Best-of-N at the same N.",
        *([f"Scorers: {json.dumps(result['scorers'])}."] if "scorers" in result else []),
        "",
        "| N | method | accuracy | 95% CI | eval-equivalents | accuracy / full pixel | compute / full pixel |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for e in result["table"]:
        ci = f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]" if e["ci95"] else "expectation"
        lines.append(
            f"| {e['n']} | {e['method']} | {e['accuracy']:.3f} | {ci} | {e['eval_equivalents']:.1f} | "
            f"{e['accuracy_vs_full_pixel']:.3f} | {e['compute_vs_full_pixel']:.3f} |"
        )
    real = result["real_runs"] or {"n": 0, "prompts": 0, "methods": {}}
    lines += [
        "",
        f"Real `best_of_n` runs, N={real['n']}, {real['prompts']} prompts: wall time and agreement with the replay.",
        "",
        "| method | s per prompt | wall time / full pixel | picks as replayed |",
        "|---|---:|---:|---:|",
    ]
    for label, v in real["methods"].items():
        agree = f"{v['agrees_with_replay']}/{real['prompts']}" if "agrees_with_replay" in v else "-"
        lines.append(f"| {label} | {v['seconds_per_prompt']:.3f} | {v['wall_time_vs_full_pixel']:.3f} | {agree} |")
    unit = result["unit_seconds"]
    lines += ["", "Unit costs (ms per item, batch 16): " + ", ".join(f"{k} {v * 1000:.3f}" for k, v in unit.items())]
    (out / "table.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, len(NS), figsize=(5 * len(NS), 4), sharey=True)
    for ax, n in zip(axes, NS, strict=True):
        for e in [e for e in result["table"] if e["n"] == n]:
            name = e["method"]
            style = dict(marker="o", ms=4, alpha=0.6, color="tab:blue")
            if name.startswith("early exit, Latent"):
                style.update(color="tab:orange")
            elif name.startswith("successive"):
                style.update(color="tab:purple", marker="s", ms=6, alpha=1)
            elif not name.startswith("early exit"):
                style.update(color="k", marker="D", ms=6, alpha=1)
                ax.annotate(
                    name, (e["eval_equivalents"], e["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
            ax.plot(e["eval_equivalents"], e["accuracy"], ls="none", **style)
        ax.set_title(f"N = {n} (blue: early exit NoisyCLIP, orange: Latent-CLIP on x0)", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("compute per prompt (denoiser-evaluation equivalents)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy ({result['split']} prompts, exact checker)")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
