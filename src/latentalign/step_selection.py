"""Automatic step selection for IterRef (Grimal, Le Borgne, Ferret: one refinement at a well-chosen step).

`select_steps` runs one IterRef at each candidate step of the schedule on TRAIN prompts, beside plain generation on
the same prompts and seeds, and judges every image: the checker on the Shapes world, elsewhere a scorer the user
names (its mean score). Rows are appended one per image (`rows*.jsonl`, one file per shard), so an interrupted run
resumes where it stopped; the summary gives each step's accuracy with a 95% Wilson interval and a same-seed sign
test against plain, a plot (the paper's Figure 4 on this world) and the chosen step, which `record=True` writes
into the pipeline folder's latentalign.json under "iterref"."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from tqdm.auto import tqdm

from .bench import plan, read_rows, record_run, sign_test, wilson_interval
from .core import DEFAULTS_FILE, default_guidance, default_steps, sampling_defaults
from .files import atomic_write_text

PLAIN = -1  # the step value of plain generation's rows
SELECTION_SUITES = ("two_objects", "relation")  # what attention losses are for: two subjects to keep apart


def shard_from_environment() -> tuple[int, int]:
    """(index, count) of this process among `accelerate launch`'s (or torchrun's) processes; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _judge_rows(scorer, images, prompts) -> list[dict]:
    if scorer is None:
        from .world import check

        verdicts = [check(im, p) for im, p in zip(images, prompts, strict=True)]
        return [{"ok": v.ok, "failures": [f.kind for f in v.failures]} for v in verdicts]
    import numpy as np
    import torch

    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])).permute(0, 3, 1, 2)
    with torch.no_grad():
        scores = scorer.score(x, prompts).float().tolist()
    return [{"score": s} for s in scores]


