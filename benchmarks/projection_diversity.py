"""How much a noise projector narrows the noise distribution, and the images' diversity it costs (the noise-
projection paper reports a narrower projected distribution and less varied samples).

For each bench folder (run on the same prompts and seeds): the mean over prompts of the mean pairwise RMS pixel
distance between the images of that prompt's seeds ("diversity", in [0, 1] units), and its ratio to the plain run.
For each projector: on those prompts and seeds, the refined noise's per-element standard deviation over seeds (1 for
N(0, I)), its mean absolute shift |mu|, the mean KL to N(0, I) per sample, and the RMS distance between the refined
and the original noise.

    python benchmarks/projection_diversity.py --model shapes-one-step --plain DIR/plain \
        --run today=DIR/today --run paper=DIR/paper \
        --projector today=shapes-projector --projector paper=runs/projector_paper/projector --out DIR/diversity.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentalign.adapters import Denoiser
from latentalign.generation import sampling_defaults
from latentalign.methods.noise_projection import load_projector, projection_kl
from latentalign.pipeline import load_pipeline


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


def diversity(folder: Path) -> float:
    """Mean over prompts of the mean pairwise RMS distance between the prompt's images (pixels in [0, 1])."""
    by_prompt: dict[str, list[np.ndarray]] = {}
    for r in rows_of(folder):
        image = np.asarray(Image.open(folder / r["image"]).convert("RGB"), dtype=np.float32) / 255.0
        by_prompt.setdefault(r["prompt"], []).append(image)
    values = []
    for images in by_prompt.values():
        pairs = [np.sqrt(((a - b) ** 2).mean()) for a, b in itertools.combinations(images, 2)]
        if pairs:
            values.append(float(np.mean(pairs)))
    return float(np.mean(values))


@torch.no_grad()
def noise_stats(pipe, projector, jobs: list[tuple[str, int]], batch: int = 64) -> dict:
    den = Denoiser(pipe)
    scale = sampling_defaults(pipe).guidance_scale
    refined, original, kls, shifts = [], [], [], []
    for i in range(0, len(jobs), batch):
        part = jobs[i : i + batch]
        prompts, seeds = [p for p, _ in part], [s for _, s in part]
        noise = den.initial_noise(seeds).float()
        cond = den.encode(prompts, scale)
        mu, log_sigma = projector(noise, cond.prompt_embeds)
        refined.append(projector.project(noise, cond.prompt_embeds).float())
        original.append(noise)
        kls.append(projection_kl(mu, log_sigma))
        shifts.append(mu.abs().flatten(1).mean(1))
    refined, original = torch.cat(refined), torch.cat(original)
    prompts = [p for p, _ in jobs]
    stds = []
    for p in dict.fromkeys(prompts):
        ix = [i for i, q in enumerate(prompts) if q == p]
        if len(ix) > 1:
            stds.append(refined[ix].std(0).mean().item())
    return {
        "per_element_std_over_seeds": round(float(np.mean(stds)), 4),
        "mean_abs_mu": round(torch.cat(shifts).mean().item(), 4),
        "kl_per_sample": round(torch.cat(kls).mean().item(), 3),
        "rms_shift": round((refined - original).pow(2).mean().sqrt().item(), 4),
    }


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"--{what} takes NAME=VALUE, got {v!r}")
        name, value = v.split("=", 1)
        out[name] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--plain", required=True, help="the plain bench folder")
    ap.add_argument("--run", action="append", default=[], help="NAME=bench folder (repeatable)")
    ap.add_argument("--projector", action="append", default=[], help="NAME=projector (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {"plain": args.plain, **pairs(args.run, "run")}
    base = diversity(Path(args.plain))
    report = {"command": "python " + " ".join(sys.argv), "diversity": {}, "noise": {}}
    for name, folder in runs.items():
        d = diversity(Path(folder))
        report["diversity"][name] = {"mean_pairwise_rms": round(d, 4), "ratio_to_plain": round(d / base, 4)}
    projectors = pairs(args.projector, "projector")
    if projectors:
        pipe = load_pipeline(args.model)
        jobs = [(r["prompt"], r["seed"]) for r in rows_of(Path(args.plain))]
        for name, source in projectors.items():
            report["noise"][name] = noise_stats(pipe, load_projector(source), jobs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
