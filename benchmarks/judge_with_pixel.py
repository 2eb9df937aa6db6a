"""The latent judge beside pixel CLIP for Best-of-N's final pick: score = judge + w x pixel CLIP on the decode.

The judge (`shapes-judge`) and pixel CLIP read different things (a joint reading of the latent cells and the prompt;
a dual encoder on the decoded pixels), so a weighted sum may rank candidates better than either. The weight is
chosen on TRAIN prompts, then reported once held out:

1. `--stage train [--judge J --out DIR]`: the judge's kept-aside train prompts (never trained on; another judge J
   must have kept aside the same ones) and `judge_reading.py`'s 16 fresh seeds each (two groups of 8). The final
   latents are regenerated (the checker's labels, and for `shapes-judge` its scores, are compared with
   `benchmarks/results/judge_reading_train`'s rows: the run stops if they differ), pixel CLIP reads their decode,
   and Best-of-8 is measured for every w in WEIGHTS. The rule: the highest Best-of-8; a w within 0.01 of it that
   is smaller wins (w = 0 is the judge alone, which needs no decode).
2. `--stage heldout`: the chosen w, once, on the held-out candidates both `judge_heldout` (the judge's scores) and
   `best_of_n_heldout` (pixel CLIP's) already scored: full Best-of-N at N = 4, 8, 16 and the judge's early-exit
   schedules with the weighted final pick, replayed with `best_of_n.py`'s replay, and their compute from the unit
   costs `judge_heldout` measured (a final pick among m > 1 kept candidates adds m - 1 decodes, the chosen one's
   being counted already, and m pixel-CLIP calls; w = 0 adds nothing).

python benchmarks/judge_with_pixel.py --stage train --out benchmarks/results/judge_with_pixel_train
python benchmarks/judge_with_pixel.py --stage heldout --out benchmarks/results/judge_with_pixel_heldout
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import best_of_n as bon  # noqa: E402
import judge_reading as reading  # noqa: E402
import judge_study as study  # noqa: E402

from latentalign import load_pipeline  # noqa: E402
from latentalign.bench import read_rows, wilson_interval  # noqa: E402
from latentalign.files import atomic_write_text  # noqa: E402
from latentalign.scorers import load_scorer  # noqa: E402
from latentalign.scorers.factory import scorer_folder  # noqa: E402
from latentalign.training.judge import within_prompt_auroc  # noqa: E402
from latentalign.trajectories import record_trajectories  # noqa: E402
from latentalign.world import check  # noqa: E402
from latentalign.world.suites import SUITE_NAMES  # noqa: E402

WEIGHTS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)  # pixel CLIP cosines span ~0.05
TIE = 0.01  # a smaller weight within this of the best train Best-of-8 wins
TRAIN_OUT = Path("benchmarks/results/judge_with_pixel_train")
HELDOUT = {"judge": Path("benchmarks/results/judge_heldout"), "pixel": Path("benchmarks/results/best_of_n_heldout")}
# which judge scored a row or chose a weight: the first 16 hex digits of its weights' sha256 (rows and tables written
# before this was recorded are the first shipped judge's, archived at benchmarks/results/archive/shapes-judge_run1)
FIRST_JUDGE = "01628ddf15ea910b"  # judge_study.judge_weights of the archived first judge


@torch.no_grad()
def train_row(pipe, judge, pixel, prompt: str) -> dict:
    """`judge_reading.py`'s samples of one kept-aside prompt again: labels, the judge and pixel CLIP on the finals."""
    seeds = [reading.SEED_BASE + i for i in range(reading.SEEDS)]
    traj = record_trajectories(pipe, [prompt] * reading.SEEDS, seeds, batch=reading.SEEDS, progress=False)
    return {
        "prompt": prompt,
        "ok": [check(im, prompt).ok for im in traj.images],
        "judge_final": judge.reading("latents").score(traj.final, prompt).round(decimals=4).tolist(),
        "pixel_final": pixel.score(pixel.decode(traj.final), prompt).round(decimals=5).tolist(),
    }


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: no prompt with both kinds of sample


def mixed(row: dict, w: float) -> list[float]:
    return [j + w * p for j, p in zip(row["judge_final"], row["pixel_final"], strict=True)]