def select_steps(
    pipe,
    out: str | Path,
    *,
    loss: str = "attend-and-excite",
    candidates: list[int] | None = None,
    suites: list[str] | tuple[str, ...] = SELECTION_SUITES,
    split: str = "train",
    seeds: int = 2,
    limit_prompts: int | None = 16,
    steps: int | None = None,
    guidance: float | None = None,
    options: dict | None = None,
    scorer=None,
    batch: int = 16,
    shard: tuple[int, int] | None = None,
    record: bool = False,
    model_folder: str | Path | None = None,
) -> dict:
    """Accuracy per IterRef step on `split` prompts, the plot and the chosen step (see the module docstring).
    `options` are IterRef's (step_size, threshold, max_refine_iterations, words, ...); `scorer` (a Scorer, or None
    for the Shapes checker) judges each image; `shard` = (index, count) runs every count-th candidate."""
    from .generation import generate
    from .methods import IterRef

    if split == "heldout":
        raise ValueError("steps are chosen on train prompts; held-out prompts are never used to choose anything")
    shapes = sampling_defaults(pipe).world == "shapes"
    if scorer is None and not shapes:
        raise ValueError("outside the Shapes world select-steps needs a scorer to judge the images (--scorer)")
    if scorer is not None and getattr(scorer, "space", "pixels") != "pixels":
        raise ValueError(f"select-steps judges decoded images: the scorer reads {scorer.space}, not pixels")
    if record and model_folder is None:
        raise ValueError("record=True needs the pipeline's folder (model_folder) to write latentalign.json into")
    steps = steps or default_steps(pipe)
    guidance = default_guidance(pipe) if guidance is None else guidance
    options = dict(options or {})
    candidates = list(range(steps)) if candidates is None else sorted(set(candidates))
    if not candidates or any(not 0 <= c < steps for c in candidates):
        raise ValueError(f"candidate steps must lie in 0..{steps - 1}, got {candidates}")
    index, count = shard or shard_from_environment()
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    IterRef(steps=(candidates[0],), loss=loss, **options)  # options checked before any work
    jobs = plan(list(suites), seeds, split=split, limit_prompts=limit_prompts)
    settings = {
        "loss": loss,
        "split": split,
        "suites": list(suites),
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(options.items())},
        "judge": "checker" if scorer is None else str(getattr(scorer, "kind", type(scorer).__name__)),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "settings.json"
    if record_path.exists():
        saved = json.loads(record_path.read_text())["settings"]
        if saved != settings:
            raise ValueError(f"{out} holds a selection made with other settings: {saved}; use another --out")
    record_run(record_path, {"settings": settings})

    rows = [r for path in sorted(out.glob("rows*.jsonl")) for r in read_rows(path)]
    done = {(r["step"], r["prompt"], r["seed"]) for r in rows}
    mine = [PLAIN, *candidates][index::count]
    todo = [(s, j) for s in mine for j in jobs if (s, j[1], j[2]) not in done]
    path = out / ("rows.jsonl" if count == 1 else f"rows-{index}-of-{count}.jsonl")
    with (
        path.open("a") as f,
        tqdm(
            total=len(mine) * len(jobs), initial=len(mine) * len(jobs) - len(todo), desc="select-steps", unit="img"
        ) as bar,
    ):
        for step in dict.fromkeys(s for s, _ in todo):
            chunk_all = [j for s, j in todo if s == step]
            method = "plain" if step == PLAIN else IterRef(steps=(step,), loss=loss, **options)
            for i in range(0, len(chunk_all), batch):
                chunk = chunk_all[i : i + batch]
                prompts = [p for _, p, _ in chunk]
                result = generate(
                    pipe,
                    prompts,
                    seed=[s for _, _, s in chunk],
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    method=method,
                )
                evals = result.cost.denoiser_evals / len(chunk)
                seconds = result.cost.seconds / len(chunk)
                for (name, prompt, seed), judged in zip(
                    chunk, _judge_rows(scorer, result.images, prompts), strict=True
                ):
                    row = {
                        "step": step,
                        "suite": name,
                        "prompt": prompt,
                        "seed": seed,
                        **judged,
                        "evals": evals,
                        "seconds": round(seconds, 4),
                    }
                    f.write(json.dumps(row) + "\n")  # one flushed write per row: never half a row
                    f.flush()
                    rows.append(row)
                    bar.update(1)
    return summarise_selection(pipe, out, rows, jobs, [PLAIN, *candidates], settings, record, model_folder)


def _timesteps(pipe, steps: int) -> list[float]:
    from .adapters import Denoiser

    return [float(t) for t in Denoiser(pipe).new_scheduler(steps).timesteps]


