"""The one run every method shares: a stock pipeline's call, resolved, then noise -> steps -> selection.

`resolve_run` turns `generate`'s arguments (the pipeline's own `__call__` arguments that apply, plus latentalign's)
into a `Run` and checks every one of them before any denoiser call. `execute` then draws the initial noise as the
stock pipeline does, lets the composition's stages act at their places, and denoises on the shared loop.

Rows: with `n` candidates per image (1 without a selection stage), row r is candidate r % n of image r // n.
Candidate 0 of every image draws the noise plain generation would (from the call's generator, or `latents`), so
Best-of-N with N=1 is plain generation; candidate i > 0 of image b draws from its own generator seeded
`base_b + i * SEED_STRIDE`, where base_b is image b's seed where it has one (`seed=[...]`, or a single `seed=s` for
one image), else drawn from a copy of its generator (`candidate_bases`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapters import Conditioning, Denoiser, clone_generator, row_schedulers
from .core import (
    OUTPUT_TYPES,
    GenerationResult,
    as_output,
    call_arguments,
    check_finite,
    check_guidance,
    check_positive_int,
    check_prompts,
    check_seeds,
    check_steps,
    default_guidance,
    default_steps,
)
from .cost import Cost
from .methods.base import SEED_STRIDE, Composition, PruneSchedule
from .sampling import sample

CALLBACK_TENSORS = ("latents",)  # what latentalign hands to callback_on_step_end


@dataclass
class Run:
    """One resolved call: what every stage reads. Per image (prompts x num_images_per_prompt): its prompt, its
    conditioning row, its generator and its base seed; `n` candidates per image."""

    pipe: Any
    den: Denoiser
    cost: Cost
    prompts: list[str | None]
    cond: Conditioning | None  # set by `encode`, after the stages have checked the run
    encoding: dict  # the arguments of `Denoiser.encode`
    generators: list[torch.Generator]
    seeds: list[int | None]
    steps: int
    guidance_scale: float
    template: Any  # a fresh scheduler with the run's timesteps set
    eta: float = 0.0
    latents: torch.Tensor | None = None
    n: int = 1
    max_batch: int | None = None
    output_type: str = "pil"
    callback: Callable[[dict], None] | None = None
    callback_on_step_end: Any = None
    settings: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)

    @property
    def images(self) -> int:
        return len(self.prompts)

    def encode(self) -> None:
        """Encode the prompts with the pipeline's text encoders (the first work of a run); timed in `cost`."""
        timer = Cost()
        with torch.no_grad(), timer.timed():
            self.cond = self.den.encode(**self.encoding)
        self.cost.seconds += timer.seconds

    def image_of(self, row: int) -> int:
        return row // self.n

    def prompt_of(self, row: int) -> str | None:
        return self.prompts[row // self.n]

    def row_cond(self, rows: list[int]) -> Conditioning:
        return self.cond.select([self.image_of(r) for r in rows])

    def schedulers(self, generators: list[torch.Generator]):
        """A fresh scheduler set for rows drawing their step noise from `generators`."""
        return row_schedulers(self.template, generators, self.eta)


def _check_generators(generator, images: int) -> list[torch.Generator]:
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError("generator must be a torch.Generator or a list of them")
    if isinstance(generator, (list, tuple)):
        if len(gens) != images:
            raise ValueError(f"got {len(gens)} generators for {images} images (prompts x num_images_per_prompt)")
        return list(gens)
    return [generator] * images


def _is_tensor(name: str, value, ndim: int | None = None) -> None:
    if value is not None and not (isinstance(value, torch.Tensor) and (ndim is None or value.ndim == ndim)):
        got = f"{value.ndim}-d tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a {ndim}-d torch.Tensor, got a {got}")


