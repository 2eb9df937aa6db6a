"""Build, save and load pipelines: the embedded Shapes pipeline and any Stable Diffusion 1.x/2.x checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from .embedded import EMBEDDED_PIPELINES, SHAPES, SHAPES_FLOW, SHAPES_ONE_STEP, SHAPES_SCORERS, config, embedded_folder
from .tokenizer import build_clip_tokenizer, build_t5_tokenizer
from .world import words

SHAPES_WEIGHTS = EMBEDDED_PIPELINES[SHAPES]
SHAPES_ONE_STEP_WEIGHTS = EMBEDDED_PIPELINES[SHAPES_ONE_STEP]
SHAPES_FLOW_WEIGHTS = EMBEDDED_PIPELINES[SHAPES_FLOW]
__all__ = ["SHAPES_SCORERS", "config"]  # re-exported: they moved to the leaf module `embedded`
SHAPES_GUIDANCE = 1.5  # best overall accuracy on train-split prompts (benchmarks/guidance_sweep.py)
SHAPES_STEPS = 20  # DDIM steps the shipped Shapes pipeline is evaluated at
# noise optimisation's iterations: where the pixel and latent rewards' mean accuracy on train-split prompts peaks
# (fewest on ties; benchmarks/results/noise_optimization_train_3seeds/: 3 seeds x 72 prompts, iterations 0-10)
SHAPES_NOISE_OPTIMIZATION_ITERATIONS = 8
# the distilled one-step pipeline ("shapes-one-step") has its own reward: the Latent-CLIP distilled from pixel CLIP
# on its own samples and ReNO iterates; the same rule, with that reward beside pixel CLIP, gives 13 iterations
# (benchmarks/results/latent_distilled/reno_train2/; with the plain Latent-CLIP it gave 11)
SHAPES_ONE_STEP_NOISE_OPTIMIZATION_SCORER = "shapes-latent-distilled"
# trained through shapes-one-step (`latentalign train projector`): a re-distilled one-step pipeline needs it retrained
SHAPES_ONE_STEP_NOISE_PROJECTOR = "shapes-projector"
SHAPES_ONE_STEP_NOISE_OPTIMIZATION_ITERATIONS = 13
# attention refinement's step size: the best of 0.5, 1, 2, 5 on train prompts with the harness (all suites, 270
# images each: benchmarks/results/defaults_choice_train, 0.648 / 0.637 / 0.611 / 0.600, plain 0.637); the first
# sweep (two objects + relation, 0.5 to 80: benchmarks/results/attention_refinement_train{,_small}) had picked 1
SHAPES_ATTENTION_REFINEMENT_STEP_SIZE = 0.5
# IterRef's step and step size: `latentalign select-steps --record` on train prompts (benchmarks/gsn.sh: every even
# step of 20, step sizes 5 and 20, A&E / IoU / SynGen losses; the best, 0.562 against plain 0.500, is A&E at step 4
# with step size 5: benchmarks/results/gsn/select_attend-and-excite_step5)
SHAPES_ITERREF = {"steps": [4], "loss": "attend-and-excite", "step_size": 5.0}
# early exit at N = 8: the best train accuracy over the judge reading z_t (benchmarks/results/early_exit_choice_train)
# and reading the x0 prediction (.../early_exit_choice_x0_train), prune after 20/30/50% keeping 1/8, 1/4, 1/2; within
# 0.01 the fewer denoiser evaluations: the judge on x0 after half the steps keeping one candidate, 0.796 at 180
# evaluations (Best-of-8 0.796 at 320, the best z_t setting 0.793 at 208, plain 0.637). Then the judge beside pixel
# CLIP as the final pick among the kept (.../early_exit_choice_sum_train, the same prompts and seeds, keeping 1/4 or
# 1/2): the best over all three folders is after half the steps keeping half, 0.837 at 240 evaluations (Best-of-8
# with the sum 0.830 at 320; the judge choosing at that schedule 0.781): the default now. All three with the first
# shipped judge (benchmarks/results/archive/shapes-judge_run1); not re-chosen for the second
SHAPES_EARLY_EXIT = {"scorer": "shapes-judge-x0", "final_scorer": "shapes-judge-pixel", "at": 0.5, "keep_share": 0.5}
# Best-of-N's scorer: the latent judge beside pixel CLIP on the decode (`shapes-judge-pixel`), Best-of-8 on the
# judge's kept-aside TRAIN prompts more than 0.01 above the judge alone, so the costlier call wins (N decodes and
# pixel-CLIP calls more, about 2% of a Best-of-N's compute): for the shipped second judge, + 5 x pixel CLIP 0.822
# against 0.794 (benchmarks/results/judge_v2_with_pixel_train); for the first, + 50 x 0.785 against 0.762
# (results/judge_with_pixel_train; held out 0.819 either way, results/judge_with_pixel_heldout)
SHAPES_BEST_OF_N = {"scorer": "shapes-judge-pixel"}


def shapes_scheduler_config() -> dict:
    """SD 1.x's training noise schedule; trailing spacing so sampling starts at the last timestep."""
    return dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def build_shapes_components(seed: int = 0) -> dict:
    """Random-weight components of the Shapes pipeline, built from the JSON architectures and a local tokenizer."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(words(), model_max_length=config("shapes_text")["max_position_embeddings"])
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config("shapes_text"),
    )
    return {
        "vae": AutoencoderKL(**config("shapes_vae")),
        "unet": UNet2DConditionModel(**config("shapes_unet")),
        "text_encoder": CLIPTextModel(text_cfg),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(**shapes_scheduler_config()),
    }


def shapes_flow_scheduler_config(shift: float = 1.0) -> dict:
    """SD3's scheduler; `shift` > 1 spends more of the steps at high noise (SD3 ships 3.0 for 1024 px)."""
    return dict(num_train_timesteps=1000, shift=shift)


