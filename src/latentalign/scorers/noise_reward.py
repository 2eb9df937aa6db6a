"""A noise reward model R(noise, prompt) -> per-word log-odds: the noise-projection paper's reward model.

The paper's reward model learns, from the generator's own samples, to predict a VLM's token scores for the image a
(noise, prompt) pair will become, so the projector can be trained against it without generating. Here R reads the
noise through a short *preview* of the pipeline's own sampler (`preview_steps` denoiser steps, differentiable) and
scores the preview with a latent judge that has a word head (`LatentJudge.add_word_head`), trained to predict the
token judge's verdicts on the FULL generation's image. A judge that reads the raw noise at t = T instead ranks
samples at chance on Shapes (docs/judges.md: within-prompt AUROC 0.50 at step 8 of 20), which is why a preview
is there. On a one-step pipeline the preview is the generation itself, so R's input is the exact latent.

`save` writes `noise_reward.json` and the judge (`judge/`, as `save_scorer` writes it); `load_noise_reward` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..files import read_json
from .judge import LatentJudge

CONFIG_FILE = "noise_reward.json"


class NoiseRewardModel(nn.Module):
    """R(noise, prompt): `preview_steps` steps of the pipeline's sampler at `guidance_scale`, then a word-head judge."""

    def __init__(self, judge: LatentJudge, preview_steps: int, guidance_scale: float, pipeline: str | None = None):
        super().__init__()
        if preview_steps < 1:
            raise ValueError(f"preview_steps must be >= 1, got {preview_steps}")
        self.judge = judge.add_word_head()
        self.preview_steps, self.guidance_scale, self.pipeline = int(preview_steps), float(guidance_scale), pipeline

    def preview(self, den, noise: torch.Tensor, cond, seeds: list[int]) -> torch.Tensor:
        """The latents `preview_steps` steps of the sampler make from standard Gaussian `noise` (differentiable in
        it); `cond` is `den.encode(prompts, guidance_scale)`, `seeds` give a stochastic scheduler's step noise."""
        from ..methods.noise_optimization import differentiable_sample

        return differentiable_sample(den, noise.to(den.dtype), cond, den.start(seeds, self.preview_steps)[1])

    def forward(self, den, noise: torch.Tensor, prompts: list[str], seeds: list[int], cond=None):
        """Per-word log-odds (batch, most words; 0 past a prompt's last word) and image log-odds (batch,)."""
        cond = den.encode(prompts, self.guidance_scale) if cond is None else cond
        return self.judge.word_logits(self.preview(den, noise, cond, seeds), prompts)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from .factory import save_scorer

        folder = Path(folder)
        save_scorer(self.judge, folder / "judge")
        record = {"preview_steps": self.preview_steps, "guidance_scale": self.guidance_scale, "pipeline": self.pipeline}
        (folder / CONFIG_FILE).write_text(json.dumps({**record, **(extra or {})}, indent=1) + "\n")
        return folder


def load_noise_reward(folder: str | Path) -> NoiseRewardModel:
    """The reward model `NoiseRewardModel.save` (or `latentalign train noise-reward`) wrote into `folder`."""
    from .factory import load_scorer

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise ValueError(f"no noise reward model at {folder}: expected {CONFIG_FILE} (latentalign train noise-reward)")
    record = read_json(folder / CONFIG_FILE)
    judge = load_scorer(folder / "judge")
    if not isinstance(judge, LatentJudge) or judge.word_head is None:
        raise ValueError(f"{folder / 'judge'} is not a judge with a word head")
    model = NoiseRewardModel(judge, record["preview_steps"], record["guidance_scale"], record.get("pipeline"))
    return model.eval().requires_grad_(False)