def resolve_run(
    pipe,
    composition: Composition,
    prompt,
    *,
    seed=None,
    generator=None,
    latents=None,
    height=None,
    width=None,
    num_inference_steps=None,
    timesteps=None,
    sigmas=None,
    guidance_scale=None,
    guidance_rescale=0.0,
    eta=0.0,
    negative_prompt=None,
    num_images_per_prompt=1,
    prompt_embeds=None,
    negative_prompt_embeds=None,
    pooled_prompt_embeds=None,
    negative_pooled_prompt_embeds=None,
    output_type="pil",
    clip_skip=None,
    cross_attention_kwargs=None,
    joint_attention_kwargs=None,
    callback=None,
    callback_on_step_end=None,
    callback_on_step_end_tensor_inputs=None,
    max_batch=None,
    max_sequence_length=None,
    true_cfg_scale=None,
    clean_caption=None,
    use_resolution_binning=None,
    prompt_attention_mask=None,
    negative_prompt_attention_mask=None,
    given: set[str] = frozenset(),
) -> Run:
    """Check every argument against the pipeline and the stages, then encode the prompts: no denoiser call."""
    accepted = call_arguments(pipe)
    stock = given - {"seed", "callback", "max_batch", "prompt"}
    for name in sorted(stock):
        if name not in accepted:
            raise TypeError(f"{type(pipe).__name__}'s __call__ takes no {name!r}, so generate does not either")
        for stage in composition.stages:
            if name in stage.refuses:
                raise TypeError(f"method {stage.name!r} cannot honour {name!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed= or generator=, not both")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    check_positive_int("num_images_per_prompt", num_images_per_prompt)
    for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        _is_tensor(name, value, 3)
    for name, value in (("pooled_prompt_embeds", pooled_prompt_embeds), ("latents", latents)):
        _is_tensor(name, value)
    if prompt is None:
        if prompt_embeds is None:
            raise ValueError("pass prompt= or prompt_embeds=")
        for stage in composition.stages:
            if stage.needs_prompt_text:
                raise ValueError(f"method {stage.name!r} reads the prompt's text: pass prompt=, not only prompt_embeds")
        prompts: list[str | None] = [None] * prompt_embeds.shape[0]
    else:
        if prompt_embeds is not None:
            raise ValueError("pass prompt= or prompt_embeds=, not both")
        prompts = check_prompts(pipe, prompt)
    images = len(prompts) * num_images_per_prompt
    negatives = negative_prompt
    if isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) != len(prompts):
        raise ValueError(f"got {len(negative_prompt)} negative prompts for {len(prompts)} prompts")
    if negative_prompt is not None and not all(
        isinstance(x, str) for x in ([negatives] if isinstance(negatives, str) else negatives)
    ):
        raise ValueError("negative_prompt must be a string or a list of strings")

    run_defaults: dict[str, Any] = {}
    for stage in composition.stages:  # the first stage (in place order) that recommends a setting decides it
        for k, v in stage.run_settings(pipe).items():
            run_defaults.setdefault(k, v)
    if timesteps is not None or sigmas is not None:
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass timesteps= or sigmas=, not both")
        custom = list(timesteps if timesteps is not None else sigmas)
        if not custom or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in custom):
            raise ValueError("timesteps / sigmas must be a non-empty list of finite numbers")
        if num_inference_steps is not None and num_inference_steps != len(custom):
            raise ValueError(f"num_inference_steps={num_inference_steps} but {len(custom)} custom timesteps given")
        steps = len(custom)
    else:
        steps = num_inference_steps if num_inference_steps is not None else run_defaults.get("num_inference_steps")
        steps = check_steps(default_steps(pipe) if steps is None else steps)
    scale = guidance_scale if guidance_scale is not None else run_defaults.get("guidance_scale")
    scale = check_guidance(default_guidance(pipe) if scale is None else scale)
    check_finite("eta", eta, minimum=0)
    check_finite("guidance_rescale", guidance_rescale, minimum=0)
    if clip_skip is not None:
        check_positive_int("clip_skip", clip_skip, minimum=0)
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable")
    if callback_on_step_end is not None:
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        elif not callable(callback_on_step_end):
            raise ValueError("callback_on_step_end must be callable")
        inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        refused = [k for k in inputs if k not in CALLBACK_TENSORS]
        if refused:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: latentalign passes {list(CALLBACK_TENSORS)}, not {refused}"
            )
    if max_batch is not None:
        check_positive_int("max_batch", max_batch)

    if generator is not None:
        generators = _check_generators(generator, images)
        seeds: list[int | None] = [None] * images  # the generators' states, not seeds, decide the noise
    else:
        if seed is None:
            seed = 0
        if isinstance(seed, (list, tuple)):
            seeds = check_seeds(list(seed))
            if len(seeds) != images:
                raise ValueError(f"got {len(seeds)} seeds for {images} images (prompts x num_images_per_prompt)")
            generators = [torch.Generator().manual_seed(s) for s in seeds]
        else:
            (seed,) = check_seeds([seed])
            shared_generator = torch.Generator().manual_seed(seed)  # one generator for the batch, as diffusers
            generators = [shared_generator] * images
            seeds = [seed] + [None] * (images - 1)  # image b > 0 continues the stream: no seed of its own

    model_kwargs = cross_attention_kwargs if cross_attention_kwargs is not None else joint_attention_kwargs
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ValueError("cross_attention_kwargs / joint_attention_kwargs must be a dict")
    family = {  # the family's own call arguments (checked against the pipeline's __call__ above)
        "max_sequence_length": max_sequence_length,
        "true_cfg_scale": true_cfg_scale,
        "clean_caption": clean_caption,
        "use_resolution_binning": use_resolution_binning,
        "prompt_attention_mask": prompt_attention_mask,
        "negative_prompt_attention_mask": negative_prompt_attention_mask,
    }
    family = {k: v for k, v in family.items() if v is not None}
    if max_sequence_length is not None:
        check_positive_int("max_sequence_length", max_sequence_length)
    if true_cfg_scale is not None:
        check_finite("true_cfg_scale", true_cfg_scale, minimum=0)
    for name in ("prompt_attention_mask", "negative_prompt_attention_mask"):
        _is_tensor(name, family.get(name), 2)
    den = Denoiser(pipe, Cost(), height=height, width=width, model_kwargs=model_kwargs, options=family)
    if latents is not None and tuple(latents.shape) != (images, *den.latent_shape):
        raise ValueError(f"latents must have shape {(images, *den.latent_shape)}, got {tuple(latents.shape)}")
    if prompt_embeds is not None and prompt_embeds.shape[-1] != den.text_dim:
        raise ValueError(f"prompt_embeds must be {den.text_dim} wide for this pipeline, got {prompt_embeds.shape[-1]}")
    den.check_embeds(prompt_embeds, negative_prompt_embeds)
    if den.needs_pooled_embeds:  # as the stock SDXL / SD3 / Flux check_inputs ask
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError(f"{type(pipe).__name__}: prompt_embeds need pooled_prompt_embeds beside them")
        if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
            raise ValueError(f"{type(pipe).__name__}: negative_prompt_embeds need negative_pooled_prompt_embeds")
    template = den.new_scheduler(steps, timesteps=timesteps, sigmas=sigmas)
    settings = {
        "num_inference_steps": steps,
        "guidance_scale": scale,
        "height": den.image_size[0],
        "width": den.image_size[1],
        "num_images_per_prompt": num_images_per_prompt,
        "output_type": output_type,
    }
    if "eta" in accepted:
        settings["eta"] = eta
    if "guidance_rescale" in accepted:
        settings["guidance_rescale"] = guidance_rescale
    given_too = {"timesteps": timesteps, "sigmas": sigmas, "clip_skip": clip_skip, "negative_prompt": negative_prompt}
    given_too.update({k: v for k, v in family.items() if not isinstance(v, torch.Tensor)})
    settings.update({k: list(v) if k in ("timesteps", "sigmas") else v for k, v in given_too.items() if v is not None})
    encoding = dict(
        prompts=None if prompt is None else list(prompts),
        guidance_scale=scale,
        negative_prompt=negatives,
        num_images_per_prompt=num_images_per_prompt,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds,
        negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        clip_skip=clip_skip,
        guidance_rescale=float(guidance_rescale),
    )
    per_image = [p for p in prompts for _ in range(num_images_per_prompt)]
    return Run(
        pipe=pipe,
        den=den,
        cost=den.cost,
        prompts=per_image,
        cond=None,
        encoding=encoding,
        generators=generators,
        seeds=seeds,
        steps=steps,
        guidance_scale=scale,
        template=template,
        eta=float(eta),
        latents=latents,
        max_batch=max_batch,
        output_type=output_type,
        callback=callback,
        callback_on_step_end=callback_on_step_end,
        settings=settings,
    )


