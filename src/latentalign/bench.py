"""GenEval-style benchmark on the Shapes world: generate every (prompt, seed) of the suites, check each image.

Results go to `results.jsonl`, one row per (prompt, seed), written whole and flushed, so an interrupted run
resumes without losing or duplicating a row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import statistics
import time
from itertools import chain, zip_longest
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from .cost import BACKWARD_TO_FORWARD, forward_equivalents
from .embedded import model_id
from .generation import generate, resolve, sampling_defaults
from .world import SUITE_NAMES, check, suite

RESULTS = "results.jsonl"
GRID_ROWS = 8  # prompts shown in grid.png
GRID_COLS = 8  # seeds shown in grid.png
GRID_SCALE = 4


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (Wilson, 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auroc(scores, labels) -> float:
    """Area under the ROC curve: the probability a positive outscores a negative (ties count half)."""
    import numpy as np

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    values = np.concatenate([pos, neg])
    for v in np.unique(values):  # average ranks over ties
        tie = values == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def file_stem(prompt: str, seed: int) -> str:
    """A file name for one sample: the prompt as a slug, and the seed. A prompt the slug does not spell out (case,
    punctuation, more than 80 characters) gets a short hash of itself, so two prompts never share a file."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    if slug[:80] != prompt.replace(" ", "_"):
        slug = f"{slug[:80]}_{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
    return f"{slug}_s{seed}"


class FolderLock:
    """One run at a time owns a result folder: it holds an exclusive `flock` on `out/.lock` for the whole run (the
    kernel releases it when the process ends, however it ends), and writes its pid there for the message a second
    run gets. The file itself stays: deleting it would let a third run lock a new file beside a holder."""

    def __init__(self, out: Path, name: str = ".lock"):
        self.path = Path(out) / name
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"{self.path.parent} is in use by another run (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Let the folder go (once; again is a no-op)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, ValueError, SyntaxError):  # Pillow raises SyntaxError for a damaged PNG chunk
        return False


def _row_split(row: dict) -> str:
    """A row's split: recorded since rows carry it; for older rows, where its prompt lies."""
    if "split" in row:
        return row["split"]
    return "train" if row["prompt"] in set(suite(row["suite"], "train")) else "heldout"


def plan(
    suites: list[str], seeds: int, *, split: str = "heldout", limit_prompts: int | None = None, seed_base: int = 0
) -> list[tuple]:
    """The (suite, prompt, seed) jobs of a run, validated; each suite's prompts in a fixed shuffled order, seeds
    seed_base .. seed_base + seeds - 1 for every prompt."""
    names = list(dict.fromkeys(SUITE_NAMES if "all" in suites else suites))
    if not names:
        raise ValueError("no suite given")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if limit_prompts is not None and limit_prompts < 1:
        raise ValueError(f"limit_prompts must be >= 1, got {limit_prompts}")
    if not isinstance(seed_base, int) or seed_base < 0:
        raise ValueError(f"seed_base must be an integer >= 0, got {seed_base!r}")
    jobs = []
    for name in names:
        prompts = suite(name, split)
        random.Random(0).shuffle(prompts)  # so that --limit-prompts K is a prefix of the full run
        jobs += [(name, p, s) for p in prompts[:limit_prompts] for s in range(seed_base, seed_base + seeds)]
    return jobs


def provenance() -> dict:
    """What made a result: the command line, the git revision (with whether the tree had changes), the package
    versions and the machine."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def git(*args: str) -> str | None:
        try:
            here = Path(__file__).resolve().parent  # this checkout's revision, wherever the command runs
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True, cwd=here)
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    packages = {}
    for name in ("latentalign", "torch", "diffusers", "transformers", "accelerate"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join(sys.argv),
        "git_revision": git("rev-parse", "HEAD"),
        "git_tree_changed": None if status is None else bool(status),
        "packages": packages,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def record_run(path: Path, record: dict) -> None:
    """A result folder's settings file: `record` (its settings) and one provenance entry for every run that wrote to
    the folder, this one's appended; written atomically."""
    from .files import atomic_write_text

    runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    atomic_write_text(path, json.dumps({**record, "runs": [*runs, provenance()]}, indent=1) + "\n")


