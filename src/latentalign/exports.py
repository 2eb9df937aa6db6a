"""Benchmark layouts of real-model evaluations: GenEval's (Ghosh et al., 2023) and T2I-CompBench's (Huang et al.,
2023), so their own evaluators score latentalign's images; the Shapes suites as GenEval metadata, and the Shapes
checker scoring a GenEval-layout folder (the end-to-end check of the export on the embedded world).

GenEval reads `evaluation_metadata.jsonl` (one JSON object per line: `tag`, `prompt`, `include` [{class, count,
color?, position: [relation, index]?}], `exclude`?) and expects `OUT/<index:05d>/metadata.jsonl` (that line),
`OUT/<index:05d>/samples/<n:05d>.png` and an optional `OUT/<index:05d>/grid.png`. T2I-CompBench reads
`OUT/samples/<prompt>_<index:06d>.png`. TIAM (Grimal et al., WACV 2024; its v2 tool) reads `OUT/prompts.txt` (one
prompt a line) and `OUT/images/<the_prompt_with_underscores>_<n>.png`, n = 0 .. samples - 1. Writes are
resumable: an image already written is kept, every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .files import atomic_save_png, atomic_write_text
from .world import SUITE_NAMES, check, parse

# GenEval's category for each Shapes suite: two coloured object groups are its attribute-binding task
GENEVAL_TAGS = {
    "single_object": "single_object",
    "two_objects": "color_attr",
    "relation": "position",
    "counting": "counting",
}
METADATA = "metadata.jsonl"


def read_geneval_metadata(path: str | Path) -> list[dict]:
    """GenEval's `evaluation_metadata.jsonl`, checked line by line (a bad line is named)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GenEval metadata file at {path}")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise ValueError(f"{path}:{number}: each line needs a non-empty 'prompt'")
        if not isinstance(entry.get("include", []), list):
            raise ValueError(f"{path}:{number}: 'include' must be a list")
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path} holds no prompt")
    return entries


def shapes_geneval_metadata(split: str = "heldout", limit_prompts: int | None = None) -> list[dict]:
    """The Shapes suites as GenEval metadata lines: each object group an `include` entry (class = shape, count,
    color); a relation "A left of B" as GenEval writes positions, B first and A with `position: ["left of", 0]`."""
    import random

    from .world import suite

    entries = []
    for name in SUITE_NAMES:
        prompts = suite(name, split)
        random.Random(0).shuffle(prompts)  # the bench's order: --limit-prompts K takes the same prefix
        for prompt in prompts[:limit_prompts]:
            scene = parse(prompt)
            include = [{"class": o.shape, "count": o.count, "color": o.colour} for o in scene.objects]
            if scene.relation is not None:
                first, second = include
                include = [second, {**first, "position": [scene.relation, 0]}]
            entries.append({"tag": GENEVAL_TAGS[name], "suite": name, "prompt": prompt, "include": include})
    return entries


def write_jsonl(path: str | Path, entries: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in entries))
    return path


def _grid(images: list[Image.Image]) -> Image.Image:
    w, h = images[0].size
    cols = min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def _generate_missing(pipe, jobs: list[tuple[str, int, Path]], batch: int, method: str, options: dict, desc: str):
    """Generate (prompt, seed) -> path for the jobs whose image is not there yet, `batch` at a time."""
    from .generation import generate

    todo = [j for j in jobs if not j[2].exists()]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="img") as bar:
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            result = generate(pipe, [p for p, _, _ in chunk], seed=[s for _, s, _ in chunk], method=method, **options)
            for (_, _, path), image in zip(chunk, result.images, strict=True):
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_png(path, image)
                bar.update(1)


def _check_export(pipe, prompts: list[str], samples: int, method: str, options: dict | None) -> None:
    """Refuse, before any work, a sample count below 1, a prompt the pipeline's world cannot parse, an unknown
    method or option."""
    from .core import check_prompts
    from .generation import RUN_ARGUMENTS
    from .methods.base import compose

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if "seed" in (options or {}) or "generator" in (options or {}):
        raise ValueError("the exports choose the seeds (sample n has seed n): pass no seed or generator")
    check_prompts(pipe, prompts)
    compose(method, {k: v for k, v in (options or {}).items() if k not in RUN_ARGUMENTS})  # the stages' options


