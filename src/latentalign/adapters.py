"""One adapter layer over diffusers pipelines: `denoise(latents, t, cond) -> (model_output, x0_pred)`.

Every method talks to pipelines only through `Denoiser`, one class per pipeline family chosen from the
pipeline's component types; version-specific access to diffusers internals lives here and nowhere else.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from .cost import Cost


class StoreCrossAttention:
    """diffusers' plain `AttnProcessor` computation, keeping the attention probabilities (which SDPA never
    materialises) of the layers whose query grid is `size` x `size`, averaged over heads: (batch, size^2, tokens)."""

    def __init__(self, store: list[torch.Tensor], size: int | tuple[int, int]):
        self.store, self.cells = store, _cells(size)

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
        if encoder_hidden_states is not None and probs.shape[1] == self.cells:
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

    def __init__(self, store: list[torch.Tensor], size: int | tuple[int, int]):
        self.store, self.cells = store, _cells(size)
        self.inner = JointAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is not None and hidden_states.shape[1] == self.cells:
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


class RepeatedLastToken:
    """SD3's joint attention with the last text token standing for `repeats` identical copies of itself
    (log(repeats) on its attention logit): equal to feeding the copies, at the cost of one."""

    def __init__(self, repeats: int):
        self.bias = math.log(repeats)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch = hidden_states.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        cq, ck = heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)
        mask = torch.zeros(1, k.shape[2], dtype=q.dtype, device=q.device)
        mask[0, -1] = self.bias
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * (out.shape[-1]))
        image, text = out[:, : hidden_states.shape[1]], out[:, hidden_states.shape[1] :]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        image = attn.to_out[1](attn.to_out[0](image))
        return image, text


def repeat_last_text_token(transformer, repeats: int) -> dict:
    """Install `RepeatedLastToken` on every joint attention of an SD3 transformer; returns the processors to restore."""
    original = transformer.attn_processors
    transformer.set_attn_processor(
        {n: RepeatedLastToken(repeats) if n.endswith(".attn.processor") else p for n, p in original.items()}
    )
    return original


def _cells(size: int | tuple[int, int]) -> int:
    """Query tokens of an attention grid: `size` x `size`, or height x width."""
    return size * size if isinstance(size, int) else size[0] * size[1]


@contextmanager
def storing_attention(model, storing: Callable[[dict, list], dict]) -> Iterator[list]:
    """Within the block, the processors `storing(original, store)` returns (by name) replace the model's and put
    their maps in the yielded list; the original processors come back afterwards, whatever happens."""
    original = model.attn_processors
    store: list[torch.Tensor] = []
    model.set_attn_processor({**original, **storing(original, store)})
    try:
        yield store
    finally:
        model.set_attn_processor(original)


def vae_shift(vae) -> float:
    """The latent shift SD3's VAE applies before scaling (`shift_factor`); 0 for SD 1.x/2.x/XL."""
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