def draw_rows(run: Run) -> tuple[torch.Tensor, list[torch.Generator], list[list[int | None]]]:
    """The initial (standard Gaussian) noise of every row, each row's generator, and each image's candidate seeds."""
    den, n, images = run.den, run.n, run.images
    if run.latents is not None:
        first = run.latents.to(den.device, den.dtype)
    elif all(g is run.generators[0] for g in run.generators):
        first = den.draw(run.generators[0], images)  # one generator draws the batch, as randn_tensor does
    else:
        first = den.draw(run.generators, images)
    bases = candidate_bases(run) if n > 1 else run.seeds
    rows, gens, cand_seeds = [], [], []
    for b in range(images):
        rows.append(first[b : b + 1])
        gens.append(run.generators[b])
        seeds_b = [run.seeds[b]]
        for i in range(1, n):
            s = bases[b] + i * SEED_STRIDE
            g = torch.Generator(device=run.generators[b].device).manual_seed(s)  # the image generator's device
            rows.append(den.draw([g], 1))
            gens.append(g)
            seeds_b.append(s)
        cand_seeds.append(seeds_b)
    return torch.cat(rows), gens, cand_seeds


def candidate_bases(run: Run) -> list[int]:
    """Each image's base seed for its candidates i > 0: the image's seed where it has one; else drawn from a copy
    of its generator in its current state (so a generator reused across calls gives new candidates each time,
    and the generator itself is not advanced: candidate 0 stays the plain image)."""
    high = 2**32 - run.n * SEED_STRIDE
    bases, drawn = [], {}
    for seed, g in zip(run.seeds, run.generators, strict=True):
        if seed is not None:
            bases.append(seed)
            continue
        if id(g) not in drawn:  # a generator shared by several images draws all their bases at once
            users = sum(other is g for other in run.generators)
            drawn[id(g)] = iter(
                torch.randint(0, high, (users,), generator=clone_generator(g), device=g.device).tolist()
            )
        bases.append(next(drawn[id(g)]))
    return bases


