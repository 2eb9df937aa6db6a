"""Attend-and-Excite (Chefer et al., 2023) with refinement at chosen steps (IterRef; Grimal et al., step selection
for GSN): move z_t along the gradient of a cross-attention loss so that every subject token gets a strong region.

At each step the prompt branch's cross-attention maps (heads and layers averaged at one resolution) give, per
subject token, a map over the latent grid: start token dropped, x100, softmax over tokens, Gaussian smoothing
(3x3, sigma 0.5). The loss is max over subjects of (1 - max over pixels). z_t takes one gradient step at each of
the first `update_until` of the steps, and at the `refine_at` steps it is refined until the loss is at most
1 - threshold (or `max_refine_iterations` extra steps). On UNet pipelines (SD 1.x/2.x/XL) the maps are the
cross-attention layers'; on SD3 (flow matching) they are the joint attention's image-to-text block, renormalised
over the text keys, and the subject tokens are positions among CLIP's 77 tokens (T5's follow them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from ..adapters import Denoiser
from ..cost import Cost
from ..generate import resolve, sampling_defaults, to_pil
from ..sampling import sample


@dataclass(frozen=True)
class AttentionRefinementConfig:
    # (fraction of the steps, loss threshold): A&E refines at steps {0, 10, 20} of 50 with thresholds 0.05, 0.5, 0.8
    refine_at: tuple[tuple[float, float], ...] = ((0.0, 0.05), (0.2, 0.5), (0.4, 0.8))
    max_refine_iterations: int = 20  # extra updates at a refine step, at most
    update_until: float = 0.5  # one update per step for this fraction of the steps (A&E: 25 of 50)
    step_size: float = 20.0  # alpha_i = step_size * sqrt(linspace(scale_range)[i])
    scale_range: tuple[float, float] = (1.0, 0.5)
    resolution: int | None = None  # attention grid side; None: the UNet's cross-attention grid closest to 16
    smooth: bool = True  # Gaussian smoothing of each token's map (kernel 3, sigma 0.5)

    def __post_init__(self):
        if not all(0 <= f < 1 and 0 <= th <= 1 for f, th in self.refine_at):
            raise ValueError(f"refine_at takes (fraction in [0, 1), threshold in [0, 1]) pairs, got {self.refine_at}")
        if self.max_refine_iterations < 0 or not 0 <= self.update_until <= 1:
            raise ValueError("max_refine_iterations must be >= 0 and update_until in [0, 1]")
        if not math.isfinite(self.step_size) or self.step_size < 0:
            raise ValueError(f"step_size must be finite and >= 0, got {self.step_size}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")


@dataclass
class AttentionRefinementResult:
    """The refined images; `losses[p]` maps each step where the loss was computed to its value there (before that
    step's updates) and `refine_iterations[p]` counts the extra updates spent at the refine steps."""

    images: list[Image.Image]
    latents: torch.Tensor
    prompts: list[str]
    seeds: list[int]
    cost: Cost
    settings: dict
    losses: list[dict[int, float]] = field(default_factory=list)
    refine_iterations: list[int] = field(default_factory=list)


def subject_tokens(pipe, prompt: str, words: list[str] | None) -> list[int]:
    """Token positions of the subject words in the prompt's encoding (each word's first sub-token, every time it
    occurs). On the Shapes world the default subjects are the prompt's shape nouns."""
    if words is None:
        if sampling_defaults(pipe).world != "shapes":
            raise ValueError("attention refinement needs words=[...]: the subject words of the prompt to excite")
        from ..world import vocabulary

        shapes = set(vocabulary()["shapes"])
        words = [w for w in prompt.split() if w in shapes or w[:-1] in shapes]  # "circle", "circles"
    ids = pipe.tokenizer(prompt).input_ids
    positions = []
    for word in words:
        first = pipe.tokenizer(word, add_special_tokens=False).input_ids[:1]
        found = [i for i, tok in enumerate(ids) if first and tok == first[0]]
        if not found:
            raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}")
        positions += found
    if not positions:
        raise ValueError(f"no subject word to excite in {prompt!r}")
    return sorted(set(positions))