def decode_latents(
    vae, latents: torch.Tensor, scaling_factor: float | None = None, upcast_vae=None, upcast: bool | None = None
) -> torch.Tensor:
    """Latents as a pipeline produces them (scaled, and shifted for SD3) -> images in [0, 1], NCHW, in the
    latents' dtype; differentiable. A float16 VAE whose config asks for it (`force_upcast`, as SDXL's does: it
    overflows in half precision) decodes in float32, as the stock SDXL pipeline does, and is cast back after; its
    images stay float32, as the stock pipeline's.
    When gradients flow (noise optimisation), the VAE is not cast in place (autograd would find half weights in
    the backward pass): `upcast_vae`, a float32 copy, decodes instead (`Denoiser` keeps one per run)."""
    scale = float(vae.config.scaling_factor) if scaling_factor is None else float(scaling_factor)
    if upcast is None:  # `Denoiser` decides per family: the stock SDXL pipeline upcasts, SD 1.x / SD3 do not
        upcast = bool(getattr(vae.config, "force_upcast", False))
    upcast = upcast and vae.dtype == torch.float16
    # an upcast decode reads float32 latents before scaling them, as the stock SDXL pipeline does
    z = (latents.float() if upcast else latents) / scale + vae_shift(vae)
    if upcast and torch.is_grad_enabled() and latents.requires_grad:
        decoder = upcast_vae if upcast_vae is not None else copy.deepcopy(vae).to(torch.float32)
        images = decoder.decode(z.float()).sample
    elif upcast:
        vae.to(torch.float32)
        try:
            images = vae.decode(z.to(torch.float32)).sample
        finally:
            vae.to(torch.float16)
    else:
        images = vae.decode(z.to(vae.dtype)).sample
    images = (images / 2 + 0.5).clamp(0, 1)
    return images if upcast else images.to(latents.dtype)  # an upcast decode stays float32, as the stock SDXL's


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompts, and the negative (unconditional) embeddings when guidance is on. `added` (and
    `negative_added`) hold the added conditioning, one row per prompt: SDXL's pooled text embeddings and size/crop
    time ids (`added_cond_kwargs`), SD3's `pooled_projections`; None for models without it. `guidance_rescale` is
    the stock pipelines' rescale of the guided prediction (Lin et al., 2023; 0: off)."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    guidance_scale: float
    added: dict[str, torch.Tensor] | None = None
    negative_added: dict[str, torch.Tensor] | None = None
    guidance_rescale: float = 0.0

    @property
    def guided(self) -> bool:
        return self.negative_embeds is not None

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> Conditioning:
        """The conditioning of a subset of the batch (for pruning candidates)."""

        def pick(x):
            if x is None:
                return None
            return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]

        return replace(
            self,
            prompt_embeds=pick(self.prompt_embeds),
            negative_embeds=pick(self.negative_embeds),
            added=pick(self.added),
            negative_added=pick(self.negative_added),
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


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    """What the stock pipelines pass to `scheduler.step` (`prepare_extra_step_kwargs`): eta and the generator,
    where the scheduler takes them."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


# Schedulers whose state does not depend on the samples (a step index at most): one object steps any set of rows,
# so rows can be dropped between steps without keeping a scheduler per row.
ROW_FREE_SCHEDULERS = {
    "DDIMScheduler",
    "DDPMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "LCMScheduler",
    "TCDScheduler",
}


class BatchedScheduler:
    """One scheduler stepping every row at once, as the stock pipelines do: `step` gets the rows' generator (one
    shared generator as it is, else one per row) and eta, exactly as `prepare_extra_step_kwargs` passes them. Only
    for schedulers without per-sample state (`ROW_FREE_SCHEDULERS`): `select` then keeps the same state for fewer
    rows."""

    def __init__(self, scheduler, generators: list[torch.Generator], eta: float = 0.0):
        if not generators:
            raise ValueError("need at least one row")
        self.scheduler, self.generators, self.eta = scheduler, generators, eta

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))

    def __len__(self) -> int:
        return len(self.generators)

    def select(self, index) -> BatchedScheduler:
        """The rows at `index`, on a copy of the scheduler at its current step (the copy steps on its own)."""
        return BatchedScheduler(copy.deepcopy(self.scheduler), [self.generators[int(i)] for i in index], self.eta)

    @staticmethod
    def concat(parts: list[BatchedScheduler]) -> BatchedScheduler:
        """Rows of parts that stepped alike (same steps), in order, as one set."""
        return BatchedScheduler(parts[-1].scheduler, [g for p in parts for g in p.generators], parts[-1].eta)

    def scale_model_input(self, latents: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not hasattr(self.scheduler, "scale_model_input"):  # flow matching: the model reads z_t as it is
            return latents
        return self.scheduler.scale_model_input(latents, t)

    def step(self, model_output: torch.Tensor, t: torch.Tensor | int, latents: torch.Tensor) -> SimpleNamespace:
        shared = all(g is self.generators[0] for g in self.generators)
        generator = self.generators[0] if shared else self.generators
        kwargs = _step_kwargs(self.scheduler, generator, self.eta)
        return SimpleNamespace(prev_sample=self.scheduler.step(model_output, t, latents, **kwargs).prev_sample)


class RowSchedulers:
    """One scheduler per batch row, used where the loop uses one scheduler (`timesteps`, `scale_model_input`,
    `step`): rows can be dropped or split between stages (Best-of-N pruning, memory-bounded batches) without losing
    a multistep scheduler's history (PNDM, DPM-Solver, UniPC), and a stochastic scheduler takes each row's step
    noise from that row's generator, so a seed makes the same image alone or in a batch."""

    def __init__(self, schedulers: list, generators: list[torch.Generator], eta: float = 0.0):
        if not schedulers or len(schedulers) != len(generators):
            raise ValueError(f"need one generator per scheduler, got {len(schedulers)} and {len(generators)}")
        self.schedulers, self.generators, self.eta = schedulers, generators, eta

    @property
    def timesteps(self) -> torch.Tensor:
        return self.schedulers[0].timesteps

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.schedulers[0], "init_noise_sigma", 1.0))

    def __len__(self) -> int:
        return len(self.schedulers)

    def select(self, index: torch.Tensor | list[int]) -> RowSchedulers:
        """The rows at `index`; they share the scheduler objects, so a stage continues where the last one ended."""
        index = [int(i) for i in index]
        return RowSchedulers([self.schedulers[i] for i in index], [self.generators[i] for i in index], self.eta)

    @staticmethod
    def concat(parts: list[RowSchedulers]) -> RowSchedulers:
        return RowSchedulers(
            [s for p in parts for s in p.schedulers], [g for p in parts for g in p.generators], parts[0].eta
        )

    def scale_model_input(self, latents: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not hasattr(self.schedulers[0], "scale_model_input"):  # flow matching: the model reads z_t as it is
            return latents
        return torch.cat([s.scale_model_input(latents[i : i + 1], t) for i, s in enumerate(self.schedulers)])

    def step(self, model_output: torch.Tensor, t: torch.Tensor | int, latents: torch.Tensor) -> SimpleNamespace:
        rows = []
        for i, (s, g) in enumerate(zip(self.schedulers, self.generators, strict=True)):
            kwargs = _step_kwargs(s, g, self.eta)
            rows.append(s.step(model_output[i : i + 1], t, latents[i : i + 1], **kwargs).prev_sample)
        return SimpleNamespace(prev_sample=torch.cat(rows))


def clone_generator(generator: torch.Generator) -> torch.Generator:
    """A generator in the same state that draws independently of the original (replaying its stream)."""
    copy_ = torch.Generator(device=generator.device)
    copy_.set_state(generator.get_state())
    return copy_


def row_schedulers(template, generators: list[torch.Generator], eta: float = 0.0) -> BatchedScheduler | RowSchedulers:
    """The scheduler set for rows starting from `template` (a fresh scheduler with its timesteps set): one batched
    scheduler where its state is sample-free, else one copy per row."""
    if type(template).__name__ in ROW_FREE_SCHEDULERS:
        return BatchedScheduler(copy.deepcopy(template), list(generators), eta)
    return RowSchedulers([copy.deepcopy(template) for _ in generators], list(generators), eta)


def unwrap(model):
    """The module under a `torch.compile` wrapper (`OptimizedModule._orig_mod`), else the module itself."""
    return getattr(model, "_orig_mod", model)


class Denoiser:
    """A diffusers pipeline seen as a denoiser, `denoise(latents, t, cond) -> (model_output, x0_pred)`.

    `Denoiser(pipe)` returns the adapter of the pipeline's family, chosen from its component types (k-diffusion's
    `external.py`: one small wrapper per foreign model): `UNetDenoiser` (SD 1.x/2.x), `SDXLDenoiser`,
    `SD3Denoiser`, `FluxDenoiser`, `PixArtDenoiser`. Methods see only this interface; latents are always the
    spatial (batch, channels, height, width) grid, also for Flux, whose packed 2x2 patches stay inside its adapter.
    A `torch.compile`d model (the module replaced, or compiled in place) is called as it is; its configuration and
    attention processors are read from the module under it. `options` are the family's own call arguments
    (`max_sequence_length`, PixArt's `use_resolution_binning`, ...; `call_options`)."""

    model_attribute: ClassVar[str] = "unet"
    prediction_type: str = "epsilon"
    needs_pooled_embeds: ClassVar[bool] = False  # prompt_embeds= must come with pooled_prompt_embeds= (check_inputs)
    # the family's own `__call__` arguments that generate passes on, with the stock defaults
    call_options: ClassVar[dict[str, Any]] = {}
    max_sequence_limit: ClassVar[int | None] = None  # the stock check_inputs' bound on max_sequence_length

    def __new__(cls, pipe=None, *args, **kwargs):  # pipe=None: copy and pickle call __new__ without it
        if cls is Denoiser:
            cls = adapter_class(pipe)
        return super().__new__(cls)

    def __init__(
        self,
        pipe: DiffusionPipeline,
        cost: Cost | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        model_kwargs: dict | None = None,
        options: dict | None = None,
    ):
        self.pipe = pipe
        self.cost = cost if cost is not None else Cost()
        self.model = getattr(pipe, self.model_attribute)
        self.core = unwrap(self.model)
        self.check_pipeline(pipe)
        self.vae = pipe.vae
        self._device, self._dtype = None, None
        self.model_kwargs = dict(model_kwargs or {})  # cross_attention_kwargs / joint_attention_kwargs
        unknown = set(options or {}) - set(self.call_options)
        if unknown:
            raise TypeError(f"{type(pipe).__name__} takes no {sorted(unknown)[0]!r} here")
        from .core import call_default

        stock = {k: call_default(pipe, k, v) for k, v in self.call_options.items()}  # PixArt-Sigma: 300 tokens
        if stock.get("clean_caption"):  # the stock pipeline turns it off (with a warning) without bs4 and ftfy
            from diffusers.utils import is_bs4_available, is_ftfy_available

            stock["clean_caption"] = is_bs4_available() and is_ftfy_available()
        self.options = {**stock, **(options or {})}
        limit, length = self.max_sequence_limit, self.options.get("max_sequence_length")
        if limit is not None and length is not None and length > limit:
            raise ValueError(f"max_sequence_length must be at most {limit} for {type(pipe).__name__}, got {length}")
        self._upcast_vae = None
        self.latent_size = self._latent_size(height, width)

    @classmethod
    def handles(cls, pipe) -> bool:
        raise NotImplementedError

    def check_pipeline(self, pipe) -> None:
        """Refuse, with a short error, a pipeline of this family that the adapter cannot drive."""

    # ---- sizes ------------------------------------------------------------------------------------------------
    @property
    def patch(self) -> int:
        """Latent cells per model token along a side (the stock check_inputs' extra multiple)."""
        return 1

    @property
    def default_latent_side(self) -> int:
        return int(self.core.config.sample_size)

    def _latent_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The latent grid for an image of `height` x `width` pixels (None: the stock default); refused unless the
        VAE (and the model's patches) divide it."""
        factor = int(self.pipe.vae_scale_factor)
        multiple = factor * self.patch
        sizes = []
        for name, value in (("height", height), ("width", width)):
            if value is None:
                sizes.append(self.default_latent_side)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < multiple or value % multiple:
                raise ValueError(f"{name} must be a positive multiple of {multiple} for this pipeline, got {value!r}")
            sizes.append(value // factor)
        return sizes[0], sizes[1]

    @property
    def device(self) -> torch.device:
        if self._device is None:  # read once: diffusers finds a model's device by walking its parameters
            # the stock pipelines run on `_execution_device` (the accelerator of a CPU-offloaded pipeline)
            execution = getattr(self.pipe, "_execution_device", None)
            self._device = execution if isinstance(execution, torch.device) else self.core.device
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        if self._dtype is None:
            self._dtype = self.core.dtype
        return self._dtype

    @property
    def latent_channels(self) -> int:
        return int(self.core.config.in_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, *self.latent_size)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the run returns."""
        factor = int(self.pipe.vae_scale_factor)
        return self.latent_size[0] * factor, self.latent_size[1] * factor

    @property
    def text_dim(self) -> int:
        """The width of the prompt embeddings the model reads."""
        dim = self.core.config["cross_attention_dim"]
        return int(dim[0] if isinstance(dim, (list, tuple)) else dim)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.num_train_timesteps)

    # ---- schedules and noise ----------------------------------------------------------------------------------
    def new_scheduler(self, num_inference_steps: int | None, *, timesteps=None, sigmas=None, **overrides):
        """A fresh copy of the pipeline's scheduler with its timesteps set as the stock pipelines set them
        (`retrieve_timesteps`: a step count, or custom `timesteps` / `sigmas`, with the family's `schedule`), so
        runs never share (or mutate) scheduler state; `overrides` change config keys of the copy (e.g.
        `prediction_type`)."""
        scheduler = self._fresh_scheduler(overrides)
        timesteps, sigmas, kwargs = self.schedule(scheduler, num_inference_steps, timesteps, sigmas)
        retrieve_timesteps(scheduler, num_inference_steps, self.device, timesteps, sigmas, **kwargs)
        return scheduler

    def schedule(self, scheduler, num_inference_steps, timesteps, sigmas) -> tuple[Any, Any, dict]:
        """The family's `retrieve_timesteps` arguments: (timesteps, sigmas, extra keywords such as `mu`)."""
        return timesteps, sigmas, {}

    def _fresh_scheduler(self, overrides: dict):
        # from_config resets every key listed in `_use_default_values` to the class default, which undoes fixes a
        # pipeline made to its scheduler's config at init (StableDiffusionPipeline sets steps_offset=1): pass all.
        config = {k: v for k, v in self.pipe.scheduler.config.items() if k != "_use_default_values"}
        return type(self.pipe.scheduler).from_config({**config, **overrides})

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """One standard Gaussian latent per seed, drawn on the CPU so a seed means the same noise on any device."""
        return self._draw(seeds)[0]

    def draw(self, generator: torch.Generator | list[torch.Generator], rows: int) -> torch.Tensor:
        """`rows` standard Gaussian latents as the stock pipelines draw them (`randn_tensor`, in the model's dtype):
        one generator draws the whole batch, a list one row each."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor((rows, *self.latent_shape), generator=generator, device=self.device, dtype=self.dtype)

    def _draw(self, seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        from .core import check_seeds

        check_seeds([int(s) for s in seeds])  # a seed of 2**32 or more would silently repeat a smaller one
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return self.draw(generators, len(seeds)), generators

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

    # ---- text -------------------------------------------------------------------------------------------------
    def encode(
        self,
        prompts: list[str] | None,
        guidance_scale: float,
        negative_prompt: list[str] | None = None,
        *,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        guidance_rescale: float = 0.0,
    ) -> Conditioning:
        """The pipeline's own `encode_prompt`, called as its `__call__` calls it: one row per image (prompts x
        `num_images_per_prompt`), negative rows when guided (guidance > 1); the family's own call arguments come
        from `options`."""
        args = SimpleNamespace(
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
            guidance_rescale=guidance_rescale,
        )
        return self._encode(prompts, float(guidance_scale), negative_prompt, args)

    def _encode(self, prompts, guidance_scale: float, negative_prompt, a: SimpleNamespace) -> Conditioning:
        guided = guidance_scale > 1.0
        pos, neg = self.pipe.encode_prompt(prompts, **self._common(guided, negative_prompt, a))
        return Conditioning(pos, neg if guided else None, guidance_scale, guidance_rescale=a.guidance_rescale)

    def _common(self, guided: bool, negative_prompt, a: SimpleNamespace) -> dict:
        return dict(
            device=self.device,
            num_images_per_prompt=a.num_images_per_prompt,
            do_classifier_free_guidance=guided,
            negative_prompt=negative_prompt,
            prompt_embeds=a.prompt_embeds,
            negative_prompt_embeds=a.negative_prompt_embeds,
            lora_scale=self.model_kwargs.get("scale"),
            clip_skip=a.clip_skip,
        )

    @property
    def attention_tokenizer(self):
        """The tokenizer whose token positions index the text axis of `cross_attention`'s maps."""
        return self.pipe.tokenizer

    def attention_text(self, text: str) -> str:
        """`text` as the pipeline hands it to that tokenizer (PixArt lowercases and cleans captions first)."""
        return text

    def check_embeds(self, prompt_embeds, negative_prompt_embeds) -> None:
        """Refuse, before any work, given embeddings the family's stock check_inputs would refuse."""

    # ---- the model --------------------------------------------------------------------------------------------
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
        out, text, rows = self._guided(latents, t, cond)
        if text is not None and cond.guidance_rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            out = rescale_noise_cfg(out, text, guidance_rescale=cond.guidance_rescale)
        self.cost.denoiser_evals += rows
        return out, self.x0_from(out, latents, t)

    def _guided(self, latents, t, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Classifier-free guidance as the UNet, SD3 and PixArt pipelines do it: negative and prompt rows in one
        batch. Returns the guided output, the prompt branch's (None unguided) and the rows evaluated."""
        embeds, added = cond.model_inputs()
        if not cond.guided:
            return self._call(latents, t, embeds, added), None, latents.shape[0]
        uncond, text = self._call(torch.cat([latents, latents]), t, embeds, added).chunk(2)
        return uncond + cond.guidance_scale * (text - uncond), text, 2 * latents.shape[0]

    @contextmanager
    def compact_repeated_text(self, cond: Conditioning) -> Iterator[Conditioning]:
        """`cond` as the model calls inside the block may read it more cheaply, to the same outputs up to float
        rounding (not bit for bit: for training paths, never for plain generation). Here: `cond` itself."""
        yield cond

    def _call(self, x: torch.Tensor, t, embeds: torch.Tensor, added: dict | None) -> torch.Tensor:
        """One plain model call on a batch (no guidance arithmetic, no cost counted)."""
        kwargs = {"cross_attention_kwargs": self.model_kwargs} if self.model_kwargs else {}
        return self.model(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **kwargs)[0]

    # ---- attention --------------------------------------------------------------------------------------------
    def cross_attention_resolutions(self) -> list[int]:
        """The query grid heights at which the model attends to the text, largest first."""
        return [self.latent_shape[1] // self.patch]

    def attention_grid(self, size: int) -> tuple[int, int]:
        """The (height, width) of the attention grid whose height is `size` (one of
        `cross_attention_resolutions`), for this run's latent aspect ratio."""
        height, width = self.latent_size
        return size, max(1, size * width // height)

    def storing_processors(self, original: dict, store: list, grid: tuple[int, int], text_tokens: int) -> dict:
        """Processors that store the image-to-text attention at `grid` (by processor name)."""
        return {n: StoreCrossAttention(store, grid) for n in original if ".attn2." in n}

    def capturing_attention(self, grid: int | tuple[int, int], text_tokens: int = 0):
        """A context manager: within it, the model's image-to-text attention at `grid` is stored in the yielded
        list (`storing_processors`); its own processors come back afterwards, whatever happens."""
        return storing_attention(self.core, lambda o, s: self.storing_processors(o, s, grid, text_tokens))

    def cross_attention(self, latents: torch.Tensor, t, cond: Conditioning, size: int) -> torch.Tensor:
        """The prompt branch's attention from the image to the text at `size` x `size`, averaged over heads and
        layers: (batch, size^2, text tokens), each row a distribution over the text tokens (positions of
        `attention_tokenizer`'s encoding). Differentiable in `latents` (already the scaled model input)."""
        grid = self.attention_grid(size)
        with self.capturing_attention(grid, cond.prompt_embeds.shape[1]) as store:
            self._call(latents, t, cond.prompt_embeds, cond.added)
        self.cost.denoiser_evals += latents.shape[0]
        if not store:
            raise ValueError(
                f"no cross-attention layer works at {grid[0]}x{grid[1]}; the model has "
                f"{self.cross_attention_resolutions()}"
            )
        return torch.stack(store).mean(0)

    # ---- the VAE ----------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the pipeline produces them -> images in [0, 1], NCHW (differentiable), decoded in the VAE's
        own dtype as the SD 1.x / SD3 / Flux / PixArt pipelines do."""
        self.cost.vae_decodes += latents.shape[0]
        return decode_latents(self.vae, latents, upcast=False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], NCHW -> latents as the pipeline makes them (the posterior mean, shifted and scaled)."""
        self.cost.vae_encodes += images.shape[0]
        dist = self.vae.encode(images.to(self.device, self.dtype) * 2 - 1).latent_dist
        return (dist.mean - vae_shift(self.vae)) * self.vae_scaling_factor


def retrieve_timesteps(scheduler, num_inference_steps, device, timesteps=None, sigmas=None, **kwargs):
    """diffusers' `retrieve_timesteps`, the one every stock pipeline calls."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps as retrieve

    return retrieve(scheduler, num_inference_steps, device, timesteps, sigmas, **kwargs)


def flow_shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """`mu` of a dynamically shifted flow-matching schedule for `image_seq_len` image tokens (`calculate_shift`
    with the scheduler's config, as the SD3 and Flux pipelines compute it)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    return calculate_shift(
        image_seq_len,
        c.get("base_image_seq_len", 256),
        c.get("max_image_seq_len", 4096),
        c.get("base_shift", 0.5),
        c.get("max_shift", max_shift),
    )


class UNetDenoiser(Denoiser):
    """SD 1.x / 2.x: a `UNet2DConditionModel` with epsilon, v or sample prediction."""

    @classmethod
    def handles(cls, pipe) -> bool:
        return isinstance(unwrap(getattr(pipe, "unet", None)), UNet2DConditionModel)

    def check_pipeline(self, pipe) -> None:
        added = self.core.config.addition_embed_type
        if added not in (None, "text_time"):
            raise ValueError(f"{type(pipe).__name__}'s UNet needs added conditioning {added!r}; SDXL's is 'text_time'")
        if added == "text_time" and not hasattr(pipe, "_get_add_time_ids"):
            raise ValueError(
                f"{type(pipe).__name__} has an SDXL-style UNet ('text_time' added conditioning) but no "
                "_get_add_time_ids: load it as a StableDiffusionXLPipeline"
            )
        if self.core.config.time_cond_proj_dim is not None:
            raise ValueError(
                f"{type(pipe).__name__}'s UNet takes a guidance embedding (time_cond_proj_dim, LCM-style), "
                "which is not supported"
            )
        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"scheduler {type(pipe.scheduler).__name__} is not supported: it has no alphas_cumprod")
        self.prediction_type = pipe.scheduler.config.prediction_type

    def cross_attention_resolutions(self) -> list[int]:
        """A UNet's cross-attention layers work at its latent size over 2^i: down block i, the mid block at the
        lowest, the up blocks back up."""
        size, model = self.latent_shape[1], self.core
        n = len(model.down_blocks)
        placed = [(b, size >> i) for i, b in enumerate(model.down_blocks)] + [(model.mid_block, size >> (n - 1))]
        placed += [(b, size >> (n - 1 - i)) for i, b in enumerate(model.up_blocks)]
        out = {s for b, s in placed if b is not None and getattr(b, "has_cross_attention", False)}
        return sorted(out, reverse=True)


class SDXLDenoiser(UNetDenoiser):
    """SDXL: the UNet's 'text_time' added conditioning (pooled text embeddings and size/crop time ids)."""

    needs_pooled_embeds: ClassVar[bool] = True

    @classmethod
    def handles(cls, pipe) -> bool:
        unet = unwrap(getattr(pipe, "unet", None))
        return isinstance(unet, UNet2DConditionModel) and unet.config.addition_embed_type == "text_time"

    def _encode(self, prompts, guidance_scale: float, negative_prompt, a: SimpleNamespace) -> Conditioning:
        guided = guidance_scale > 1.0
        common = self._common(guided, negative_prompt, a)
        pooled_kwargs = dict(
            pooled_prompt_embeds=a.pooled_prompt_embeds, negative_pooled_prompt_embeds=a.negative_pooled_prompt_embeds
        )
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompt=prompts, **common, **pooled_kwargs)
        # The stock pipeline's default micro-conditioning: original size = target size = the image size, no crop
        size = self.image_size
        te2 = getattr(self.pipe, "text_encoder_2", None)
        projection_dim = int(pooled.shape[-1]) if te2 is None else te2.config.projection_dim
        time_ids = self.pipe._get_add_time_ids(
            size, (0, 0), size, dtype=pos.dtype, text_encoder_projection_dim=projection_dim
        )
        time_ids = time_ids.to(self.device).repeat(pos.shape[0], 1)
        added = {"text_embeds": pooled.to(self.device), "time_ids": time_ids}
        if not guided:
            return Conditioning(pos, None, guidance_scale, added, guidance_rescale=a.guidance_rescale)
        negative_added = {"text_embeds": neg_pooled.to(self.device), "time_ids": time_ids}
        return Conditioning(pos, neg, guidance_scale, added, negative_added, a.guidance_rescale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """As the stock SDXL pipeline decodes: a float16 VAE that asks for it (force_upcast) decodes in float32."""
        vae = self.vae
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if not upcast:
            return super().decode(latents)
        self.cost.vae_decodes += latents.shape[0]
        if latents.requires_grad:
            if self._upcast_vae is None:  # one float32 copy per run, never the user's VAE cast in place
                self._upcast_vae = copy.deepcopy(vae).to(torch.float32).requires_grad_(False)
            return decode_latents(vae, latents, upcast_vae=self._upcast_vae, upcast=True)
        return decode_latents(vae, latents, upcast=True)


class SD3Denoiser(Denoiser):
    """SD3 / SD3.5: an MMDiT (`SD3Transformer2DModel`) predicting the flow-matching velocity noise - x0; CLIP-L,
    CLIP-G and T5 (zeros when `text_encoder_3=None`), pooled CLIP projections."""

    model_attribute: ClassVar[str] = "transformer"
    prediction_type = "flow"
    needs_pooled_embeds: ClassVar[bool] = True
    call_options: ClassVar[dict[str, Any]] = {"max_sequence_length": 256}
    max_sequence_limit: ClassVar[int | None] = 512

    @classmethod
    def handles(cls, pipe) -> bool:
        return isinstance(unwrap(getattr(pipe, "transformer", None)), SD3Transformer2DModel)

    def check_pipeline(self, pipe) -> None:
        _check_flow_scheduler(pipe, "an SD3 transformer")

    @property
    def patch(self) -> int:
        return int(self.core.config.patch_size)

    @property
    def text_dim(self) -> int:
        return int(self.core.config.joint_attention_dim)

    def schedule(self, scheduler, num_inference_steps, timesteps, sigmas):
        """As `StableDiffusion3Pipeline`: a dynamically shifting scheduler gets `mu` from the image's tokens."""
        if not scheduler.config.get("use_dynamic_shifting", None):
            return timesteps, sigmas, {}
        h, w = self.latent_size
        return timesteps, sigmas, {"mu": flow_shift(scheduler, (h // self.patch) * (w // self.patch), 1.16)}

    def _encode(self, prompts, guidance_scale: float, negative_prompt, a: SimpleNamespace) -> Conditioning:
        guided = guidance_scale > 1.0
        common = self._common(guided, negative_prompt, a)
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            **common,
            pooled_prompt_embeds=a.pooled_prompt_embeds,
            negative_pooled_prompt_embeds=a.negative_pooled_prompt_embeds,
            max_sequence_length=self.options["max_sequence_length"],
        )
        added = {"pooled_projections": pooled}
        if not guided:
            return Conditioning(pos, None, guidance_scale, added, guidance_rescale=a.guidance_rescale)
        return Conditioning(pos, neg, guidance_scale, added, {"pooled_projections": neg_pooled}, a.guidance_rescale)

    def _call(self, x, t, embeds, added):
        timestep = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        kwargs = {"joint_attention_kwargs": self.model_kwargs} if self.model_kwargs else {}
        return self.model(
            hidden_states=x, timestep=timestep, encoder_hidden_states=embeds, return_dict=False, **added, **kwargs
        )[0]

    @contextmanager
    def compact_repeated_text(self, cond: Conditioning) -> Iterator[Conditioning]:
        """A trailing run of identical text rows (the zero T5 block of `text_encoder_3=None`: 256 rows) kept as
        one row that the joint attentions weigh as the run (`RepeatedLastToken`): 5x cheaper a call on the
        Shapes transformer. Rows that differ (a real T5) leave `cond` as it is."""
        embeds, _ = cond.model_inputs()
        same = (embeds == embeds[:, -1:]).all(-1).all(0)
        repeats = int(same.flip(0).long().cumprod(0).sum())
        if repeats < 2 or self.model_kwargs:
            yield cond
            return
        keep = embeds.shape[1] - repeats + 1
        original = repeat_last_text_token(self.core, repeats)
        try:
            yield replace(
                cond,
                prompt_embeds=cond.prompt_embeds[:, :keep],
                negative_embeds=None if cond.negative_embeds is None else cond.negative_embeds[:, :keep],
            )
        finally:
            self.core.set_attn_processor(original)

    def storing_processors(self, original, store, grid, text_tokens):
        """The joint attention's image-to-text block (`attn`; SD3.5's extra image-only `attn2` is left alone);
        text positions: CLIP's tokens first, then T5's."""
        return {n: StoreJointAttention(store, grid) for n in original if n.endswith(".attn.processor")}


def _check_flow_scheduler(pipe, what: str) -> None:
    scheduler = pipe.scheduler
    if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise ValueError(f"{what} needs a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
    if scheduler.config.stochastic_sampling:
        raise ValueError("FlowMatchEulerDiscreteScheduler with stochastic_sampling is not supported")


class FluxDenoiser(Denoiser):
    """Flux (`FluxTransformer2DModel`): double- and single-stream blocks over packed 2x2 latent patches with their
    image ids, T5 sequence + CLIP pooled conditioning, the guidance embedding of guidance-distilled models
    (FLUX.1-dev; `guidance_scale` feeds it, as in the stock pipeline) and none for FLUX.1-schnell, true
    classifier-free guidance only with `true_cfg_scale` > 1 and a negative prompt, and a flow-matching schedule
    shifted by `mu` from the image size. Latents stay spatial here; packing happens at each model call."""

    model_attribute: ClassVar[str] = "transformer"
    prediction_type = "flow"
    needs_pooled_embeds: ClassVar[bool] = True
    call_options: ClassVar[dict[str, Any]] = {"max_sequence_length": 512, "true_cfg_scale": 1.0}
    max_sequence_limit: ClassVar[int | None] = 512

    @classmethod
    def handles(cls, pipe) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(unwrap(getattr(pipe, "transformer", None)), FluxTransformer2DModel)

    def check_pipeline(self, pipe) -> None:
        _check_flow_scheduler(pipe, "a Flux transformer")
        channels, vae = int(self.core.config.in_channels), pipe.vae.config.latent_channels
        if channels != 4 * vae:  # FluxFill / FluxControl read the image or a control signal beside the latents
            raise ValueError(
                f"{type(pipe).__name__}'s transformer reads {channels} channels, not 4 x the VAE's {vae}: only "
                "text-to-image Flux pipelines (FluxPipeline) are supported"
            )

    @property
    def patch(self) -> int:
        return 2

    @property
    def default_latent_side(self) -> int:
        return int(self.pipe.default_sample_size)  # the stock default: 128 latent cells (1024 px)

    @property
    def latent_channels(self) -> int:
        return int(self.core.config.in_channels) // 4

    @property
    def text_dim(self) -> int:
        return int(self.core.config.joint_attention_dim)

    @property
    def attention_tokenizer(self):
        return self.pipe.tokenizer_2  # the transformer's text tokens are T5's; CLIP gives only the pooled vector

    def schedule(self, scheduler, num_inference_steps, timesteps, sigmas):
        """As `FluxPipeline`: sigmas linspace(1, 1/steps) (unless given, or the scheduler uses flow sigmas), `mu`
        from the packed image sequence length."""
        import numpy as np

        if timesteps is not None:
            raise ValueError("FluxPipeline takes sigmas=, not timesteps=")
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        h, w = self.latent_size
        return None, sigmas, {"mu": flow_shift(scheduler, (h // 2) * (w // 2), 1.15)}

    def _encode(self, prompts, guidance_scale: float, negative_prompt, a: SimpleNamespace) -> Conditioning:
        if a.clip_skip is not None:
            raise TypeError("FluxPipeline takes no 'clip_skip'")
        true_cfg = float(self.options["true_cfg_scale"])
        guided = true_cfg > 1 and (
            negative_prompt is not None
            or (a.negative_prompt_embeds is not None and a.negative_pooled_prompt_embeds is not None)
        )
        common = dict(
            device=self.device,
            num_images_per_prompt=a.num_images_per_prompt,
            max_sequence_length=self.options["max_sequence_length"],
            lora_scale=self.model_kwargs.get("scale"),
        )
        pos, pooled = self._flux_encode(prompts, a.prompt_embeds, a.pooled_prompt_embeds, common)
        added = {"pooled_projections": pooled, **self._guidance(guidance_scale, pos.shape[0])}
        if not guided:
            return Conditioning(pos, None, true_cfg, added, guidance_rescale=a.guidance_rescale)
        if isinstance(negative_prompt, str):  # one negative for every prompt, as for the other families
            negative_prompt = [negative_prompt] * (len(prompts) if prompts is not None else len(a.prompt_embeds))
        if isinstance(negative_prompt, list) and prompts is not None and len(negative_prompt) != len(prompts):
            raise ValueError(f"got {len(negative_prompt)} negative prompts for {len(prompts)} prompts")
        neg, neg_pooled = self._flux_encode(
            negative_prompt, a.negative_prompt_embeds, a.negative_pooled_prompt_embeds, common
        )
        negative_added = {"pooled_projections": neg_pooled, **self._guidance(guidance_scale, neg.shape[0])}
        return Conditioning(pos, neg, true_cfg, added, negative_added, a.guidance_rescale)

    def _flux_encode(self, prompts, embeds, pooled, common: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`FluxPipeline.encode_prompt`; given embeddings are repeated per image as the other families do (the
        stock Flux pipeline repeats only the ones it encodes)."""
        pos, pooled_out, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled, **common
        )
        n = common["num_images_per_prompt"]
        if embeds is not None and n > 1:
            pos, pooled_out = pos.repeat_interleave(n, 0), pooled_out.repeat_interleave(n, 0)
        return pos, pooled_out

    def _guidance(self, guidance_scale: float, rows: int) -> dict:
        """The guidance embedding's input, one value per row (the stock pipeline's float32 `guidance`)."""
        if not self.core.config.guidance_embeds:
            return {}
        return {"guidance": torch.full((rows,), float(guidance_scale), device=self.device, dtype=torch.float32)}

    def _guided(self, latents, t, cond: Conditioning):
        """True classifier-free guidance as `FluxPipeline` does it: the prompt call, then the negative one."""
        text = self._call(latents, t, cond.prompt_embeds, cond.added)
        if not cond.guided:
            return text, None, latents.shape[0]
        uncond = self._call(latents, t, cond.negative_embeds, cond.negative_added)
        return uncond + cond.guidance_scale * (text - uncond), text, 2 * latents.shape[0]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) -> (batch, H/2 * W/2, 4C): `FluxPipeline._pack_latents`."""
        b, c, h, w = x.shape
        return self.pipe._pack_latents(x, b, c, h, w)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.latent_size
        factor = int(self.pipe.vae_scale_factor)
        return self.pipe._unpack_latents(x, h * factor, w * factor, factor)

    def _call(self, x, t, embeds, added):
        h, w = self.latent_size
        img_ids = self.pipe._prepare_latent_image_ids(x.shape[0], h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=embeds.dtype)
        timestep = torch.as_tensor(t, device=x.device).expand(x.shape[0]).to(x.dtype)
        kwargs = {"joint_attention_kwargs": self.model_kwargs} if self.model_kwargs else {}
        out = self.model(
            hidden_states=self.pack(x),
            timestep=timestep / 1000,
            guidance=(added or {}).get("guidance"),
            pooled_projections=added["pooled_projections"],
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
            **kwargs,
        )[0]
        return self.unpack(out)

    def storing_processors(self, original, store, grid, text_tokens):
        """Every attention of the double-stream (joint) and single-stream blocks: image queries over text keys."""
        return {n: StoreFluxAttention(store, grid, text_tokens, p) for n, p in original.items()}


class StoreFluxAttention:
    """Flux's attention processor, unchanged, plus the image queries' attention over the text keys (after the
    q/k norms and the rotary embedding), renormalised over the text keys and averaged over heads: (batch, cells,
    text tokens). Double-stream blocks get text and image apart; single-stream blocks one sequence, text first."""

    def __init__(self, store: list[torch.Tensor], size, text_tokens: int, inner):
        self.store, self.cells, self.text, self.inner = store, _cells(size), text_tokens, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, attn.head_dim)))
        if encoder_hidden_states is not None:
            text_key = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, attn.head_dim)))
            query = torch.cat([torch.zeros_like(text_key), query], dim=1)  # rotary positions: text first
            key = torch.cat([text_key, key], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        image_query, text_key = query[:, self.text :], key[:, : self.text]
        if image_query.shape[1] == self.cells:
            logits = torch.einsum("bqhd,bkhd->bhqk", image_query, text_key) * attn.head_dim**-0.5
            self.store.append(logits.softmax(-1).mean(1))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


# PixArt's resolution bins by transformer sample size (the stock pipelines' ASPECT_RATIO_*_BIN)
def _pixart_bins(pipe) -> dict:
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    bins = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 32: alpha.ASPECT_RATIO_256_BIN}
    if type(pipe).__name__ == "PixArtSigmaPipeline":
        bins[256] = sigma.ASPECT_RATIO_2048_BIN
    return bins


class PixArtDenoiser(Denoiser):
    """PixArt-alpha / Sigma (`PixArtTransformer2DModel`): T5 conditioning with its attention mask, resolution and
    aspect-ratio conditioning where the model takes it (sample size 128), the learned-sigma half of the output
    dropped, cross-attention (`attn2`) maps over T5's tokens, and the stock resolution binning (generate at the
    closest trained aspect ratio, then resize and crop back)."""

    model_attribute: ClassVar[str] = "transformer"
    call_options: ClassVar[dict[str, Any]] = {
        "max_sequence_length": 120,
        "clean_caption": True,
        "use_resolution_binning": True,
        "prompt_attention_mask": None,
        "negative_prompt_attention_mask": None,
    }

    @classmethod
    def handles(cls, pipe) -> bool:
        from diffusers import PixArtTransformer2DModel

        return isinstance(unwrap(getattr(pipe, "transformer", None)), PixArtTransformer2DModel)

    def check_pipeline(self, pipe) -> None:
        if not hasattr(pipe.scheduler, "alphas_cumprod"):
            raise ValueError(f"scheduler {type(pipe.scheduler).__name__} is not supported: it has no alphas_cumprod")
        self.prediction_type = pipe.scheduler.config.prediction_type

    @property
    def patch(self) -> int:
        return int(self.core.config.patch_size)

    @property
    def text_dim(self) -> int:
        return int(self.core.config.caption_channels)

    def schedule(self, scheduler, num_inference_steps, timesteps, sigmas):
        if num_inference_steps == 1:  # the stock pipeline then returns the scheduler's x0 instead of its step
            raise ValueError("one-step PixArt sampling (DMD) is not supported; use 2 or more steps")
        return timesteps, sigmas, {}

    def attention_text(self, text: str) -> str:
        return self.pipe._text_preprocessing(text, clean_caption=self.options["clean_caption"])[0]

    def check_embeds(self, prompt_embeds, negative_prompt_embeds) -> None:
        for name, embeds in (("prompt", prompt_embeds), ("negative_prompt", negative_prompt_embeds)):
            if embeds is not None and self.options[f"{name}_attention_mask"] is None:
                raise ValueError(f"{name}_embeds need {name}_attention_mask beside them (as the stock check_inputs)")

    def _latent_size(self, height, width):
        factor = int(self.pipe.vae_scale_factor)
        side = self.default_latent_side * factor
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        height, width = side if height is None else height, side if width is None else width
        self.output_size = None
        if self.options["use_resolution_binning"]:
            bins = _pixart_bins(self.pipe).get(int(self.core.config.sample_size))
            if bins is None:
                raise ValueError(
                    f"use_resolution_binning needs a transformer of sample size {sorted(_pixart_bins(self.pipe))} "
                    f"(this one has {self.core.config.sample_size}): pass use_resolution_binning=False"
                )
            self.output_size = (height, width)
            height, width = self.pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
        return super()._latent_size(height, width)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.output_size if self.output_size is not None else super().image_size

    def _encode(self, prompts, guidance_scale: float, negative_prompt, a: SimpleNamespace) -> Conditioning:
        guided = guidance_scale > 1.0
        pos, pos_mask, neg, neg_mask = self.pipe.encode_prompt(
            prompts,
            guided,
            negative_prompt="" if negative_prompt is None else negative_prompt,
            num_images_per_prompt=a.num_images_per_prompt,
            device=self.device,
            prompt_embeds=a.prompt_embeds,
            negative_prompt_embeds=a.negative_prompt_embeds,
            prompt_attention_mask=self.options["prompt_attention_mask"],
            negative_prompt_attention_mask=self.options["negative_prompt_attention_mask"],
            clean_caption=self.options["clean_caption"],
            max_sequence_length=self.options["max_sequence_length"],
        )
        added = {"encoder_attention_mask": pos_mask, **self._micro(pos)}
        if not guided:
            return Conditioning(pos, None, guidance_scale, added)
        return Conditioning(pos, neg, guidance_scale, added, {"encoder_attention_mask": neg_mask, **self._micro(neg)})

    def _micro(self, embeds: torch.Tensor) -> dict:
        """Resolution and aspect-ratio conditioning, one row per image, where the model takes it (alpha at sample
        size 128; `use_additional_conditions`)."""
        if not getattr(self.core, "use_additional_conditions", int(self.core.config.sample_size) == 128):
            return {}
        factor = int(self.pipe.vae_scale_factor)
        height, width = self.latent_size[0] * factor, self.latent_size[1] * factor
        rows = embeds.shape[0]
        resolution = torch.tensor([height, width]).repeat(rows, 1).to(dtype=embeds.dtype, device=self.device)
        aspect = torch.tensor([float(height / width)]).repeat(rows, 1).to(dtype=embeds.dtype, device=self.device)
        return {"resolution": resolution, "aspect_ratio": aspect}

    def _call(self, x, t, embeds, added):
        timestep = torch.as_tensor(t, device=x.device)
        timestep = (timestep[None] if timestep.ndim == 0 else timestep).expand(x.shape[0])
        micro = {"resolution": added.get("resolution"), "aspect_ratio": added.get("aspect_ratio")}
        kwargs = {"cross_attention_kwargs": self.model_kwargs} if self.model_kwargs else {}
        out = self.model(
            x,
            encoder_hidden_states=embeds,
            encoder_attention_mask=added["encoder_attention_mask"],
            timestep=timestep,
            added_cond_kwargs=micro,
            return_dict=False,
            **kwargs,
        )[0]
        if self.core.config.out_channels // 2 == self.latent_channels:  # learned sigma: keep the prediction half
            out = out.chunk(2, dim=1)[0]
        return out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """As the stock pipeline: decode, resize and crop back to the requested size when binned, then to [0, 1]."""
        if self.output_size is None:
            return super().decode(latents)
        self.cost.vae_decodes += latents.shape[0]
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae_scaling_factor).sample
        images = self.pipe.image_processor.resize_and_crop_tensor(images, self.output_size[1], self.output_size[0])
        return (images / 2 + 0.5).clamp(0, 1).to(latents.dtype)


ADAPTERS: tuple[type[Denoiser], ...] = (SDXLDenoiser, UNetDenoiser, SD3Denoiser, FluxDenoiser, PixArtDenoiser)


def adapter_class(pipe) -> type[Denoiser]:
    """The adapter of the pipeline's family, from its component types."""
    for cls in ADAPTERS:
        if cls.handles(pipe):
            return cls
    raise ValueError(
        f"{type(pipe).__name__} has no UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel or "
        "PixArtTransformer2DModel; latentalign supports Stable Diffusion 1.x/2.x/XL/3, Flux and PixArt pipelines"
    )