def _advance(run: Run, latents, rows, schedulers, start, stop, hook):
    """Steps [start, stop) for the rows, `max_batch` at a time; returns (latents, last x0, schedulers).

    The loop runs step by step over the chunks (not chunk by chunk over the steps), so a generator shared by rows
    of several chunks gives its step noise in the same order whatever `max_batch` is, and `callback_on_step_end`
    is called once per step, with every row's latents, as the stock loop calls it."""
    den, total = run.den, len(rows)
    size = run.max_batch or total
    chunks = [list(range(i, min(i + size, total))) for i in range(0, total, size)]
    parts = [schedulers] if len(chunks) == 1 else [schedulers.select(index) for index in chunks]
    conds = [run.row_cond([rows[j] for j in index]) for index in chunks]
    stop = len(schedulers.timesteps) if stop is None else stop
    pieces = [latents[index] for index in chunks]
    x0s: list[torch.Tensor] = [p for p in pieces]
    for step in range(start, stop):
        for c, index in enumerate(chunks):
            sub_rows = [rows[j] for j in index]
            seen: dict[str, torch.Tensor] = {}

            def callback(info, seen=seen):
                seen.update(info)
                if run.callback is not None:
                    run.callback(info)

            prepare = None
            if hook is not None:

                def prepare(info, sub_rows=sub_rows, part=parts[c]):
                    return hook({**info, "rows": sub_rows, "schedulers": part})

            pieces[c] = sample(
                den, pieces[c], conds[c], parts[c], start=step, stop=step + 1, callback=callback, prepare=prepare
            )
            x0s[c] = seen["x0"]
        if run.callback_on_step_end is not None:
            merged = torch.cat(pieces)
            t = schedulers.timesteps[step]
            out = run.callback_on_step_end(run.pipe, step, t, {"latents": merged}) or {}
            merged = out.get("latents", merged)
            pieces = list(merged.split([len(index) for index in chunks]))
    return torch.cat(pieces), torch.cat(x0s), type(schedulers).concat(parts)


