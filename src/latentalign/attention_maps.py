"""Attention maps to look at: each subject's image-to-text map at every denoising step, before and after a
refinement method, as arrays (`attention_over_steps`) and as one PNG grid (`attention_grid`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw

from .attention_losses import token_maps
from .files import atomic_save_png
from .methods.attention_refinement import AttentionGuidance


@dataclass(frozen=True)
class AttentionRecorder(AttentionGuidance):
    """Records every row's group maps at every step, after `inner` (a step stage, or None for plain generation)
    has acted: one extra prompt-branch evaluation a step, counted in the result's cost. Not registered: a tool."""

    name: ClassVar[str] = "attention-recorder"

    inner: AttentionGuidance | None = None

    def schedule(self, steps: int) -> tuple[dict[int, float], set[int]]:
        return {}, set()

    def prepare(self, run) -> AttentionRecorder:
        if self.inner is not None:
            self.inner.prepare(run)
        return super().prepare(run) if self.inner is None else self

    def hook(self, run):
        plan, den = (self.inner or self)._plan(run), run.den  # the inner method's tokens and attention grid
        grid = den.attention_grid(plan["size"])
        inner = self.inner.hook(run) if self.inner is not None else None
        maps: list[dict[int, dict[str, np.ndarray]]] = [{} for _ in range(run.images * run.n)]

        def prepare(info) -> torch.Tensor:
            z = inner(info) if inner is not None else info["latents"]
            t, rows, schedulers = info["t"], info["rows"], info["schedulers"]
            attention = den.cross_attention(schedulers.scale_model_input(z, t), t, run.row_cond(rows), plan["size"])
            for j, r in enumerate(rows):
                p = run.prompt_of(r)
                m = token_maps(attention[j].float(), plan["groups"][p], plan["first"], plan["lasts"][p], grid, False)
                maps[r][info["step"]] = {"subjects": m.subjects.cpu().numpy(), "modifiers": m.modifiers.cpu().numpy()}
            return z

        run.outputs["attention_maps"] = maps
        return prepare


def attention_over_steps(pipe, prompt: str, method: AttentionGuidance | str | None = None, seed: int = 0, **kwargs):
    """One image's subject and modifier maps at every step, (steps, groups, h, w) arrays, with or without `method`
    (an attention stage or its registered name, e.g. "iterref"); returns (result, maps, token groups)."""
    from .generation import generate
    from .methods.base import compose

    if isinstance(method, str):
        method = compose(method).stages[0]
    if method is not None and not isinstance(method, AttentionGuidance):
        raise ValueError(f"attention maps are recorded around an attention method, not {type(method).__name__}")
    inner = method.with_pipeline_defaults(pipe) if method is not None else None
    result = generate(pipe, prompt, seed=seed, method=AttentionRecorder(inner=inner), **kwargs)
    per_step = result.outputs["attention_maps"][0]
    steps = sorted(per_step)
    maps = {k: np.stack([per_step[s][k] for s in steps]) for k in ("subjects", "modifiers")}
    return result, maps, result.settings["token_groups"][0]


def _heat(m: np.ndarray) -> Image.Image:
    """A map in [0, 1] as a black-red-yellow-white heat image."""
    v = np.clip(m, 0, 1)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def attention_grid(
    pipe, prompt: str, out: str | Path, method: AttentionGuidance | str | None = "iterref", seed: int = 0, **kwargs
) -> Path:
    """A PNG of each subject's (and modifier's) map over the steps, plain generation's rows above the method's,
    the final images on the right; also the maps as `attention.npz` beside it. Returns the PNG's path. Maps are
    drawn on one absolute scale (a pixel's share of the text attention, 0 black to 1 white), so strength compares
    across steps and runs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [("plain", *attention_over_steps(pipe, prompt, None, seed, **kwargs))]
    if method is not None:
        name = method if isinstance(method, str) else method.name
        runs.append((name, *attention_over_steps(pipe, prompt, method, seed, **kwargs)))
    cell, label = 48, 150
    groups = runs[0][3]
    names = [s["word"] for s in groups["subjects"]] + [m["word"] for m in groups["modifiers"]]
    steps = runs[0][2]["subjects"].shape[0]
    height = 20 + len(runs) * len(names) * cell
    canvas = Image.new("RGB", (label + (steps + 1) * cell, height), "white")
    draw = ImageDraw.Draw(canvas)
    for s in range(steps):
        draw.text((label + s * cell + 4, 4), f"step {s}", fill="black")
    draw.text((label + steps * cell + 4, 4), "image", fill="black")
    arrays = {}
    for r, (run_name, result, maps, _) in enumerate(runs):
        stack = np.concatenate([maps["subjects"], maps["modifiers"]], 1)  # (steps, groups, h, w)
        arrays[run_name] = stack
        for g, word in enumerate(names):
            y = 20 + (r * len(names) + g) * cell
            draw.text((4, y + cell // 3), f"{run_name}: {word}", fill="black")
            for s in range(steps):
                canvas.paste(_heat(stack[s, g]).resize((cell, cell), Image.NEAREST), (label + s * cell, y))
            if g == 0:
                image = result.images[0].resize((cell, cell), Image.NEAREST)
                canvas.paste(image, (label + steps * cell, y))
    path = out / "attention.png"
    atomic_save_png(path, canvas)
    np.savez(out / "attention.npz", words=np.array(names), **arrays)
    return path