def gaussian_smooth(maps: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """3x3 Gaussian smoothing of (n, h, w) maps with reflected borders, as Attend-and-Excite smooths them."""
    x = torch.arange(3, dtype=maps.dtype, device=maps.device) - 1
    k = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :]) / (k.sum() ** 2)
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel[None, None])[:, 0]


def attend_and_excite_loss(maps: torch.Tensor, tokens: list[int], last: int, smooth: bool = True) -> torch.Tensor:
    """max over subject tokens of 1 - max_p A_token[p] for one prompt's maps (size^2, tokens); `last` is the end
    token's position (tokens from 1 to last - 1 compete in the softmax)."""
    side = int(math.isqrt(maps.shape[0]))
    text = (maps[:, 1:last] * 100).softmax(-1)
    per_token = text[:, [i - 1 for i in tokens]].T.reshape(len(tokens), side, side)
    if smooth:
        per_token = gaussian_smooth(per_token)
    return (1 - per_token.flatten(1).max(-1).values).max()


def attention_refinement(
    pipe,
    prompt: str | list[str],
    *,
    words: list[str] | None = None,
    seed: int | list[int] = 0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    config: AttentionRefinementConfig = AttentionRefinementConfig(),
) -> AttentionRefinementResult:
    """Attend-and-Excite with IterRef-style refinement at chosen steps; one prompt at a time (`words`: the
    subject words, the same for every prompt; on the Shapes world they default to each prompt's shape nouns)."""
    prompts, seeds, steps, scale = resolve(pipe, prompt, seed, num_inference_steps, guidance_scale)
    cost = Cost()
    den = Denoiser(pipe, cost)
    available = den.cross_attention_resolutions()
    size = config.resolution or min(available, key=lambda s: (abs(s - 16), -s))
    if size not in available:
        raise ValueError(f"no cross-attention layer works at {size}x{size}; the UNet has {available}")
    tokens = [subject_tokens(pipe, p, words) for p in prompts]
    refine = {min(steps - 1, round(f * steps)): th for f, th in config.refine_at}
    update_steps = round(config.update_until * steps)
    lo, hi = config.scale_range
    alphas = [config.step_size * math.sqrt(lo + (hi - lo) * i / max(steps - 1, 1)) for i in range(steps)]

    den.model.requires_grad_(False)
    finals, all_losses, all_iters = [], [], []
    with cost.timed():
        for p, s, toks in zip(prompts, seeds, tokens, strict=True):
            with torch.no_grad():
                cond = den.encode([p], scale)
            last = len(pipe.tokenizer(p).input_ids) - 1
            latents, schedulers = den.start([s], steps)
            losses: dict[int, float] = {}
            iters = [0]

            def loss_and_grad(z, t, cond=cond, toks=toks, last=last, schedulers=schedulers):
                with torch.enable_grad():  # gradients opened for this step only
                    z = z.detach().requires_grad_(True)
                    maps = den.cross_attention(schedulers.scale_model_input(z, t), t, cond, size)
                    loss = attend_and_excite_loss(maps[0].float(), toks, last, config.smooth)
                    (grad,) = torch.autograd.grad(loss, z)
                return float(loss), torch.nan_to_num(grad)

            def prepare(info, losses=losses, iters=iters, loss_and_grad=loss_and_grad) -> torch.Tensor:
                i, t, z = info["step"], info["t"], info["latents"]
                if i >= update_steps and i not in refine:
                    return z
                loss, grad = loss_and_grad(z, t)
                losses[i] = loss
                if i in refine:
                    for _ in range(config.max_refine_iterations):
                        if loss <= 1 - refine[i]:
                            break
                        z = z - alphas[i] * grad
                        loss, grad = loss_and_grad(z, t)
                        iters[0] += 1
                if i < update_steps:
                    z = z - alphas[i] * grad
                return z.detach()

            with torch.no_grad():
                final = sample(den, latents, cond, schedulers, prepare=prepare)
            finals.append(final)
            all_losses.append(losses)
            all_iters.append(iters[0])
        with torch.no_grad():
            final = torch.cat(finals)
            images = to_pil(den.decode(final))
    settings = {
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "resolution": size,
        "refine_steps": sorted(refine),
        "update_steps": update_steps,
        "subject_tokens": tokens,
    }
    return AttentionRefinementResult(images, final, prompts, seeds, cost, settings, all_losses, all_iters)