def modules_in(value) -> list[torch.nn.Module]:
    """The modules a stage holds: its scorer and projector fields, and those inside its rewards."""
    if isinstance(value, torch.nn.Module):
        return [value]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in modules_in(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [m for name in value.__dataclass_fields__ for m in modules_in(getattr(value, name))]
    return []


@contextmanager
def pipeline_left_alone(pipe, extra: list[torch.nn.Module]):
    """Whatever a method does, the pipeline's (and the stages' scorers') requires_grad flags, train/eval modes,
    attention processors and scheduler config are what they were afterwards."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)] + list(extra)
    grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    models = [getattr(m, "_orig_mod", m) for m in (getattr(pipe, "unet", None), getattr(pipe, "transformer", None))]
    processors = [(m, m.attn_processors) for m in models if m is not None and hasattr(m, "attn_processors")]
    scheduler_config = dict(pipe.scheduler.config)
    try:
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for sub, mode in modes:
            sub.training = mode
        for m, original in processors:
            current = m.attn_processors
            if any(current[k] is not v for k, v in original.items()):
                m.set_attn_processor(original)
        if dict(pipe.scheduler.config) != scheduler_config:
            pipe.scheduler.register_to_config(**scheduler_config)


def execute(run: Run, composition: Composition) -> GenerationResult:
    """Noise -> steps -> selection on the shared loop; the chosen row of every image decoded once, as a batch."""
    noise_stage, step_stage, selection = (composition.at(p) for p in ("noise", "steps", "selection"))
    den, cost = run.den, run.cost
    run.n = selection.candidates if selection is not None else 1
    if selection is not None and run.max_batch is None:
        run.max_batch = selection.max_batch
    schedule = selection.schedule(run.steps) if selection is not None else PruneSchedule()  # checked in prepare
    if selection is not None:
        run.settings.update(n=run.n, prune_steps=list(schedule.steps), keep=list(schedule.keep))
    tracked = [m for s in composition.stages for m in modules_in(s)]
    # stages that change the pipeline's modules while they run get them restored; the others never touch them
    restore = any(s.changes_the_pipeline for s in composition.stages)
    with cost.timed(), pipeline_left_alone(run.pipe, tracked) if restore else nullcontext():
        noise, generators, cand_seeds = draw_rows(run)
        rows = list(range(noise.shape[0]))
        finished = None
        if noise_stage is not None:
            noise, finished = noise_stage.initial_noise(run, noise, rows, generators)
        schedulers = run.schedulers(generators)
        hook = step_stage.hook(run) if step_stage is not None else None
        reuse = finished is not None and hook is None and not schedule.steps and run.callback_on_step_end is None
        # ...and only where every row has its own generator: a shared one gives rows their step noise in turn, which
        # the optimisation's per-row sampling (each from a copy of the generator) cannot replay
        reuse = reuse and run.callback is None and len({id(g) for g in generators}) == len(generators)
        with torch.no_grad():
            latents = finished if reuse else noise * schedulers.init_noise_sigma
            scores: list[list[dict[str, float]]] = [[{} for _ in range(run.n)] for _ in range(run.images)]
            pruned: list[list[int | None]] = [[None] * run.n for _ in range(run.images)]
            alive = rows
            start = 0
            keep_candidates = bool(getattr(selection, "keep_candidates", False))
            candidates: list[list[torch.Tensor | None]] = [[None] * run.n for _ in range(run.images)]
            if not reuse:
                for stop, keep in zip(schedule.steps, schedule.keep, strict=True):
                    latents, x0, schedulers = _advance(run, latents, alive, schedulers, start, stop, hook)
                    t = schedulers.timesteps[stop]
                    view = {
                        "latents": latents,
                        "model_input": schedulers.scale_model_input(latents, t),
                        "x0": x0,
                        "t": t,
                    }
                    values = selection.score(run, alive, view, final=False).tolist()
                    kept = []
                    for b in range(run.images):
                        mine = [j for j, r in enumerate(alive) if run.image_of(r) == b]
                        for j in mine:  # None: the candidate had gone non-finite (never kept)
                            scores[b][alive[j] % run.n][f"step {stop}"] = (
                                values[j] if math.isfinite(values[j]) else None
                            )
                        order = sorted(mine, key=lambda j: -values[j])[:keep]  # stable: ties keep the lower index
                        kept += sorted(order)
                        for j in set(mine) - set(order):
                            pruned[b][alive[j] % run.n] = stop
                            if keep_candidates:  # what it would have become, as the model saw it then
                                candidates[b][alive[j] % run.n] = x0[j].clone()
                    alive = [alive[j] for j in kept]
                    latents, schedulers, start = latents[kept], schedulers.select(kept), stop
                latents, _, schedulers = _advance(run, latents, alive, schedulers, start, None, hook)
            chosen_rows = []
            contested = [j for j, r in enumerate(alive) if sum(run.image_of(q) == run.image_of(r) for q in alive) > 1]
            final_values = {}
            if contested:
                view = {
                    "latents": latents[contested],
                    "model_input": latents[contested],
                    "x0": latents[contested],
                    "t": 0,
                }
                values = selection.score(run, [alive[j] for j in contested], view, final=True).tolist()
                final_values = dict(zip(contested, values, strict=True))
                for j, v in final_values.items():
                    scores[run.image_of(alive[j])][alive[j] % run.n]["final"] = v if math.isfinite(v) else None
            for b in range(run.images):
                mine = [j for j, r in enumerate(alive) if run.image_of(r) == b]
                best = max(mine, key=lambda j: (final_values.get(j, 0.0), -j))  # the first of equal scores
                chosen_rows.append(best)
            if keep_candidates:
                for j, r in enumerate(alive):
                    candidates[run.image_of(r)][r % run.n] = latents[j].clone()
            final = latents[chosen_rows]
            _refuse_non_finite(run, final, chosen_rows, alive, "latents")
            if run.output_type == "latent":
                images = final
            else:
                decoded = den.decode(final)
                _refuse_non_finite(run, decoded, chosen_rows, alive, "images (the VAE overflowed)")
                images = as_output(decoded, run.output_type)
    outputs = dict(run.outputs)
    if selection is not None:
        outputs.update(
            scores=scores,
            pruned_at=pruned,
            chosen=[alive[j] % run.n for j in chosen_rows],
            candidate_seeds=cand_seeds,
        )
        if keep_candidates:
            outputs["candidate_latents"] = [torch.stack(c) for c in candidates]
    stages = [{"name": s.name, "place": s.place, "settings": s.record()} for s in composition.stages]
    settings = {**run.settings, "method": composition.label}
    return GenerationResult(images, final, run.prompts, list(run.seeds), cost, settings, stages, outputs)


class NonFiniteError(ValueError):
    """A run whose latents or images became NaN or infinite: refused rather than returned."""


def _refuse_non_finite(run: Run, values: torch.Tensor, chosen_rows: list[int], alive: list[int], what: str) -> None:
    """No NaN or infinity ever reaches a result: name the images whose chosen row went non-finite."""
    finite = torch.isfinite(values).flatten(1).all(1).tolist()
    bad = [run.image_of(alive[j]) for j, ok in zip(chosen_rows, finite, strict=True) if not ok]
    if bad:
        raise NonFiniteError(
            f"the run produced non-finite {what} for image(s) {bad} (settings {run.settings}): "
            "a guidance scale or step size too large for the model's precision?"
        )