def zero_t5(tokenizer, width: int) -> T5EncoderModel:
    """A T5 encoder whose output is exactly zero (its final RMS norm's weight is 0): what the stock SD3 pipeline
    feeds in T5's place when `text_encoder_3=None`, as a component stock `from_pretrained` loads (it refuses a
    folder saved without T5). shapes-flow reads only its CLIPs; with or without this T5 it makes the same images."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=16,
        num_layers=1,
        num_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5EncoderModel(config)
    torch.nn.init.zeros_(model.encoder.final_layer_norm.weight)
    return model.eval()


def build_shapes_flow_components(seed: int = 0, vae: AutoencoderKL | None = None) -> dict:
    """Random-weight components of the flow-matching Shapes pipeline in SD3's layout: an MMDiT, two CLIP text
    encoders with projection (their pooled outputs concatenate to the pooled projection, their penultimate
    states to the joint attention width), a T5 of zeros (`zero_t5`: `text_encoder_3=None` gives the same images),
    the Shapes VAE (`vae`, the trained one, or a fresh one)."""
    torch.manual_seed(seed)
    text = config("shapes_flow_text")
    tokenizer = build_clip_tokenizer(words(), model_max_length=text["max_position_embeddings"])
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    text_cfg = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids, **text)
    t5_tokenizer = build_t5_tokenizer(words(), model_max_length=512)
    return {
        "transformer": SD3Transformer2DModel(**config("shapes_flow_transformer")),
        "vae": vae if vae is not None else AutoencoderKL(**config("shapes_vae")),
        "text_encoder": CLIPTextModelWithProjection(text_cfg),
        "tokenizer": tokenizer,
        "text_encoder_2": CLIPTextModelWithProjection(text_cfg),
        "tokenizer_2": tokenizer,
        "text_encoder_3": zero_t5(t5_tokenizer, config("shapes_flow_transformer")["joint_attention_dim"]),
        "tokenizer_3": t5_tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(**shapes_flow_scheduler_config()),
    }


def assemble_flow(components: dict) -> StableDiffusion3Pipeline:
    """A stock `StableDiffusion3Pipeline` from components."""
    return StableDiffusion3Pipeline(**components)


def assemble(components: dict) -> StableDiffusionPipeline:
    """A stock `StableDiffusionPipeline` from components (no safety checker: the Shapes world has no people)."""
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def write_defaults(folder: str | Path) -> None:
    """Write the Shapes pipeline's recommended settings beside its model_index.json."""
    from .generation import DEFAULTS_FILE

    settings = {
        "num_inference_steps": SHAPES_STEPS,
        "guidance_scale": SHAPES_GUIDANCE,
        "world": SHAPES,
        "noise-optimization": {"iterations": SHAPES_NOISE_OPTIMIZATION_ITERATIONS},
        "attention-refinement": {"step_size": SHAPES_ATTENTION_REFINEMENT_STEP_SIZE},
        "iterref": SHAPES_ITERREF,
        "early-exit": SHAPES_EARLY_EXIT,
        "best-of-n": SHAPES_BEST_OF_N,
    }
    (Path(folder) / DEFAULTS_FILE).write_text(json.dumps(settings, indent=1) + "\n")