def summarise_selection(pipe, out: Path, rows, jobs, planned, settings, record, model_folder) -> dict:
    """Per-step table (accuracy or mean score, CI, sign test against plain), plot, choice; written atomically."""
    by_step: dict[int, dict] = {}
    for r in rows:
        by_step.setdefault(r["step"], {})[(r["prompt"], r["seed"])] = r
    timesteps = _timesteps(pipe, settings["num_inference_steps"])
    checker = settings["judge"] == "checker"
    plain = by_step.get(PLAIN, {})
    table = []
    for step in planned:
        got = by_step.get(step, {})
        if not got:
            continue
        values = [float(r["ok"]) if checker else r["score"] for r in got.values()]
        n, mean = len(values), statistics.fmean(values)
        if checker:
            lo, hi = wilson_interval(int(sum(values)), n)
        else:
            half = 1.96 * (statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0)
            lo, hi = mean - half, mean + half
        row = {
            "step": step,
            "timestep": None if step == PLAIN else timesteps[step],
            "n": n,
            "value": round(mean, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "per_suite": {
                s: round(
                    statistics.fmean(
                        [float(r["ok"]) if checker else r["score"] for r in got.values() if r["suite"] == s]
                    ),
                    4,
                )
                for s in settings["suites"]
                if any(r["suite"] == s for r in got.values())
            },
            "denoiser_evals": round(statistics.fmean(r["evals"] for r in got.values()), 1),
            "seconds": round(statistics.fmean(r["seconds"] for r in got.values()), 4),
        }
        if step != PLAIN and plain:
            shared = [k for k in got if k in plain]
            key = "ok" if checker else "score"
            wins = sum(got[k][key] > plain[k][key] for k in shared)
            losses = sum(got[k][key] < plain[k][key] for k in shared)
            row.update(wins=wins, losses=losses, p_vs_plain=round(sign_test(wins, losses), 4))
        table.append(row)
    refined = [r for r in table if r["step"] != PLAIN]
    complete = len(by_step) == len(planned) and all(len(by_step[s]) == len(jobs) for s in planned)
    best = max(refined, key=lambda r: (r["value"], -r["denoiser_evals"], -r["step"])) if refined else None
    summary = {
        "settings": settings,
        "complete": complete,
        "images_per_step": len(jobs),
        "steps": table,
        "selected": best["step"] if best and complete else None,
        "metric": "accuracy (checker)" if checker else f"mean score ({settings['judge']})",
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "summary.md", _table_md(summary) + "\n")
    if refined:
        _plot(summary, out / "steps.png")
    if record and summary["selected"] is not None:
        record_selection(model_folder, summary)
    return summary


def _table_md(summary: dict) -> str:
    suites = summary["settings"]["suites"]
    lines = [
        f"| step | timestep | {summary['metric']} | 95% CI | {' | '.join(suites)} | fixed / broken vs plain | "
        "p | denoiser evals |",
        "|" + "---|" * (7 + len(suites)),
    ]
    for r in summary["steps"]:
        step = "plain" if r["step"] == PLAIN else str(r["step"])
        t = "" if r["timestep"] is None else f"{r['timestep']:.0f}"
        versus = f"{r['wins']} / {r['losses']}" if "wins" in r else ""
        p = f"{r['p_vs_plain']:.3f}" if "p_vs_plain" in r else ""
        cells = " | ".join(f"{r['per_suite'].get(s, float('nan')):.3f}" for s in suites)
        mark = " **selected**" if r["step"] == summary["selected"] else ""
        lines.append(
            f"| {step}{mark} | {t} | {r['value']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
            f"{cells} | {versus} | {p} | {r['denoiser_evals']} |"
        )
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refined = [r for r in summary["steps"] if r["step"] != PLAIN]
    plain = next((r for r in summary["steps"] if r["step"] == PLAIN), None)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [r["step"] for r in refined]
    ys = [r["value"] for r in refined]
    err = [[r["value"] - r["ci95"][0] for r in refined], [r["ci95"][1] - r["value"] for r in refined]]
    ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=f"IterRef ({summary['settings']['loss']}) at the step")
    if plain is not None:
        ax.axhline(plain["value"], color="grey", ls="--", label="plain")
        ax.axhspan(*plain["ci95"], color="grey", alpha=0.15)
    if summary["selected"] is not None:
        ax.axvline(summary["selected"], color="tab:red", alpha=0.4, label=f"selected: step {summary['selected']}")
    ax.set_xlabel("refinement step (0 = the first, at the highest noise)")
    ax.set_ylabel(summary["metric"])
    ax.set_title(f"one IterRef step, {summary['settings']['split']} prompts, {summary['images_per_step']} images each")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def record_selection(folder: str | Path, summary: dict) -> Path:
    """Write the chosen step (and the loss and options it was chosen with) into `folder`'s latentalign.json under
    "iterref", keeping every other key; atomic."""
    path = Path(folder) / DEFAULTS_FILE
    if not (Path(folder) / "model_index.json").exists():
        raise ValueError(f"{folder} is not a pipeline folder (no model_index.json) to record the step in")
    data = json.loads(path.read_text()) if path.exists() else {}
    settings = summary["settings"]
    data["iterref"] = {"steps": [summary["selected"]], "loss": settings["loss"], **settings["options"]}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path