def claim_run_folder(out: str | Path, settings: dict) -> Path:
    """Create `out` for a resumable benchmark run and record `settings` there; refuse a folder that holds a run
    with other settings (its rows would be mixed with this run's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "settings.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"{out} holds a run with other settings; use another --out")
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return out


def read_rows(path: Path) -> list[dict]:
    """Rows already written; a trailing partial line (an interrupted write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, end = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("partial line")
            rows.append(json.loads(line))
        except ValueError:
            if end + len(line) < len(data):
                raise ValueError(f"{path}: row {len(rows) + 1} is unreadable and not the last line") from None
            break
        end += len(line)
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace a results file with `rows`, one JSON line each, in one atomic rename (a reader sees old or new)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def summarise(rows: list[dict], suites: list[str]) -> list[dict]:
    """Accuracy per suite and overall, with 95% Wilson intervals."""
    table = []
    for name in [*suites, "all"]:
        group = [r for r in rows if name == "all" or r["suite"] == name]
        n, k = len(group), sum(r["ok"] for r in group)
        lo, hi = wilson_interval(k, n)
        table.append({"suite": name, "n": n, "correct": k, "accuracy": k / n if n else 0.0, "ci95": [lo, hi]})
    return table


def method_summary(rows: list[dict], suites: tuple[str, ...] | list[str]) -> dict:
    """One method's rows ("ok", "suite", "evals", "seconds", optionally "backwards": None where not recorded) as a
    benchmark table row: accuracy with its 95% Wilson interval, accuracy per suite, image count, mean denoiser
    evaluations, backward passes and their forward equivalents (`cost.forward_equivalents`; None where a row did
    not record its backward passes), and mean and median wall seconds."""
    k, n = sum(r["ok"] for r in rows), len(rows)
    lo, hi = wilson_interval(k, n)
    evals = statistics.fmean(r["evals"] for r in rows)
    backwards = [r.get("backwards") for r in rows]
    backwards = None if None in backwards else statistics.fmean(backwards)
    return {
        "accuracy": round(k / n, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "per_suite": {s: _share([r["ok"] for r in rows if r["suite"] == s]) for s in suites},
        "images": n,
        "denoiser_evals": round(evals, 1),
        "denoiser_backwards": None if backwards is None else round(backwards, 1),
        "denoiser_equivalents": None if backwards is None else round(forward_equivalents(evals, backwards), 1),
        "seconds": round(statistics.fmean(r["seconds"] for r in rows), 3),
        "median_seconds": round(statistics.median(r["seconds"] for r in rows), 4),
    }


def accuracy_cells(row: dict, suites: tuple[str, ...] | list[str]) -> str:
    """A `method_summary` row's accuracy, 95% CI and per-suite accuracy as markdown table cells."""
    lo, hi = row["ci95"]
    return " | ".join(
        [f"{row['accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]", *(f"{row['per_suite'][s]:.3f}" for s in suites)]
    )


def _share(oks: list[bool]) -> float:
    return round(sum(oks) / len(oks), 4) if oks else float("nan")


def format_table(table: list[dict]) -> str:
    lines = ["| suite | n | accuracy | 95% CI |", "|---|---:|---:|---|"]
    for t in table:
        lo, hi = t["ci95"]
        lines.append(f"| {t['suite']} | {t['n']} | {t['accuracy']:.3f} | [{lo:.3f}, {hi:.3f}] |")
    return "\n".join(lines)


def _grid(out: Path, jobs: list[tuple], rows: dict) -> Image.Image:
    """Samples as a grid: prompts (round-robin over suites) down, seeds across; green border ok, red failed."""
    by_suite: dict[str, list[str]] = {}
    for name, prompt, _ in jobs:
        if prompt not in by_suite.setdefault(name, []):
            by_suite[name].append(prompt)
    prompts = [p for p in chain.from_iterable(zip_longest(*by_suite.values())) if p][:GRID_ROWS]
    seeds = sorted({s for _, _, s in jobs})[:GRID_COLS]
    font = ImageFont.load_default()
    cell, border, pad = 32 * GRID_SCALE, 2, 2
    label_w = int(max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(p, font=font) for p in prompts)) + 2 * pad
    step = cell + 2 * border + pad
    grid = Image.new("RGB", (label_w + step * len(seeds) + pad, step * len(prompts) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, prompt in enumerate(prompts):
        y = pad + i * step
        draw.text((pad, y + step // 2), prompt, fill="black", font=font, anchor="lm")
        for j, seed in enumerate(seeds):
            row = rows.get((prompt, seed))
            if row is None or not (out / row["image"]).exists():
                continue
            x = label_w + j * step
            edge = cell + 2 * border - 1
            draw.rectangle([x, y, x + edge, y + edge], fill="green" if row["ok"] else "red")
            img = Image.open(out / row["image"]).convert("RGB")
            grid.paste(img.resize((cell, cell), Image.Resampling.NEAREST), (x + border, y + border))
    return grid


def _rejudge(out: Path, rows: list[dict]) -> None:
    """Check each row's saved image again and rewrite `out/results.jsonl` in one atomic replace."""
    for row in tqdm(rows, desc="re-judge", unit="img"):
        verdict = check(Image.open(out / row["image"]), row["prompt"])
        row["ok"], row["failures"] = verdict.ok, [fl.kind for fl in verdict.failures]
    write_rows(out / RESULTS, rows)


def run_bench(
    pipe,
    suites: list[str],
    seeds: int,
    *,
    split: str = "heldout",
    limit_prompts: int | None = None,
    out: str | Path = "runs/bench",
    steps: int | None = None,
    guidance: float | None = None,
    batch: int = 32,
    rejudge: bool = False,
    method: str = "plain",
    options: dict | None = None,
    seed_base: int = 0,
    processes=None,
) -> dict | None:
    """Generate and check every (prompt, seed) of the suites, resuming `out/results.jsonl`; return the summary.

    `method` (a registered name or names joined by "+") and its `options` (JSON values: numbers, strings,
    lists) are recorded in every row's settings, so one folder holds one method's run.
    `rejudge=True` first checks every saved image again with the current checker (after a checker change) and
    rewrites the results file atomically; generation is not repeated.

    `processes` shards the rows (under `accelerate launch`: an `accelerate.PartialState`; anything with
    `process_index`, `num_processes` and `wait_for_everyone()`): process i makes every count-th missing row into
    its own `results.rank<i>.jsonl`, then the main process merges them into `results.jsonl` in plan order (the
    same file an unsharded run writes, but for the wall seconds) and writes the summary, which only it returns."""
    if sampling_defaults(pipe).world != "shapes":
        raise ValueError("the benchmark needs a Shapes-world pipeline (its latentalign.json must say world: shapes)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    jobs = plan(suites, seeds, split=split, limit_prompts=limit_prompts, seed_base=seed_base)
    _, _, steps, guidance = resolve(pipe, jobs[0][1], 0, steps, guidance)
    settings = {"num_inference_steps": steps, "guidance_scale": guidance, "model": model_id(pipe)}
    options = dict(options or {})
    if method != "plain" or options:  # a plain run's settings stay as they were (committed folders resume)
        from .methods.base import compose

        compose(method, dict(options))  # unknown methods and options are refused before any work
        settings.update(method=method, options=json.loads(json.dumps(options)))
        # what the pipeline's latentalign.json fills in for the stages: a changed default is another run's settings
        names = [m.strip() for m in method.split("+") if m.strip() != "plain"]
        defaults = {n: sampling_defaults(pipe).for_method(n) for n in names}
        settings["pipeline_defaults"] = json.loads(json.dumps({n: d for n, d in defaults.items() if d}))

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is not a folder")
    shards = Shards(processes)
    if rejudge and shards.count > 1:
        raise ValueError("--rejudge runs in one process: run it without accelerate launch")
    lock = FolderLock(out, ".lock" if shards.main else f".lock.rank{shards.index}")
    shards.together(out, "lock", lock.__enter__, everyone=True, undo=FolderLock.release)
    try:
        return _run_bench(pipe, jobs, out, settings, split, steps, guidance, batch, rejudge, method, options, shards)
    finally:
        lock.release()


class Shards:
    """This process's share of a bench run: index, count and a barrier (one process: 0, 1 and no wait)."""

    def __init__(self, processes=None):
        self.index = 0 if processes is None else processes.process_index
        self.count = 1 if processes is None else processes.num_processes
        self.main = self.index == 0
        self._processes = processes

    def wait(self) -> None:
        if self._processes is not None and self.count > 1:
            self._processes.wait_for_everyone()

    def together(self, out: Path, phase: str, step, *, everyone: bool, undo=None):
        """Run `step()` on every process (`everyone`) or on the main one, then meet at the barrier. A ValueError any
        process raised is then every process's error (none is left waiting at a barrier the failed one never
        reaches); a process whose own step succeeded first calls `undo(its result)`. Returns the step's result.
        Each `phase` has its own failure files: a process already in the next phase cannot be read as failing this."""
        mine = out / f".failed.{phase}.rank{self.index}"
        mine.unlink(missing_ok=True)
        result = error = None
        if everyone or self.main:
            try:
                result = step()
            except ValueError as e:
                error = e
                if self.count > 1:
                    mine.parent.mkdir(parents=True, exist_ok=True)
                    mine.write_text(str(e))
        self.wait()
        if error is not None:
            raise error
        others = [f.read_text() for f in sorted(out.glob(f".failed.{phase}.rank*")) if f != mine]
        if others:
            if undo is not None and (everyone or self.main):
                undo(result)
            raise ValueError(others[0])
        return result

    def rows_file(self, out: Path) -> Path:
        """Where this process appends its rows: the results file itself when it runs alone."""
        return out / (RESULTS if self.count == 1 else f"{Path(RESULTS).stem}.rank{self.index}.jsonl")


def merge_shards(out: Path, jobs: list[tuple]) -> list[dict]:
    """Fold every `results.rank*.jsonl` of `out` into `results.jsonl` (each (prompt, seed) once, plan order first),
    atomically, then remove the shard files; return the rows. Safe to repeat after a crash at any point."""
    results = out / RESULTS
    shard_files = sorted(out.glob(f"{Path(RESULTS).stem}.rank*.jsonl"))
    rows = read_rows(results)
    if not shard_files:
        return rows
    merged: dict[tuple, dict] = {}
    for row in chain(rows, *(read_rows(f) for f in shard_files)):
        merged.setdefault((row["prompt"], row["seed"]), row)
    order = {(p, seed): i for i, (_, p, seed) in enumerate(jobs)}
    rows = sorted(merged.values(), key=lambda r: order.get((r["prompt"], r["seed"]), len(order)))
    write_rows(results, rows)
    for f in shard_files:
        f.unlink()
    return rows


def _run_bench(pipe, jobs, out, settings, split, steps, guidance, batch, rejudge, method, options, shards) -> dict:
    # the main process checks and tidies the folder (rows of an interrupted sharded run first)
    shards.together(out, "prepare", lambda: _prepare_folder(out, jobs, settings, split, rejudge), everyone=False)
    results = out / RESULTS
    done = {(r["prompt"], r["seed"]): r for r in read_rows(results)}
    todo = [j for j in jobs if (j[1], j[2]) not in done][shards.index :: shards.count]
    (out / "images").mkdir(parents=True, exist_ok=True)
    desc = "bench" if shards.count == 1 else f"bench (process {shards.index} of {shards.count})"
    with shards.rows_file(out).open("a") as f, tqdm(total=len(todo), desc=desc, unit="img") as bar:
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            result = generate(
                pipe,
                [p for _, p, _ in chunk],
                seed=[s for _, _, s in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                method=method,
                **options,
            )
            # Cost is reported per batch; every image in a batch costs the same, so split it evenly.
            cost = {k: round(v / len(chunk), 6) for k, v in result.cost.to_dict().items()}
            for (name, prompt, seed), image in zip(chunk, result.images, strict=True):
                verdict = check(image, prompt)
                image_path = f"images/{file_stem(prompt, seed)}.png"
                image.save(out / image_path)
                row = {
                    "suite": name,
                    "prompt": prompt,
                    "seed": seed,
                    "ok": verdict.ok,
                    "failures": [fl.kind for fl in verdict.failures],
                    "cost": cost,
                    "settings": settings,
                    "split": split,
                    "image": image_path,
                }
                f.write(json.dumps(row) + "\n")  # one write per row, flushed: a row is never half-written
                f.flush()
                bar.update(1)
    shards.wait()
    if not shards.main:
        return None
    rows = merge_shards(out, jobs)  # the summary covers every row of the folder, this run's and earlier ones'
    names = list(dict.fromkeys([name for name, _, _ in jobs] + [r["suite"] for r in rows]))
    summary = {
        "settings": settings,
        "split": split,
        "seeds": sorted({r["seed"] for r in rows}),  # of every row in the folder, this run's and earlier ones'
        "prompts_per_suite": {n: len({r["prompt"] for r in rows if r["suite"] == n}) for n in names},
        "categories": summarise(rows, names),
        "cost_per_image": cost_per_image(rows),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(format_table(summary["categories"]) + "\n")
    done = {(r["prompt"], r["seed"]): r for r in rows}
    # a folder resumed without its images (they are not committed) keeps the grid it has instead of a blank one
    if any((out / r["image"]).exists() for r in rows) or not (out / "grid.png").exists():
        _grid(out, [(r["suite"], r["prompt"], r["seed"]) for r in rows], done).save(out / "grid.png")
    return summary


def _prepare_folder(out: Path, jobs: list[tuple], settings: dict, split: str, rejudge: bool) -> None:
    """Before any row is made: fold in an interrupted sharded run's rows, refuse a folder of other settings, split
    or suites, record this run, drop rows whose image was lost (they are made again) and re-judge if asked."""
    results = out / RESULTS
    existing = merge_shards(out, jobs)
    for row in existing:
        if row["settings"] != settings:
            raise ValueError(
                f"{results} holds results made with {row['settings']}, not {settings}; "
                "use another --out or the same settings"
            )
        if _row_split(row) != split:
            raise ValueError(f"{results} holds {_row_split(row)}-split rows; this run is {split}: use another --out")
    planned = {name for name, _, _ in jobs}
    others = sorted({r["suite"] for r in existing} - planned)
    if others:  # a run may extend a folder (more suites, seeds, prompts), never leave its rows out of the summary
        raise ValueError(f"{results} holds rows of suite(s) {others} that this run does not plan: add them to --suite")
    record_run(out / "settings.json", {"settings": settings, "split": split})
    images = out / "images"
    has_images = images.is_dir() and any(images.iterdir())
    # an image deleted or damaged: its row is made again; a folder without any image (committed results, whose
    # images are not in git) keeps its rows
    lost = {(r["prompt"], r["seed"]) for r in existing if has_images and not _readable(out / r["image"])}
    if rejudge and existing and not has_images:
        raise ValueError(f"{images} holds no images to re-judge")
    if lost:
        existing = [r for r in existing if (r["prompt"], r["seed"]) not in lost]
        write_rows(results, existing)
    if rejudge and existing:
        _rejudge(out, existing)


def differentiates(method: str) -> bool:
    """Whether a method (a name or names joined by "+") back-propagates through the denoiser."""
    from .methods.base import registered

    stages = registered()
    return any(getattr(stages.get(m.strip()), "differentiates_denoiser", False) for m in method.split("+"))


def cost_per_image(rows: list[dict]) -> dict:
    """Each cost count's mean over rows; a count some rows did not record (older rows) is left out."""
    keys = [k for k in rows[0]["cost"] if all(k in r["cost"] for r in rows)]
    return {k: sum(r["cost"][k] for r in rows) / len(rows) for k in keys}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of `wins` against `losses` (ties dropped), as in same-seed comparisons."""
    n, k = wins + losses, min(wins, losses)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def frontier(folders: list[str | Path], out: str | Path) -> dict:
    """Accuracy against compute for every bench folder given (one method's run each): `out/frontier.md` and
    `.json` (per model: accuracy with its 95% interval, per suite, mean denoiser evaluations and wall seconds per
    image), and `out/frontier.png`, one row of two panels per model (against denoiser evaluations, against wall
    seconds). Folders of one model must have been run on the same prompts and seeds: refused otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not folders:
        raise ValueError("report needs at least one bench folder")

    def compute(r: dict) -> float:
        """The compute axis: forward equivalents, or forward evaluations where backward passes were not recorded."""
        return r["denoiser_evals"] if r["denoiser_equivalents"] is None else r["denoiser_equivalents"]

    runs = []
    for folder in map(Path, folders):
        rows = read_rows(folder / RESULTS) if (folder / RESULTS).exists() else []
        if not rows:
            raise FileNotFoundError(f"{folder} holds no {RESULTS}: not a bench folder")
        settings = rows[0]["settings"]
        options = settings.get("options", {})
        label = settings.get("method", "plain") + "".join(f" {k}={v}" for k, v in sorted(options.items()))
        # a row from before backward passes were counted: 0 for a method that never differentiates the denoiser,
        # else unknown (None)
        unrecorded = None if differentiates(settings.get("method", "plain")) else 0
        items = [
            {
                "ok": r["ok"],
                "suite": r["suite"],
                "evals": r["cost"]["denoiser_evals"],
                "backwards": r["cost"].get("denoiser_backwards", unrecorded),
                "seconds": r["cost"]["seconds"],
            }
            for r in rows
        ]
        suites = list(dict.fromkeys(r["suite"] for r in rows))
        runs.append(
            {
                "folder": str(folder),
                "model": settings["model"],
                "label": label,
                "plain": settings.get("method", "plain") == "plain",
                "sampling": (settings.get("num_inference_steps"), settings.get("guidance_scale")),
                "jobs": {(r["prompt"], r["seed"]): r["ok"] for r in rows},
                **method_summary(items, suites),
            }
        )
    table: dict[str, list[dict]] = {}
    for run in runs:
        table.setdefault(run["model"], []).append(run)
        if run["denoiser_equivalents"] is None:  # rows from before backward passes were counted: forward evals only
            run["label"] += " (backward passes not recorded)"
    for model, group in table.items():
        if any(r["jobs"].keys() != group[0]["jobs"].keys() for r in group):
            odd = next(r["folder"] for r in group if r["jobs"].keys() != group[0]["jobs"].keys())
            raise ValueError(f"{odd} was run on other prompts or seeds than {group[0]['folder']} ({model})")
        if len({r["sampling"] for r in group}) > 1:  # runs at other steps or guidance: say so in their labels
            for r in group:
                r["label"] += f" ({r['sampling'][0]} steps, guidance {r['sampling'][1]})"
        plains = [r["jobs"] for r in group if r["plain"]]
        if len(plains) > 1:
            raise ValueError(
                f"{model}: more than one plain run among the folders; keep one as the sign test's baseline"
            )
        plain = plains[0] if plains else None
        for r in group:  # the same-seed sign test against plain generation, where the folders hold a plain run
            if plain is not None and r["jobs"] is not plain:
                fixed = sum(r["jobs"][k] and not ok for k, ok in plain.items())
                broken = sum(ok and not r["jobs"][k] for k, ok in plain.items())
                r.update(fixed=fixed, broken=broken, sign_test_p=round(sign_test(fixed, broken), 4))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for model, group in table.items():
        suites = list(group[0]["per_suite"])
        lines += [
            f"### {model}",
            "",
            "| method | "
            + " | ".join(suites)
            + " | all (95% CI) | denoiser evals | backward passes | equivalents | seconds | images"
            + " | vs plain: fixed / broken |",
            "|---|" + "---:|" * (len(suites) + 7),
        ]
        for r in sorted(group, key=compute):
            cells = [f"{r['per_suite'][s]:.3f}" for s in suites]
            versus = f"{r['fixed']} / {r['broken']} (p = {r['sign_test_p']:.3f})" if "fixed" in r else ""
            backwards, equivalents = (
                ("?", "?") if r["denoiser_equivalents"] is None
                else (f"{r['denoiser_backwards']:.0f}", f"{r['denoiser_equivalents']:.0f}")
            )  # fmt: skip
            lines.append(
                f"| {r['label']} | " + " | ".join(cells) + f" | {r['accuracy']:.3f} ({r['ci95'][0]:.3f}-"
                f"{r['ci95'][1]:.3f}) | {r['denoiser_evals']:.0f} | {backwards} | {equivalents} | {r['seconds']:.2f} | "
                f"{r['images']} | {versus} |"
            )
        lines.append("")
    lines.append(
        f"Equivalents: forward evaluations plus {BACKWARD_TO_FORWARD} per backward pass through the denoiser "
        "(what the left panel plots)."
    )
    (out / "frontier.md").write_text("\n".join(lines))
    internal = ("jobs", "sampling", "plain")
    clean = {m: [{k: v for k, v in r.items() if k not in internal} for r in g] for m, g in table.items()}
    (out / "frontier.json").write_text(json.dumps(clean, indent=1) + "\n")
    fig, axes = plt.subplots(len(table), 2, figsize=(12, 4.2 * len(table)), squeeze=False)
    colours, markers = plt.cm.tab20.colors, "osD^vP*Xph<>"
    for (model, group), (left, right) in zip(table.items(), axes, strict=True):
        for i, r in enumerate(sorted(group, key=compute)):  # one colour and marker a method, in the table's order
            err = [[r["accuracy"] - r["ci95"][0]], [r["ci95"][1] - r["accuracy"]]]
            style = dict(marker=markers[i % len(markers)], color=colours[i % len(colours)], capsize=3)
            for ax, x in ((left, compute(r)), (right, r["seconds"])):
                ax.errorbar([x], [r["accuracy"]], yerr=err, label=r["label"], **style)
        for ax, name in (
            (left, f"denoiser evaluations per image (a backward pass = {BACKWARD_TO_FORWARD})"),
            (right, "wall seconds per image"),
        ):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(name)
            ax.set_ylabel("checker accuracy")
            ax.set_title(model)
            ax.grid(alpha=0.3)
        right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # beside, not over
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return clean


SWEEP_KEYS = {"model", "suite", "seeds", "seed_base", "split", "limit_prompts", "steps", "guidance", "batch", "run"}


def sweep_runs(config: dict) -> list[tuple[str, str, dict]]:
    """(folder name, method, options) for each run of a sweep config: every `[[run]]` table names a `method`
    ("plain" by default) and its options; an option given as a list is swept (the runs are the product)."""
    import itertools

    tables = config.get("run", [{"method": "plain"}])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError("a sweep config's runs are [[run]] tables")
    runs = []
    for table in tables:
        method = table.get("method", "plain")
        options = {k: v for k, v in table.items() if k != "method"}
        swept = {k: v if isinstance(v, list) else [v] for k, v in options.items()}
        for values in itertools.product(*swept.values()):
            chosen = dict(zip(swept, values, strict=True))
            name = "_".join([method.replace("+", "-"), *(f"{k}{v}" for k, v in chosen.items())])
            runs.append((re.sub(r"[^A-Za-z0-9._-]", "-", name), method, chosen))
    names = [n for n, _, _ in runs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"a sweep config names the same run twice: {sorted(n for n in names if names.count(n) > 1)[0]}"
        )
    return runs


def run_sweep(path: str | Path, out: str | Path, processes=None) -> dict | None:
    """Every run of a TOML sweep config (`benchmarks/configs/*.toml`) as a bench folder under `out`, on the same
    prompts and seeds, then their frontier (`frontier` into `out`). Resumes like `run_bench`, run by run; sharded
    like it over `processes` (the main process draws the frontier and returns it)."""
    import tomllib

    from .methods.base import compose
    from .pipeline import load_pipeline

    path = Path(path)
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: not a readable TOML file ({e})") from None
    unknown = set(config) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(SWEEP_KEYS))})")
    suites = config.get("suite", ["all"])
    suites = [suites] if isinstance(suites, str) else list(suites)
    seeds = config.get("seeds", 2)
    seed_base = config.get("seed_base", 0)
    plan(
        suites, seeds, split=config.get("split", "heldout"), limit_prompts=config.get("limit_prompts"),
        seed_base=seed_base,
    )  # fmt: skip
    runs = sweep_runs(config)
    for _, method, options in runs:  # every run's method and options refused before any work
        compose(method, dict(options))
    pipe = load_pipeline(config.get("model", "shapes"))
    out = Path(out)
    folders = []
    for name, method, options in runs:
        run_bench(
            pipe,
            suites,
            seeds,
            split=config.get("split", "heldout"),
            limit_prompts=config.get("limit_prompts"),
            out=out / name,
            steps=config.get("steps"),
            guidance=config.get("guidance"),
            batch=config.get("batch", 32),
            method=method,
            options=options,
            seed_base=seed_base,
            processes=processes,
        )
        folders.append(out / name)
    return frontier(folders, out) if Shards(processes).main else None