def write_geneval(
    pipe,
    entries: list[dict],
    out: str | Path,
    *,
    samples: int = 4,
    method: str = "plain",
    options: dict | None = None,
    batch: int = 16,
    grid: bool = True,
) -> Path:
    """GenEval's output layout for `entries` (GenEval metadata lines): sample n of prompt i has seed n."""
    _check_export(pipe, [e["prompt"] for e in entries], samples, method, options)
    out = Path(out)
    jobs = []
    for index, entry in enumerate(entries):
        folder = out / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / METADATA, [entry])
        jobs += [(entry["prompt"], n, folder / "samples" / f"{n:05d}.png") for n in range(samples)]
    _generate_missing(pipe, jobs, batch, method, dict(options or {}), "geneval")
    if grid:
        for index in range(len(entries)):
            folder = out / f"{index:05d}"
            images = [Image.open(folder / "samples" / f"{n:05d}.png").convert("RGB") for n in range(samples)]
            atomic_save_png(folder / "grid.png", _grid(images))
    return out


def t2i_compbench_name(prompt: str, index: int) -> str:
    """T2I-CompBench's file name for sample `index` of `prompt`: `{prompt}_{index:06d}.png`."""
    if "/" in prompt or "_" in prompt or prompt.startswith("."):  # its evaluators split the name at "_"
        raise ValueError(f"a T2I-CompBench file name cannot hold {prompt!r}")
    return f"{prompt}_{index:06d}.png"


def write_t2i_compbench(
    pipe,
    prompts: list[str],
    out: str | Path,
    *,
    samples: int = 10,
    method: str = "plain",
    options: dict | None = None,
    batch: int = 16,
) -> Path:
    """T2I-CompBench's layout: `out/samples/{prompt}_{index:06d}.png`, index over all samples (seed = sample)."""
    _check_export(pipe, prompts, samples, method, options)
    folder = Path(out) / "samples"
    jobs = [
        (p, n, folder / t2i_compbench_name(p, i * samples + n)) for i, p in enumerate(prompts) for n in range(samples)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    _generate_missing(pipe, jobs, batch, method, dict(options or {}), "t2i-compbench")
    return Path(out)


def tiam_name(prompt: str, n: int) -> str:
    """TIAM's file name for sample `n` of `prompt`: its words joined by underscores, then `_<n>.png`."""
    words = prompt.split()
    if not words or any("/" in w or "_" in w for w in words) or prompt.startswith("."):
        raise ValueError(f"a TIAM file name cannot hold {prompt!r}")  # it reads the prompt back from the name
    return "_".join(words) + f"_{n}.png"


def write_tiam(
    pipe,
    prompts: list[str],
    out: str | Path,
    *,
    samples: int = 4,
    method: str = "plain",
    options: dict | None = None,
    batch: int = 16,
) -> Path:
    """TIAM's layout: `out/prompts.txt` and `out/images/<the_prompt_with_underscores>_<n>.png` (seed = n)."""
    _check_export(pipe, prompts, samples, method, options)
    prompts = [" ".join(p.split()) for p in prompts]  # the prompt TIAM reads back from the file name, spaced once
    names = [tiam_name(p, 0) for p in prompts]  # every name refused before any work
    if len(set(names)) != len(names):
        raise ValueError("TIAM names images by their prompt: a prompt is given twice")
    out = Path(out)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "prompts.txt", "".join(p + "\n" for p in prompts))
    jobs = [(p, n, folder / tiam_name(p, n)) for p in prompts for n in range(samples)]
    _generate_missing(pipe, jobs, batch, method, dict(options or {}), "tiam")
    return out


def score_geneval_folder(folder: str | Path) -> dict:
    """Judge a GenEval-layout folder of Shapes images with the Shapes checker (in the role of GenEval's own
    evaluator): `results.jsonl` (one line per image, GenEval's fields: filename, tag, prompt, correct) and a
    summary of accuracy per tag, written into `folder`."""
    folder = Path(folder)
    indices = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []
    if not indices:
        raise FileNotFoundError(f"{folder} holds no <index>/ folders: not a GenEval-layout folder")
    rows = []
    for sub in indices:
        (entry,) = read_geneval_metadata(sub / METADATA)
        for image_path in sorted((sub / "samples").glob("[0-9]*.png")):
            verdict = check(Image.open(image_path).convert("RGB"), entry["prompt"])
            rows.append(
                {
                    "filename": str(image_path.relative_to(folder)),
                    "tag": entry.get("tag"),
                    "prompt": entry["prompt"],
                    "correct": verdict.ok,
                    "reason": ", ".join(f.kind for f in verdict.failures),
                }
            )
    if not rows:
        raise FileNotFoundError(f"{folder} holds no samples/<n>.png images to score")
    write_jsonl(folder / "results.jsonl", rows)
    tags = sorted({r["tag"] for r in rows if r["tag"] is not None})
    summary = {t: sum(r["correct"] for r in rows if r["tag"] == t) / sum(r["tag"] == t for r in rows) for t in tags}
    summary["overall"] = sum(r["correct"] for r in rows) / len(rows)
    summary["images"] = len(rows)
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
