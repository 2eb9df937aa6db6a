"""The latent judge (issue 23) on HELD-OUT prompts: detection per step, Best-of-N and early exit, honesty checks.

With `--candidates benchmarks/results/archive/previous_world/best_of_n_train` the same on train prompts the judge
never trained on: the evidence defaults are chosen on (that folder's candidates are the previous world's).

Stage 1 (sharded, resumable) regenerates the candidates of `benchmarks/results/best_of_n_heldout` (same prompts,
seed groups and seeds, so the checker's labels must agree with that run's, and the run counts any that do not),
and keeps the judge's score of z_t at every step and of the final latents, plus pixel CLIP on the decoded x0
prediction at every step. Stage 2 joins them with that run's rows (pixel CLIP, Latent-CLIP and NoisyCLIP scores)
and replays every method there and here with `best_of_n.py`'s replay and compute accounting.

python benchmarks/judge_study.py                                        # one process
accelerate launch --multi_gpu --num_processes 2 benchmarks/judge_study.py  # same rows, sharded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import best_of_n as bon  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.bench import median_seconds, read_rows, wilson_interval  # noqa: E402
from latentalign.generation import sampling_defaults  # noqa: E402
from latentalign.methods import PruneSchedule  # noqa: E402
from latentalign.methods.best_of_n import SEED_STRIDE  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.scorers.factory import scorer_folder  # noqa: E402
from latentalign.training.judge import within_prompt_auroc  # noqa: E402
from latentalign.trajectories import record_trajectories  # noqa: E402
from latentalign.world import SUITE_NAMES, check, parse  # noqa: E402

TARGET_STEP = 8


@torch.no_grad()
def judge_row(pipe, judge, pixel, row: dict) -> dict:
    n = bon.MAX_N
    seeds = [row["group"] + i * SEED_STRIDE for i in range(n)]
    traj = record_trajectories(pipe, [row["prompt"]] * n, seeds, batch=n, progress=False)
    steps = traj.latents.shape[1]
    t = traj.timesteps.float().repeat(n)
    flat = lambda x: x.flatten(0, 1)  # noqa: E731
    # one pass gives the judge's score and its learned log-odds alone (without the object head's clause verdict)
    logit_steps, passes_steps = judge.score_terms(flat(traj.latents), row["prompt"], t)
    logit_final, passes_final = judge.score_terms(traj.final, row["prompt"])
    judge_steps = judge.combine(logit_steps, passes_steps).view(n, steps)
    judge_final = judge.combine(logit_final, passes_final)
    logit_steps = logit_steps.view(n, steps)
    # the judge reading the generator's x0 prediction at each step as clean latents (its shipped `space`)
    x0_steps = judge.reading("latents").score(flat(traj.x0), row["prompt"]).view(n, steps)
    pixel_steps = pixel.score(pixel.decode(flat(traj.x0)).clamp(0, 1), row["prompt"]).view(n, steps)
    return {
        "prompt": row["prompt"],
        "group": row["group"],
        "ok": [check(im, row["prompt"]).ok for im in traj.images],
        "judge_steps": judge_steps.round(decimals=4).tolist(),
        "judge_final": judge_final.round(decimals=4).tolist(),
        "logit_steps": logit_steps.round(decimals=4).tolist(),
        "logit_final": logit_final.round(decimals=4).tolist(),
        "judge_x0_steps": x0_steps.round(decimals=4).tolist(),
        "pixel_x0_steps": pixel_steps.round(decimals=5).tolist(),
    }


def run_rows(pipe, judge, pixel, rows: list[dict], out: Path, state: PartialState) -> list[dict]:
    key = lambda r: (r["prompt"], r["group"])  # noqa: E731
    shard = out / f"judge_scores.rank{state.process_index}.jsonl"
    done = {key(r) for path in out.glob("judge_scores.rank*.jsonl") for r in read_rows(path)}
    mine = [r for r in rows[state.process_index :: state.num_processes] if key(r) not in done]
    state.wait_for_everyone()
    with shard.open("a") as f:
        for r in tqdm(mine, desc=f"judge rows (rank {state.process_index})"):
            f.write(json.dumps(judge_row(pipe, judge, pixel, r)) + "\n")
            f.flush()
    state.wait_for_everyone()
    mine = {key(r): r for path in sorted(out.glob("judge_scores.rank*.jsonl")) for r in read_rows(path)}
    return [mine[key(r)] for r in rows]


def detection(rows: list[dict], steps: int) -> dict:
    """Within-(prompt, seed group) AUROC of accepted against rejected candidates, per step and at the end."""
    labels = [float(v) for r in rows for v in r["ok"]]
    groups = [f"{r['prompt']}|{r['group']}" for r in rows for _ in r["ok"]]

    def curve(field: str, index=None) -> list[float | None]:
        values = []
        for s in range(steps):
            scores = [r[field][i][s] for r in rows for i in range(len(r["ok"]))]
            values.append(within_prompt_auroc(scores, labels, groups))
        return values

    def final(field: str) -> float | None:
        return within_prompt_auroc([v for r in rows for v in r[field]], labels, groups)

    return {
        "steps": {
            "judge on z_t": curve("judge_steps"),
            "judge log-odds alone on z_t": curve("logit_steps"),
            "judge on the x0 prediction": curve("judge_x0_steps"),
            "pixel CLIP on decoded x0": curve("pixel_x0_steps"),
            "Latent-CLIP on x0": curve("latent_x0_steps"),
            "NoisyCLIP on z_t": curve("noisy_steps"),
        },
        "final": {
            "judge": final("judge_final"),
            "judge log-odds alone": final("logit_final"),
            "pixel CLIP": final("pixel_final"),
            "Latent-CLIP": final("latent_final"),
            "NoisyCLIP": final("noisy_final"),
        },
    }


def methods(n: int, steps: int) -> dict[str, dict]:
    m = {
        "plain": {"kind": "plain"},
        "full BoN, pixel CLIP": {"kind": "full", "final": "pixel_final"},
        "full BoN, Latent-CLIP": {"kind": "full", "final": "latent_final"},
        "full BoN, judge": {"kind": "full", "final": "judge_final"},
        "full BoN, judge log-odds alone": {"kind": "full", "final": "logit_final"},
        "oracle (checker picks)": {"kind": "oracle"},
    }
    for scorer, reads in (("judge", "judge"), ("judge_x0", "judge on x0")):
        for k in (2, 4, 6, 8):
            for keep in sorted({1, max(1, n // 4), max(1, n // 2)}):
                m[f"early exit, {reads}, k={k}, m={keep}"] = {
                    "kind": "prune",
                    "schedule": PruneSchedule((k,), (keep,)),
                    "scorer": scorer,
                    "final": "judge_final",
                }
    return m


def pairings(prompt: str) -> set[tuple[str, str]]:
    return {(o.colour, o.shape) for o in parse(prompt).objects}


def unit_judge_seconds(judge, repeats: int = 10, verdict: bool = True) -> float:
    """Seconds per item of a judge call at batch 16: `score` (log-odds and clause verdict), or the forward alone."""
    z, t = torch.randn(bon.MAX_N, 4, 8, 8), torch.full((bon.MAX_N,), 500.0)
    prompt = "a red circle left of a blue square"
    call = (lambda: judge.score(z, prompt, t)) if verdict else (lambda: judge(z, [prompt], t))
    with torch.no_grad():
        return median_seconds(call, repeats) / bon.MAX_N


def judge_weights(source: str) -> str:
    """Which weights a judge is: the first 16 hex digits of its judge.safetensors' sha256."""
    return hashlib.sha256((scorer_folder(source) / "judge.safetensors").read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", default="benchmarks/results/best_of_n_heldout", help="best_of_n.py's folder")
    ap.add_argument("--judge", default="shapes-judge", help="the judge: a shipped name or a saved folder")
    ap.add_argument("--out", default="benchmarks/results/judge_heldout")
    ap.add_argument("--limit", type=int, default=None, help="only the first rows (a smoke test; not a result)")
    args = ap.parse_args()
    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [r for path in sorted(Path(args.candidates).glob("candidates.rank*.jsonl")) for r in read_rows(path)]
    base = base[: args.limit]
    base_info = json.loads((Path(args.candidates) / "table.json").read_text())
    trained = json.loads((scorer_folder(args.judge) / "training.json").read_text())
    if base_info["split"] == "train":  # choosing defaults: only train prompts the judge never trained on
        base = [r for r in base if r["prompt"] not in set(trained["train_prompts"])]
    pipe = load_pipeline("shapes")
    judge = load_scorer(args.judge)
    pixel = load_scorer("shapes-pixel", vae=pipe.vae)
    mine = run_rows(pipe, judge, pixel, base, out, state)
    if not state.is_main_process:
        return
    rows = [{**b, **j, "ok_before": b["ok"]} for b, j in zip(base, mine, strict=True)]
    disagree = sum(a != b for r in rows for a, b in zip(r["ok"], r["ok_before"], strict=True))
    steps = len(rows[0]["judge_steps"][0])
    guided = sampling_defaults(pipe).guidance_scale > 1.0
    # every unit cost measured in this run, on the same machine state (the judge's ratio to decode + pixel CLIP)
    units = {"pixel": pixel, "latent": load_scorer("shapes-latent"), "noisy": load_scorer("shapes-noisy")}
    unit = dict(
        bon.unit_costs(pipe, units),
        judge_score=unit_judge_seconds(judge),
        judge_log_odds=unit_judge_seconds(judge, verdict=False),
    )
    rng = random.Random(0)
    table = []
    for n in bon.NS:
        entries = []
        for label, method in methods(n, steps).items():
            acc = [bon.replay(r, n, method, rng)[0] for r in rows]
            cost = bon.compute(method, n, steps, guided, unit)
            k = round(sum(acc))
            entries.append(
                {
                    "n": n,
                    "method": label,
                    "accuracy": round(float(np.mean(acc)), 4),
                    "ci95": list(wilson_interval(k, len(acc))),
                    "per_suite": {
                        s: round(float(np.mean([a for a, r in zip(acc, rows, strict=True) if r["suite"] == s])), 4)
                        for s in SUITE_NAMES
                    },
                    **cost,
                }
            )
        full = next(e for e in entries if e["method"] == "full BoN, pixel CLIP")
        for e in entries:
            e["accuracy_vs_full_pixel"] = round(e["accuracy"] / full["accuracy"], 4)
            e["compute_vs_full_pixel"] = round(e["eval_equivalents"] / full["eval_equivalents"], 4)
        table += entries

    det = detection(rows, steps)
    # honesty: held-out prompts with a colour-shape pairing the judge never saw in training
    seen = set().union(*(pairings(p) for p in trained["train_prompts"] + trained["kept_aside_prompts"]))
    unseen_rows = [r for r in rows if pairings(r["prompt"]) - seen]
    honesty = {"unseen_pairing_rows": len(unseen_rows), "prompts": len({r["prompt"] for r in unseen_rows})}
    for label in ("plain", "full BoN, pixel CLIP", "full BoN, judge", "oracle (checker picks)"):
        method = methods(8, steps)[label]
        acc = [bon.replay(r, 8, method, rng)[0] for r in unseen_rows]
        honesty[f"N=8 {label}"] = round(float(np.mean(acc)), 4) if acc else None
    result_real = real_runs(pipe, judge, rows, steps, rng)
    result = {
        "real_runs": result_real,
        "split": base_info["split"],
        "candidates": len(rows) * bon.MAX_N,
        "prompts": len({r["prompt"] for r in rows}),
        "labels_disagreeing": disagree,
        "judge": args.judge,
        "judge_weights": judge_weights(args.judge),  # judge_with_pixel.py checks it
        "unit_seconds": unit,
        "detection": det,
        "table": table,
        "honesty": honesty,
    }
    (out / "table.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(out, result)


def real_runs(pipe, judge, rows: list[dict], steps: int, rng, per_suite: int = 3) -> dict:
    """The real `best_of_n` / early exit with the judge, N = 8, on a few rows: does it pick what the replay picked?"""
    from latentalign.generation import generate
    from latentalign.methods import BestOfN, EarlyExit

    chosen = [r for s in SUITE_NAMES for r in [r for r in rows if r["suite"] == s and r["group"] == 0][:per_suite]]
    table = methods(8, steps)
    out = {}
    reads = "judge on x0" if judge.space == "latents" else "judge"  # what the real early exit hands the judge
    for label in ("full BoN, judge", f"early exit, {reads}, k=4, m=2"):
        m, agree, seconds = table[label], 0, 0.0
        for r in chosen:
            stage = (
                BestOfN(scorer=judge, n=8)
                if m["kind"] == "full"
                else EarlyExit(scorer=judge, n=8, prune_steps=m["schedule"].steps, keep=m["schedule"].keep)
            )
            res = generate(pipe, r["prompt"], method=stage, seed=r["group"])
            seconds += res.cost.seconds
            agree += int(res.chosen[0] == bon.replay(r, 8, m, rng)[1])
        out[label] = {"agrees_with_replay": f"{agree}/{len(chosen)}", "seconds": round(seconds / len(chosen), 4)}
    return out


def targets(result: dict) -> list[str]:
    det, table = result["detection"], result["table"]
    pixel_final = det["final"]["pixel CLIP"]
    lines = []
    # after TARGET_STEP evaluations: z_t after that many steps, or the x0 prediction the last of them made
    for reads, field, s in (
        ("z_t", "judge on z_t", TARGET_STEP),
        ("the x0 prediction", "judge on the x0 prediction", TARGET_STEP - 1),
    ):
        at8 = det["steps"][field][s]
        if at8 is None:  # no prompt with both an accepted and a rejected sample (a --limit smoke run)
            lines.append(f"- detection: judge on {reads}: no prompt with both kinds of sample")
            continue
        lines.append(
            f"- detection: judge on {reads} after {TARGET_STEP} of 20 evaluations, within-prompt AUROC {at8:.3f} "
            f"against 0.9 x pixel CLIP's final {pixel_final:.3f} = {0.9 * pixel_final:.3f}: "
            f"{'met' if at8 >= 0.9 * pixel_final else 'NOT met'}"
        )  # fmt: skip
    row = lambda n, m: next(e for e in table if e["n"] == n and e["method"] == m)  # noqa: E731
    pix, orc, jud = row(8, "full BoN, pixel CLIP"), row(8, "oracle (checker picks)"), row(8, "full BoN, judge")
    half = pix["accuracy"] + 0.5 * (orc["accuracy"] - pix["accuracy"])
    lines.append(
        f"- Best-of-8 with the judge {jud['accuracy']:.3f} against half the pixel-CLIP-to-oracle gap {half:.3f}: "
        f"{'met' if jud['accuracy'] >= half else 'NOT met'}"
    )
    for n, reads in ((n, reads) for reads in ("z_t", "x0") for n in bon.NS):
        ok = [
            e
            for e in table
            if e["n"] == n
            and e["method"].startswith("early exit, judge")
            and (reads == "x0") == ("on x0" in e["method"])
            and e["accuracy_vs_full_pixel"] >= 1
            and e["compute_vs_full_pixel"] <= 0.35
        ]
        best = max(ok, key=lambda e: e["accuracy"]) if ok else None
        lines.append(
            f"- early exit N={n}, the judge pruning on {reads}, >= 100% of full pixel CLIP at <= 35% compute: "
            + (f"met ({best['method']}: {best['accuracy_vs_full_pixel']:.3f} at {best['compute_vs_full_pixel']:.3f})"
               if best else "NOT met")
        )  # fmt: skip
    unit = result["unit_seconds"]
    for key, what in (("judge_score", "a judge call"), ("judge_log_odds", "its log-odds alone (no clause verdict)")):
        ratio = unit[key] / (unit["vae_decode"] + unit["pixel_score"])
        lines.append(f"- {what} costs {ratio:.3f} of decode + pixel CLIP (target <= 0.25): "
                     f"{'met' if ratio <= 0.25 else 'NOT met'}")  # fmt: skip
    return lines


def write_report(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = result["detection"]
    lines = [
        f"{result['split']} split: {result['prompts']} prompts, {result['candidates']} candidates (16 per prompt and "
        f"seed group), the candidates of best_of_n_{result['split']} regenerated ({result['labels_disagreeing']} "
        f"checker labels differ from that run). Judge: {result['judge']}.",
        "",
        "## Targets",
        *targets(result),
        "",
        "## Detection: within-(prompt, seed group) AUROC after s steps",
        "",
        "| scorer | " + " | ".join(f"s={s}" for s in range(0, 20, 2)) + " | final |",
        "|---|" + "---:|" * 11,
    ]
    finals = {
        "judge on z_t": "judge",
        "judge log-odds alone on z_t": "judge log-odds alone",
        "judge on the x0 prediction": "judge",
        "pixel CLIP on decoded x0": "pixel CLIP",
        "Latent-CLIP on x0": "Latent-CLIP",
        "NoisyCLIP on z_t": "NoisyCLIP",
    }
    cell = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731  (None: no prompt with both kinds of sample)
    for name, curve in det["steps"].items():
        cells = [cell(curve[s]) for s in range(0, 20, 2)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cell(det['final'][finals[name]])} |")
    lines += [
        "",
        "## Best-of-N (accuracy by the exact checker; compute in denoiser-evaluation equivalents)",
        "",
        "| N | method | accuracy | 95% CI | eval-equivalents | accuracy / full pixel | compute / full pixel |",
        "|---:|---|---:|---|---:|---:|---:|",
    ]
    for e in result["table"]:
        lines.append(
            f"| {e['n']} | {e['method']} | {e['accuracy']:.3f} | [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] | "
            f"{e['eval_equivalents']:.1f} | {e['accuracy_vs_full_pixel']:.3f} | {e['compute_vs_full_pixel']:.3f} |"
        )
    h = result["honesty"]
    lines += [
        "",
        "## Honesty: prompts with a colour-shape pairing the judge never saw in training",
        "",
        f"{h['unseen_pairing_rows']} (prompt, seed group) rows over {h['prompts']} prompts, N = 8: "
        + ", ".join(f"{k[4:]} {v:.3f}" for k, v in h.items() if k.startswith("N=8") and v is not None),
        "",
        "Real runs (N = 8): " + json.dumps(result["real_runs"]),
        "",
        "Unit costs (ms per item, batch 16, measured in this run): "
        + ", ".join(f"{k} {v * 1000:.3f}" for k, v in result["unit_seconds"].items()),
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in det["steps"].items():
        ax.plot(range(len(curve)), curve, marker="o", ms=3, label=name)
    ax.axhline(0.9 * det["final"]["pixel CLIP"], color="k", ls="--", lw=0.8, label="0.9 x pixel CLIP final")
    ax.axvline(TARGET_STEP, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("steps done (of 20)")
    ax.set_ylabel("within-prompt AUROC (held out)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=120)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