def best_of_groups(rows: list[dict], scores) -> list[float]:
    """Best-of-8 over each prompt's two groups of 8 seeds; `scores(row)` gives the 16 candidates' scores."""
    out = []
    for r in rows:
        s = scores(r)
        for g in range(0, reading.SEEDS, reading.GROUP):
            idx = list(range(g, g + reading.GROUP))
            out.append(float(r["ok"][max(idx, key=lambda i: s[i])]))
    return out


def train_stage(out: Path, threads: int, limit: int | None, judge_name: str = "shapes-judge") -> None:
    torch.set_num_threads(threads)
    kept_aside = json.loads((scorer_folder(judge_name) / "training.json").read_text())["kept_aside_prompts"]
    shipped = json.loads((scorer_folder("shapes-judge") / "training.json").read_text())["kept_aside_prompts"]
    if set(kept_aside) != set(shipped):
        raise SystemExit(f"{judge_name} kept aside other train prompts than shapes-judge: the tables would not compare")
    prompts = shipped[:limit]
    # the same seeds give the same samples and labels as judge_reading_train's; its scores are the first judge's
    judge_id = study.judge_weights(judge_name)
    same_judge = judge_id == FIRST_JUDGE
    committed = {r["prompt"]: r for r in read_rows(Path("benchmarks/results/judge_reading_train/rows.jsonl"))}
    pipe = load_pipeline("shapes")
    judge, pixel = load_scorer(judge_name), load_scorer("shapes-pixel", vae=pipe.vae)
    path = out / "rows.jsonl"
    earlier = read_rows(path) if path.exists() else []
    others = {r.get("judge_weights", FIRST_JUDGE) for r in earlier} - {judge_id}
    if others:
        raise SystemExit(f"{path} holds rows another judge scored ({sorted(others)[0]}): pass another --out")
    done = {r["prompt"] for r in earlier}
    with path.open("a") as f:
        for prompt in tqdm([p for p in prompts if p not in done], desc="kept-aside train prompts"):
            f.write(json.dumps({**train_row(pipe, judge, pixel, prompt), "judge_weights": judge_id}) + "\n")
            f.flush()
    rows = {r["prompt"]: r for r in read_rows(path)}
    rows = [rows[p] for p in prompts]
    labels_differ = sum(a != b for r in rows for a, b in zip(r["ok"], committed[r["prompt"]]["ok"], strict=True))
    judge_gap = max(
        abs(a - b) for r in rows for a, b in zip(r["judge_final"], committed[r["prompt"]]["final"], strict=True)
    ) if same_judge else None  # fmt: skip
    if labels_differ or (judge_gap is not None and judge_gap > 2e-4):
        raise SystemExit(
            f"the regenerated samples differ from judge_reading_train's ({labels_differ} labels, judge scores by up to"
            f" {judge_gap:.4f}): not the same candidates"
        )
    labels = [float(v) for r in rows for v in r["ok"]]
    groups = [r["prompt"] for r in rows for _ in r["ok"]]
    table = {}
    for w in WEIGHTS:
        acc = best_of_groups(rows, lambda r, w=w: mixed(r, w))
        table[str(w)] = {
            "best_of_8": round(float(np.mean(acc)), 4),
            "ci95": list(wilson_interval(round(sum(acc)), len(acc))),
            "within_prompt_auroc": within_prompt_auroc([v for r in rows for v in mixed(r, w)], labels, groups),
        }
    pixel_alone = best_of_groups(rows, lambda r: r["pixel_final"])
    oracle = [float(any(r["ok"][g : g + reading.GROUP])) for r in rows for g in range(0, reading.SEEDS, reading.GROUP)]
    best = max(v["best_of_8"] for v in table.values())
    chosen = min(float(w) for w, v in table.items() if v["best_of_8"] >= best - TIE)
    result = {
        "split": "train (the judge's kept-aside prompts)",
        "judge": judge_name,
        "judge_weights": judge_id,
        "command": f"python benchmarks/judge_with_pixel.py --stage train --judge {judge_name} --out {out}",
        "prompts": len(rows),
        "samples": len(labels),
        "labels_differing_from_judge_reading_train": labels_differ,
        # None: another judge than the one judge_reading_train's scores are of (not compared)
        "largest_judge_score_difference_from_judge_reading_train": None if judge_gap is None else round(judge_gap, 4),
        "first sample (plain)": round(float(np.mean([r["ok"][g] for r in rows for g in (0, reading.GROUP)])), 4),
        "pixel CLIP alone": round(float(np.mean(pixel_alone)), 4),
        "oracle": round(float(np.mean(oracle)), 4),
        "judge + w x pixel CLIP": table,
        "limit": limit,
        "weights": list(WEIGHTS),
        "rule": f"the highest Best-of-8; a smaller w within {TIE} of it wins",
        "chosen_w": chosen,
    }
    atomic_write_text(out / "table.json", json.dumps(result, indent=1) + "\n")
    lines = [
        f"{result['split']}: judge {judge_name}, {result['prompts']} prompts x 16 seeds (judge_reading.py's), "
        "Best-of-8 over two groups "
        f"of 8 a prompt ({len(oracle)} picks). Checker labels differing from judge_reading_train: {labels_differ}; "
        "largest judge-score difference: "
        + ("not compared (another judge)." if judge_gap is None else f"{judge_gap:.4f}."),
        "",
        "| final pick | Best-of-8 | 95% CI | within-prompt AUROC |",
        "|---|---:|---|---:|",
        f"| first sample (plain) | {result['first sample (plain)']:.3f} | | |",
        f"| pixel CLIP alone | {result['pixel CLIP alone']:.3f} | | |",
    ]
    for w, v in table.items():
        name = "judge alone" if float(w) == 0 else f"judge + {float(w):g} x pixel CLIP"
        lines.append(f"| {name} | {v['best_of_8']:.3f} | [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | "
                     f"{cell(v['within_prompt_auroc'])} |")  # fmt: skip
    lines += [f"| oracle | {result['oracle']:.3f} | | |", "", f"Rule: {result['rule']}. Chosen: w = {chosen:g}."]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def final_pick_extra(method: dict, n: int, w: float) -> int:
    """Candidates the weighted final pick pixel-scores on top of the judge's own cost (w = 0: none)."""
    if w == 0:
        return 0
    if method["kind"] == "full":
        return n
    if method["kind"] == "prune":
        return method["schedule"].keep[-1] if method["schedule"].keep[-1] > 1 else 0
    return 0


