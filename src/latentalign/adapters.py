"""One adapter over diffusers pipelines: `denoise(latents, t, cond) -> (model_output, x0_pred)`.

Every method talks to pipelines only through `Denoiser`; version-specific access to diffusers internals
lives here and nowhere else.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from .cost import Cost


class StoreCrossAttention:
    """diffusers' plain `AttnProcessor` computation, keeping the attention probabilities (which SDPA never
    materialises) of the layers whose query grid is `size` x `size`, averaged over heads: (batch, size^2, tokens)."""

    def __init__(self, store: list[torch.Tensor], size: int):
        self.store, self.size = store, size

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if encoder_hidden_states is not None and probs.shape[1] == self.size**2:
            self.store.append(probs.view(batch, attn.heads, probs.shape[1], probs.shape[2]).mean(1))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class StoreJointAttention:
    """diffusers' `JointAttnProcessor2_0` (SD3's MMDiT blocks), unchanged, plus the image queries' attention over
    the text keys, averaged over heads: (batch, size^2, text tokens). That is the joint softmax renormalised over
    the text keys, i.e. the softmax of the image-to-text logits alone, so it is computed on its own (image x text,
    small) and the block's output still comes from SDPA."""

    def __init__(self, store: list[torch.Tensor], size: int):
        self.store, self.size = store, size
        self.inner = JointAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None and hidden_states.shape[1] == self.size**2:
            batch = hidden_states.shape[0]

            def heads(x: torch.Tensor) -> torch.Tensor:
                return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

            query, key = heads(attn.to_q(hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_added_k is not None:
                key = attn.norm_added_k(key)
            logits = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5  # SDPA's default scale
            self.store.append(logits.softmax(-1).mean(1))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


@contextmanager
def capture_cross_attention(model: UNet2DConditionModel | SD3Transformer2DModel, size: int) -> Iterator[list]:
    """Within the block, the model's text attention stores its maps at `size` x `size` in the yielded list: a
    UNet's cross-attention layers (`attn2`), or an SD3 transformer's joint attention (`attn`; SD3.5's extra
    image-only `attn2` is left alone). The original processors come back afterwards, whatever happens."""
    original = model.attn_processors
    store: list[torch.Tensor] = []
    if isinstance(model, SD3Transformer2DModel):
        storing = {n: StoreJointAttention(store, size) for n in original if n.endswith(".attn.processor")}
    else:
        storing = {n: StoreCrossAttention(store, size) for n in original if ".attn2." in n}
    model.set_attn_processor({**original, **storing})
    try:
        yield store
    finally:
        model.set_attn_processor(original)


def vae_shift(vae) -> float:
    """The latent shift SD3's VAE applies before scaling (`shift_factor`); 0 for SD 1.x/2.x/XL."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


def decode_latents(vae, latents: torch.Tensor, scaling_factor: float | None = None) -> torch.Tensor:
    """Latents as a pipeline produces them (scaled, and shifted for SD3) -> images in [0, 1], NCHW, in the
    latents' dtype; differentiable. A float16 VAE whose config asks for it (`force_upcast`, as SDXL's does: it
    overflows in half precision) decodes in float32, as the stock SDXL pipeline does, and is cast back after."""
    scale = float(vae.config.scaling_factor) if scaling_factor is None else float(scaling_factor)
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        z = latents / scale + vae_shift(vae)
        images = vae.decode(z.to(vae.dtype)).sample
    finally:
        if upcast:
            vae.to(torch.float16)
    return (images / 2 + 0.5).clamp(0, 1).to(latents.dtype)


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts, and the negative (unconditional) embeddings when guidance is on. `added` (and
    `negative_added`) hold the added conditioning, one row per prompt: SDXL's pooled text embeddings and size/crop
    time ids (`added_cond_kwargs`), SD3's `pooled_projections`; None for models without it."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    guidance_scale: float
    added: dict[str, torch.Tensor] | None = None
    negative_added: dict[str, torch.Tensor] | None = None

    @property
    def guided(self) -> bool:
        return self.negative_embeds is not None

    def select(self, index: torch.Tensor | list[int]) -> Conditioning:
        """The conditioning of a subset of the batch (for pruning candidates)."""

        def pick(x):
            if x is None:
                return None
            return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]

        return Conditioning(
            pick(self.prompt_embeds),
            pick(self.negative_embeds),
            self.guidance_scale,
            pick(self.added),
            pick(self.negative_added),
        )

    def model_inputs(self) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """`encoder_hidden_states` and the added conditioning (SDXL's `added_cond_kwargs`, SD3's
        `pooled_projections`) for one denoiser call: negative rows first when guided."""
        if not self.guided:
            return self.prompt_embeds, self.added
        embeds = torch.cat([self.negative_embeds, self.prompt_embeds])
        if self.added is None:
            return embeds, None
        return embeds, {k: torch.cat([self.negative_added[k], self.added[k]]) for k in self.added}


class RowSchedulers:
    """One scheduler per batch row, used where the loop uses one scheduler (`timesteps`, `scale_model_input`,
    `step`): rows can be dropped or split between stages (Best-of-N pruning, memory-bounded batches) without losing
    a multistep scheduler's history (PNDM, DPM-Solver, UniPC), and a stochastic scheduler (DDPM, Euler ancestral)
    takes each row's step noise from that row's generator, so a seed makes the same image alone or in a batch."""

    def __init__(self, schedulers: list, generators: list[torch.Generator]):
        if not schedulers or len(schedulers) != len(generators):
            raise ValueError(f"need one generator per scheduler, got {len(schedulers)} and {len(generators)}")
        self.schedulers, self.generators = schedulers, generators
        self._takes_generator = "generator" in inspect.signature(schedulers[0].step).parameters

    @property
    def timesteps(self) -> torch.Tensor:
        return self.schedulers[0].timesteps

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.schedulers[0], "init_noise_sigma", 1.0))

    def select(self, index: torch.Tensor | list[int]) -> RowSchedulers:
        """The rows at `index`; they share the scheduler objects, so a stage continues where the last one ended."""
        index = [int(i) for i in index]
        return RowSchedulers([self.schedulers[i] for i in index], [self.generators[i] for i in index])

    def scale_model_input(self, latents: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not hasattr(self.schedulers[0], "scale_model_input"):  # flow matching: the model reads z_t as it is
            return latents
        return torch.cat([s.scale_model_input(latents[i : i + 1], t) for i, s in enumerate(self.schedulers)])

    def step(self, model_output: torch.Tensor, t: torch.Tensor | int, latents: torch.Tensor) -> SimpleNamespace:
        rows = []
        for i, (s, g) in enumerate(zip(self.schedulers, self.generators, strict=True)):
            kwargs = {"generator": g} if self._takes_generator else {}
            rows.append(s.step(model_output[i : i + 1], t, latents[i : i + 1], **kwargs).prev_sample)
        return SimpleNamespace(prev_sample=torch.cat(rows))


class Denoiser:
    """A diffusers pipeline seen as a denoiser: UNet epsilon / v / sample prediction (SD 1.x, 2.x, XL) or MMDiT
    flow-matching velocity (SD3)."""

    def __init__(self, pipe: DiffusionPipeline, cost: Cost | None = None):
        self.pipe = pipe
        self.cost = cost if cost is not None else Cost()
        transformer = getattr(pipe, "transformer", None)
        if isinstance(transformer, SD3Transformer2DModel):
            self._init_sd3(pipe, transformer)
        else:
            self._init_unet(pipe)
        self.vae = pipe.vae

    def _init_unet(self, pipe: DiffusionPipeline) -> None:
        unet = getattr(pipe, "unet", None)
        if not isinstance(unet, UNet2DConditionModel):
            raise ValueError(
                f"{type(pipe).__name__} has no UNet2DConditionModel or SD3Transformer2DModel; "
                "latentalign supports Stable Diffusion 1.x/2.x/XL/3 pipelines"
            )
        added = unet.config.addition_embed_type
        if added not in (None, "text_time"):
            raise ValueError(f"{type(pipe).__name__}'s UNet needs added conditioning {added!r}; SDXL's is 'text_time'")
        if added == "text_time" and not hasattr(pipe, "_get_add_time_ids"):
            raise ValueError(
                f"{type(pipe).__name__} has an SDXL-style UNet ('text_time' added conditioning) but no "
                "_get_add_time_ids: load it as a StableDiffusionXLPipeline"
            )
        if unet.config.time_cond_proj_dim is not None:
            raise ValueError(
                f"{type(pipe).__name__}'s UNet takes a guidance embedding (time_cond_proj_dim, LCM-style), "
                "which is not supported"
            )
        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"scheduler {type(pipe.scheduler).__name__} is not supported: it has no alphas_cumprod")
        self.family = "sdxl" if added == "text_time" else "sd"
        self.model = unet
        self.prediction_type = pipe.scheduler.config.prediction_type

    def _init_sd3(self, pipe: DiffusionPipeline, transformer: SD3Transformer2DModel) -> None:
        scheduler = pipe.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(
                f"an SD3 transformer needs a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}"
            )
        if scheduler.config.use_dynamic_shifting or scheduler.config.stochastic_sampling:
            raise ValueError(
                "FlowMatchEulerDiscreteScheduler with use_dynamic_shifting or stochastic_sampling is not supported"
            )
        self.family = "sd3"
        self.model = transformer
        self.prediction_type = "flow"  # the transformer predicts the velocity noise - x0

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.model.config.sample_size
        return (self.model.config.in_channels, size, size)

    @property
    def text_dim(self) -> int:
        """The width of the prompt embeddings the model reads (a UNet's cross_attention_dim, SD3's
        joint_attention_dim)."""
        key = "joint_attention_dim" if self.family == "sd3" else "cross_attention_dim"
        dim = self.model.config[key]
        return int(dim[0] if isinstance(dim, (list, tuple)) else dim)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def new_scheduler(self, num_inference_steps: int, **overrides):
        """A fresh copy of the pipeline's scheduler, so runs never share (or mutate) scheduler state; `overrides`
        change config keys of the copy (e.g. `prediction_type`)."""
        # from_config resets every key listed in `_use_default_values` to the class default, which undoes fixes a
        # pipeline made to its scheduler's config at init (StableDiffusionPipeline sets steps_offset=1): pass all.
        config = {k: v for k, v in self.pipe.scheduler.config.items() if k != "_use_default_values"}
        scheduler = type(self.pipe.scheduler).from_config({**config, **overrides})
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        return scheduler

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """One standard Gaussian latent per seed, drawn on the CPU so a seed means the same noise on any device."""
        return self._draw(seeds)[0]

    def _draw(self, seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.cat([torch.randn((1, *self.latent_shape), generator=g) for g in generators])
        return noise.to(self.device, self.dtype), generators

    def start(self, seeds: list[int], num_inference_steps: int) -> tuple[torch.Tensor, RowSchedulers]:
        """The first latents of a run from each seed and one scheduler per row (`RowSchedulers`).

        The latents are the seed's noise times the run's `init_noise_sigma` (sigma-space schedulers such as Euler
        start at a sigma that depends on the step count, so the pipeline's own scheduler, whatever it was last set
        to, must not decide it). A stochastic scheduler draws its step noise from the row's generator after the
        initial noise, as diffusers does with one generator per image."""
        noise, generators = self._draw(seeds)
        template = self.new_scheduler(num_inference_steps)
        rows = RowSchedulers([copy.deepcopy(template) for _ in seeds], generators)
        return noise * rows.init_noise_sigma, rows

    def encode(
        self, prompts: list[str], guidance_scale: float, negative_prompt: list[str] | None = None
    ) -> Conditioning:
        guided = guidance_scale > 1.0
        if self.family == "sd":
            pos, neg = self.pipe.encode_prompt(prompts, self.device, 1, guided, negative_prompt)
            return Conditioning(pos, neg if guided else None, float(guidance_scale))
        if self.family == "sd3":  # CLIP-L, CLIP-G (and T5 when loaded); pooled CLIP embeddings
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=negative_prompt,
            )
            added, negative_added = {"pooled_projections": pooled}, {"pooled_projections": neg_pooled}
        else:  # SDXL
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=prompts,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=guided,
                negative_prompt=negative_prompt,
            )
            # The stock pipeline's default micro-conditioning: original size = target size = the image size, no crop
            scale = self.pipe.vae_scale_factor
            size = (self.latent_shape[1] * scale, self.latent_shape[2] * scale)
            te2 = getattr(self.pipe, "text_encoder_2", None)
            projection_dim = int(pooled.shape[-1]) if te2 is None else te2.config.projection_dim
            time_ids = self.pipe._get_add_time_ids(
                size, (0, 0), size, dtype=pos.dtype, text_encoder_projection_dim=projection_dim
            )
            time_ids = time_ids.to(self.device).repeat(len(prompts), 1)
            added = {"text_embeds": pooled.to(self.device), "time_ids": time_ids}
            negative_added = {"text_embeds": neg_pooled.to(self.device), "time_ids": time_ids} if guided else None
        if not guided:
            return Conditioning(pos, None, float(guidance_scale), added)
        return Conditioning(pos, neg, float(guidance_scale), added, negative_added)

    def x0_from(self, model_output: torch.Tensor, latents: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The denoised prediction (Tweedie's x0) from a model output, for the scheduler's parameterisation."""
        if self.prediction_type == "flow":  # z_t = (1 - sigma) x0 + sigma noise, v = noise - x0, t = 1000 sigma
            sigma = torch.as_tensor(t, dtype=latents.dtype, device=latents.device) / self.num_train_timesteps
            return latents - sigma * model_output
        a = self.pipe.scheduler.alphas_cumprod.to(latents.device)[int(t)].to(latents.dtype)
        if self.prediction_type == "epsilon":
            return (latents - (1 - a).sqrt() * model_output) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * latents - (1 - a).sqrt() * model_output
        if self.prediction_type == "sample":
            return model_output
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def denoise(
        self, latents: torch.Tensor, t: torch.Tensor | int, cond: Conditioning
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided denoiser evaluation: `(model_output, x0_pred)`."""
        embeds, added = cond.model_inputs()
        x = torch.cat([latents, latents]) if cond.guided else latents
        out = self._call(x, t, embeds, added)
        if cond.guided:
            uncond, text = out.chunk(2)
            out = uncond + cond.guidance_scale * (text - uncond)
        self.cost.denoiser_evals += x.shape[0]
        return out, self.x0_from(out, latents, t)

    def _call(self, x: torch.Tensor, t, embeds: torch.Tensor, added: dict | None) -> torch.Tensor:
        """One plain model call on a batch (no guidance arithmetic, no cost counted)."""
        if self.family == "sd3":
            timestep = torch.as_tensor(t, device=x.device).expand(x.shape[0])
            return self.model(
                hidden_states=x, timestep=timestep, encoder_hidden_states=embeds, return_dict=False, **added
            )[0]
        return self.model(x, t, embeds, added_cond_kwargs=added).sample

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    def cross_attention_resolutions(self) -> list[int]:
        """The query grid sizes at which the model attends to the text, largest first: a UNet's cross-attention
        layers at its latent size; SD3's joint attention at one grid, the latent size over the patch size."""
        size, model = self.latent_shape[1], self.model
        if self.family == "sd3":
            return [size // model.config.patch_size]
        n = len(model.down_blocks)  # down block i works at size / 2^i, the mid block at the lowest, up blocks back up
        placed = [(b, size >> i) for i, b in enumerate(model.down_blocks)] + [(model.mid_block, size >> (n - 1))]
        placed += [(b, size >> (n - 1 - i)) for i, b in enumerate(model.up_blocks)]
        out = {s for b, s in placed if b is not None and getattr(b, "has_cross_attention", False)}
        return sorted(out, reverse=True)

    def cross_attention(self, latents: torch.Tensor, t, cond: Conditioning, size: int) -> torch.Tensor:
        """The prompt branch's attention from the image to the text at `size` x `size`, averaged over heads and
        layers: (batch, size^2, text tokens), each row a distribution over the text tokens (SD3: CLIP's 77 tokens
        first, then T5's). Differentiable in `latents` (already the scaled model input)."""
        with capture_cross_attention(self.model, size) as store:
            self._call(latents, t, cond.prompt_embeds, cond.added)
        self.cost.denoiser_evals += latents.shape[0]
        if not store:
            raise ValueError(
                f"no cross-attention layer works at {size}x{size}; the model has {self.cross_attention_resolutions()}"
            )
        return torch.stack(store).mean(0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the pipeline produces them -> images in [0, 1], NCHW."""
        self.cost.vae_decodes += latents.shape[0]
        return decode_latents(self.vae, latents)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], NCHW -> latents as the pipeline makes them (the posterior mean, shifted and scaled)."""
        self.cost.vae_encodes += images.shape[0]
        dist = self.vae.encode(images.to(self.device, self.dtype) * 2 - 1).latent_dist
        return (dist.mean - vae_shift(self.vae)) * self.vae_scaling_factor