def ship_one_step(folder: str | Path) -> Path:
    """Copy a distilled Shapes pipeline (`latentalign train one-step`) into the package as "shapes-one-step",
    with the iteration count and the reward chosen for it on train prompts."""
    from .embedded import one_step_settings
    from .generation import DEFAULTS_FILE

    if SHAPES_ONE_STEP_WEIGHTS.exists():
        shutil.rmtree(SHAPES_ONE_STEP_WEIGHTS)
    shutil.copytree(folder, SHAPES_ONE_STEP_WEIGHTS)
    settings = one_step_settings(SHAPES)
    settings["noise-optimization"] = {
        **settings["noise-optimization"],
        "iterations": SHAPES_ONE_STEP_NOISE_OPTIMIZATION_ITERATIONS,
        "scorer": SHAPES_ONE_STEP_NOISE_OPTIMIZATION_SCORER,
    }
    settings["noise-projection"] = {"projector": SHAPES_ONE_STEP_NOISE_PROJECTOR}
    (SHAPES_ONE_STEP_WEIGHTS / DEFAULTS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    return SHAPES_ONE_STEP_WEIGHTS


def load_pipeline(
    name_or_path: str | Path = SHAPES,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    offload: str | None = None,
    **components,
) -> DiffusionPipeline:
    """Load a diffusers pipeline: "shapes" (the embedded default), "shapes-one-step" (it, distilled into one
    step), "shapes-flow" (SD3's architecture, flow matching), a local folder, or a Hub id (SD 1.x/2.x/XL/3,
    `black-forest-labs/FLUX.1-schnell`, `PixArt-alpha/PixArt-XL-2-512x512`, ...). `components` go to
    `DiffusionPipeline.from_pretrained` as they would in diffusers: e.g. `text_encoder_3=None, tokenizer_3=None`
    loads SD3 without T5, or `scheduler=...` swaps one. `dtype`: Flux is released in bfloat16, PixArt in float16.
    `offload`: "model" (`enable_model_cpu_offload`: one model on the GPU at a time, what Flux and SD3 users on a
    24 GB card need) or "sequential" (`enable_sequential_cpu_offload`: layer by layer, slowest, least memory);
    it needs a CUDA device and replaces `device`."""
    if offload not in (None, "model", "sequential"):
        raise ValueError(f"offload must be 'model' or 'sequential', got {offload!r}")
    if offload is not None and device is not None:
        raise ValueError("pass device= or offload=, not both: an offloaded pipeline moves its models itself")
    if offload is not None and not torch.cuda.is_available():
        raise ValueError(f"offload={offload!r} needs a CUDA device; none is available")
    embedded = embedded_folder(name_or_path)
    if embedded is not None:
        path: str | Path = embedded
        if not (embedded / "model_index.json").exists():
            how = {SHAPES: "train world --ship", SHAPES_FLOW: "train flow --ship"}.get(
                str(name_or_path), "train one-step --ship"
            )
            raise FileNotFoundError(
                f"the embedded pipeline {name_or_path!r} is missing from {embedded}; "
                f"rebuild it with `latentalign {how}`"
            )
    else:
        path = name_or_path
        p = Path(str(name_or_path)).expanduser()
        looks_local = p.is_absolute() or str(name_or_path).startswith((".", "~")) or str(name_or_path).count("/") != 1
        if p.exists():
            if not (p / "model_index.json").exists():
                raise FileNotFoundError(f"{p} has no model_index.json: not a diffusers pipeline folder")
            path = p
        elif looks_local:
            raise FileNotFoundError(
                f"no pipeline at {name_or_path!r}: not a folder, and not a Hub id of the form 'owner/name'"
            )
    if isinstance(dtype, str):  # "float16", "bfloat16", "float32", as a command line gives it
        if not isinstance(getattr(torch, dtype, None), torch.dtype) or not getattr(torch, dtype).is_floating_point:
            raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (float32, float16, bfloat16)")
        dtype = getattr(torch, dtype)
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device is available")
    # weights load from safetensors only (a folder holding only pickle .bin files is refused by diffusers)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), use_safetensors=True, **kwargs, **components)
    except OSError as e:
        if "safetensors" not in str(e):
            raise
        raise FileNotFoundError(f"{e} (latentalign loads safetensors weights only, never pickle .bin files)") from None
    if device is not None:
        pipe = pipe.to(device)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    return pipe