def heldout_stage(out: Path, train_out: Path, heldout: dict[str, Path] = HELDOUT) -> None:
    train = json.loads((train_out / "table.json").read_text())
    study_table = json.loads((heldout["judge"] / "table.json").read_text())
    if train.get("judge_weights", FIRST_JUDGE) != study_table.get("judge_weights", FIRST_JUDGE):
        raise SystemExit(f"{train_out} chose w for another judge than the one that scored {heldout['judge']}")
    kept_aside = json.loads((scorer_folder("shapes-judge") / "training.json").read_text())["kept_aside_prompts"]
    if train["limit"] is not None or train["prompts"] != len(kept_aside) or train["weights"] != list(WEIGHTS):
        raise SystemExit(f"{train_out} is not a full train stage with this grid: run the train stage again")
    chosen = train["chosen_w"]
    pixel_rows = {
        (r["prompt"], r["group"]): r
        for path in sorted(heldout["pixel"].glob("candidates.rank*.jsonl"))
        for r in read_rows(path)
    }
    judge_rows = [r for path in sorted(heldout["judge"].glob("judge_scores.rank*.jsonl")) for r in read_rows(path)]
    if len({(r["prompt"], r["group"]) for r in judge_rows}) != len(judge_rows) or len(judge_rows) != len(pixel_rows):
        raise SystemExit("the two held-out runs do not hold the same (prompt, group) rows")
    rows = []
    for j in judge_rows:
        p = pixel_rows[(j["prompt"], j["group"])]
        if p["ok"] != j["ok"]:
            raise SystemExit(f"the two held-out runs disagree on the labels of {j['prompt']!r}, group {j['group']}")
        rows.append({**p, **j, "mix_final": mixed({**j, "pixel_final": p["pixel_final"]}, chosen)})
    rows.sort(key=lambda r: (SUITE_NAMES.index(r["suite"]), r["prompt"], r["group"]))
    unit = study_table["unit_seconds"]
    steps = len(rows[0]["judge_steps"][0])
    rng = random.Random(0)
    table = []
    for n in bon.NS:
        methods = {k: v for k, v in study.methods(n, steps).items() if k != "full BoN, judge log-odds alone"}
        methods[f"full BoN, judge + {chosen:g} x pixel CLIP"] = {"kind": "full", "final": "mix_final"}
        for label, m in list(methods.items()):
            if m["kind"] == "prune" and m["schedule"].keep[-1] > 1:
                methods[f"{label}, final pick judge + {chosen:g} x pixel CLIP"] = {**m, "final": "mix_final"}
        for label, m in methods.items():
            acc = [bon.replay(r, n, m, rng)[0] for r in rows]
            judge_m = {**m, "final": "judge_final"} if m.get("final") == "mix_final" else m
            cost = bon.compute(judge_m, n, steps, True, unit)
            if m.get("final") == "mix_final":
                extra = final_pick_extra(m, n, chosen)  # the chosen candidate's decode is counted already
                cost["vae_decodes"] += max(0, extra - 1)
                cost["scorer_calls"] += extra
                seconds = max(0, extra - 1) * unit["vae_decode"] + extra * unit["pixel_score"]
                cost["eval_equivalents"] += seconds / unit["denoiser_eval"]
            table.append({"n": n, "method": label, "accuracy": round(float(np.mean(acc)), 4),
                          "ci95": list(wilson_interval(round(sum(acc)), len(acc))), **cost})  # fmt: skip
        full = next(e for e in table if e["n"] == n and e["method"] == "full BoN, pixel CLIP")
        for e in table:
            if e["n"] == n:
                e["accuracy_vs_full_pixel"] = round(e["accuracy"] / full["accuracy"], 4)
                e["compute_vs_full_pixel"] = round(e["eval_equivalents"] / full["eval_equivalents"], 4)
    labels = [float(v) for r in rows for v in r["ok"]]
    groups = [f"{r['prompt']}|{r['group']}" for r in rows for _ in r["ok"]]
    auroc = {
        k: within_prompt_auroc([v for r in rows for v in r[f]], labels, groups)
        for k, f in (("judge", "judge_final"), ("pixel CLIP", "pixel_final"), ("mixed", "mix_final"))
    }
    at = lambda n, m: next(e for e in table if e["n"] == n and e["method"] == m)  # noqa: E731
    pix, orc = at(8, "full BoN, pixel CLIP"), at(8, "oracle (checker picks)")
    mix = at(8, f"full BoN, judge + {chosen:g} x pixel CLIP")
    half = pix["accuracy"] + 0.5 * (orc["accuracy"] - pix["accuracy"])
    targets = [
        f"- Best-of-8, judge + {chosen:g} x pixel CLIP: {mix['accuracy']:.3f} against half the pixel-CLIP-to-oracle "
        f"gap {half:.3f}: {'met' if mix['accuracy'] >= half else 'NOT met'}"
    ]
    for n in bon.NS:
        ok = [e for e in table if e["n"] == n and e["method"].startswith("early exit")
              and e["accuracy_vs_full_pixel"] >= 1 and e["compute_vs_full_pixel"] <= 0.35]  # fmt: skip
        best = max(ok, key=lambda e: e["accuracy"]) if ok else None
        targets.append(
            f"- early exit N={n} (any final pick), >= 100% of full pixel CLIP at <= 35% compute: "
            + (f"met ({best['method']}: {best['accuracy_vs_full_pixel']:.3f} at {best['compute_vs_full_pixel']:.3f})"
               if best else "NOT met")
        )  # fmt: skip
    result = {
        "real_runs": real_runs(rows, steps, chosen, rng),
        "split": "heldout",
        "command": f"python benchmarks/judge_with_pixel.py --stage heldout --out {out}",
        "w (chosen on train prompts)": chosen,
        "rows": len(rows),
        "within_prompt_auroc_final": auroc,
        "targets": targets,
        "table": table,
    }
    atomic_write_text(out / "table.json", json.dumps(result, indent=1) + "\n")
    lines = [
        f"Held out, once: {len(rows)} (prompt, seed group) rows of 16 candidates (judge_heldout's and "
        f"best_of_n_heldout's scores of the same candidates), w = {chosen:g} chosen on train prompts "
        f"({train_out}). Within-prompt AUROC of the final latents: "
        + ", ".join(f"{k} {cell(v)}" for k, v in auroc.items()),
        "",
        *targets,
        "",
        "The library's own runs (N = 8, `shapes-judge-pixel` as the final pick) against the replay: "
        + "; ".join(f"{k}: {v['agrees_with_replay']} agree" for k, v in result["real_runs"].items()),
        "",
        "| N | method | accuracy | 95% CI | vs full pixel CLIP | compute vs full pixel CLIP |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for e in table:
        lines.append(f"| {e['n']} | {e['method']} | {e['accuracy']:.3f} | [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] "
                     f"| {e['accuracy_vs_full_pixel']:.3f} | {e['compute_vs_full_pixel']:.3f} |")  # fmt: skip
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


def real_runs(rows: list[dict], steps: int, w: float, rng, per_suite: int = 3) -> dict:
    """The library's own runs, N = 8, with the shipped sum (`shapes-judge-pixel`, which must carry the chosen w) as
    the final pick, on a few rows: does each pick what the replay picked?"""
    from latentalign.generation import generate
    from latentalign.methods import BestOfN, EarlyExit
    from latentalign.scorers.factory import SHIPPED_SUMS

    if dict(SHIPPED_SUMS["shapes-judge-pixel"])["shapes-pixel"] != w:
        raise SystemExit(f"shapes-judge-pixel does not carry the chosen weight {w:g}: update SHIPPED_SUMS first")
    pipe = load_pipeline("shapes")
    total = load_scorer("shapes-judge-pixel", vae=pipe.vae)
    chosen = [r for s in SUITE_NAMES for r in [r for r in rows if r["suite"] == s and r["group"] == 0][:per_suite]]
    label = f"early exit, judge on x0, k=2, m=2, final pick judge + {w:g} x pixel CLIP"
    ee = {**study.methods(8, steps)["early exit, judge on x0, k=2, m=2"], "final": "mix_final"}
    stages = {
        f"full BoN, judge + {w:g} x pixel CLIP": ({"kind": "full", "final": "mix_final"}, BestOfN(n=8, scorer=total)),
        label: (ee, EarlyExit(n=8, scorer="shapes-judge-x0", final_scorer=total, prune_steps=(2,), keep=(2,))),
    }
    out = {}
    for name, (m, stage) in stages.items():
        agree, seconds = 0, 0.0
        for r in tqdm(chosen, desc=name[:40]):
            res = generate(pipe, r["prompt"], method=stage, seed=r["group"])
            seconds += res.cost.seconds
            agree += int(res.chosen[0] == bon.replay(r, 8, m, rng)[1])
        out[name] = {"agrees_with_replay": f"{agree}/{len(chosen)}", "seconds": round(seconds / len(chosen), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("train", "heldout"), required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--train-out", default=str(TRAIN_OUT), help="the train stage's folder (its chosen w)")
    ap.add_argument("--judge", default="shapes-judge", help="train stage: the judge (a shipped name or a folder)")
    ap.add_argument("--judge-heldout", default=str(HELDOUT["judge"]), help="held-out stage: judge_study.py's folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first train prompts (a smoke test; not a result)")
    args = ap.parse_args()
    if args.stage == "train" and args.judge != "shapes-judge" and args.out is None:
        raise SystemExit(f"--judge {args.judge}: pass --out (the default folder holds shapes-judge's table)")
    out = Path(args.out or (TRAIN_OUT if args.stage == "train" else "benchmarks/results/judge_with_pixel_heldout"))
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "train":
        train_stage(out, args.threads, args.limit, args.judge)
    else:
        if not (Path(args.train_out) / "table.json").exists():
            raise SystemExit(f"run the train stage first: no {Path(args.train_out) / 'table.json'}")
        heldout_stage(out, Path(args.train_out), {**HELDOUT, "judge": Path(args.judge_heldout)})


if __name__ == "__main__":
    main()
