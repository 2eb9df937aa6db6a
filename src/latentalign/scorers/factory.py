"""Build the Shapes-world scorers from their JSON architectures; save and load any scorer as safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from .. import embedded
from ..embedded import config
from ..files import file_stamp, read_json, read_safetensors
from ..tokenizer import build_clip_tokenizer
from ..world import words
from .base import Scorer
from .judge import LatentJudge
from .latent_clip import LatentCLIPScorer
from .noisy_clip import NoisyCLIPScorer
from .pixel_clip import PixelCLIPScorer
from .score_sum import ScoreSum

KINDS: dict[str, type[Scorer]] = {
    "pixel": PixelCLIPScorer,
    "latent": LatentCLIPScorer,
    "noisy": NoisyCLIPScorer,
    "judge": LatentJudge,
}
SCORER_FILE = "latentalign_scorer.json"


def check_vision_size(width: int | None, layers: int | None) -> None:
    """Refuse an image tower size `build_shapes_scorer` cannot build (None: the shipped size)."""
    if width is not None and (width < 16 or width % 16):
        raise ValueError(f"vision_width must be a positive multiple of 16, got {width}")
    if layers is not None and layers < 1:
        raise ValueError(f"vision_layers must be >= 1, got {layers}")


def build_shapes_judge(pipe, *, seed: int = 0) -> LatentJudge:
    """A random-weight judge for a Shapes pipeline, in the architecture of `configs/shapes_judge.json`."""
    from .judge import judge_for_pipeline

    return judge_for_pipeline(pipe, config("shapes_judge"), seed=seed).eval()


def build_shapes_scorer(
    kind: str,
    vae_scaling_factor: float,
    *,
    vae=None,
    preview_map: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
    vision_width: int | None = None,
    vision_layers: int | None = None,
) -> Scorer:
    """A random-weight Shapes scorer from `configs/shapes_clip_<kind>.json` and the Shapes tokenizer.

    `vae` is optional for "pixel" (needed only by `score_latents`). A "noisy" scorer reads the latent channels
    directly (the Latent-CLIP architecture plus a timestep embedding), or, given the Shapes VAE's `preview_map`
    (see `fit_preview_map`), its RGB preview as the published NoisyCLIP does. `vision_width` / `vision_layers`
    resize the image tower (heads of 16 channels, MLP 4x wide); the text tower and the embedding stay as shipped.
    """
    if kind not in KINDS or kind == "judge":
        raise ValueError(f"unknown scorer kind {kind!r}: choose from pixel, latent, noisy (judges: build_shapes_judge)")
    arch = config("shapes_clip_latent" if kind == "noisy" and preview_map is None else f"shapes_clip_{kind}")
    check_vision_size(vision_width, vision_layers)
    if vision_width is not None:
        arch["vision_config"].update(
            hidden_size=vision_width, intermediate_size=4 * vision_width, num_attention_heads=vision_width // 16
        )
    if vision_layers is not None:
        arch["vision_config"]["num_hidden_layers"] = vision_layers
    tokenizer = build_clip_tokenizer(words(), model_max_length=arch["text_config"]["max_position_embeddings"])
    text = dict(
        arch["text_config"],
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    clip = CLIPModel(
        CLIPConfig(text_config=text, vision_config=arch["vision_config"], projection_dim=arch["projection_dim"])
    )
    if kind == "pixel":
        return PixelCLIPScorer(clip, tokenizer, vae=vae, vae_scaling_factor=vae_scaling_factor).eval()
    if kind == "latent":
        return LatentCLIPScorer(clip, tokenizer, vae_scaling_factor).eval()
    return NoisyCLIPScorer(clip, tokenizer, vae_scaling_factor, *(preview_map or (None, None))).eval()


def save_scorer(scorer: Scorer, folder: str | Path) -> None:
    """Write the CLIPModel (safetensors), its tokenizer and `latentalign_scorer.json` into `folder`."""
    if isinstance(scorer, ScoreSum):
        raise ValueError("a ScoreSum is not saved: save its members and build the sum from them")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, LatentJudge):
        scorer.save_parts(folder)
        (folder / SCORER_FILE).write_text(json.dumps({"kind": scorer.kind, **scorer.scorer_config()}, indent=1) + "\n")
        return
    scorer.clip.save_pretrained(folder)  # transformers 5 always writes model.safetensors
    scorer.tokenizer.save_pretrained(folder)
    for name, module in scorer.extra_modules().items():
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, folder / f"{name}.safetensors")
    (folder / SCORER_FILE).write_text(json.dumps({"kind": scorer.kind, **scorer.scorer_config()}, indent=1) + "\n")


# shipped name -> (folder under the package's shapes_scorers/, the command that makes it)
SHIPPED_FOLDERS = {
    "shapes-pixel": ("pixel", "latentalign train scorer --kind pixel --ship"),
    "shapes-latent": ("latent", "latentalign train scorer --kind latent --ship"),
    "shapes-noisy": ("noisy", "latentalign train scorer --kind noisy --ship"),
    "shapes-latent-distilled": ("latent_distilled", "latentalign train distill --model shapes-one-step --ship"),
    "shapes-judge": ("judge", "latentalign train judge --model shapes --ship"),
    # the same recipe on the flow-matching pipeline's own trajectories (issue 26; docs/shapes_flow.md)
    "shapes-flow-judge": ("flow_judge", "latentalign train judge --model shapes-flow --ship"),
}
# the shipped judge `latentalign train judge --ship` writes for each embedded pipeline
JUDGE_SHIP_NAMES = {"shapes": "shapes-judge", "shapes-flow": "shapes-flow-judge"}
# shipped names for a shipped judge read another way: the latent judge reading the generator's x0 prediction in the
# middle of sampling instead of z_t (`LatentJudge.reading`; docs/judges.md), for configs and the command line
SHIPPED_VIEWS = {
    "shapes-judge-x0": ("shapes-judge", "latents"),
    "shapes-flow-judge-x0": ("shapes-flow-judge", "latents"),
}
# shipped names for weighted sums of shipped scorers (`ScoreSum`): the latent judge beside pixel CLIP on the decode,
# the weight chosen on TRAIN prompts (the judge's kept-aside prompts) for the shipped judge, its second run: w = 5,
# Best-of-8 0.822 against the judge's 0.794 and pixel CLIP's 0.659 (benchmarks/results/judge_v2_with_pixel_train;
# for the first judge w = 50, 0.785 against 0.762: results/judge_with_pixel_train)
SHIPPED_SUMS = {"shapes-judge-pixel": (("shapes-judge", 1.0), ("shapes-pixel", 5.0))}
SHIPPED = tuple(SHIPPED_FOLDERS) + tuple(SHIPPED_VIEWS) + tuple(SHIPPED_SUMS)


def check_scorer_source(name: str, field: str = "init_from") -> None:
    """Refuse, before any work, a scorer that is neither a shipped name nor a folder."""
    if name not in SHIPPED and not Path(name).is_dir():
        raise FileNotFoundError(f"{field} {name!r} is neither a shipped scorer nor a folder")


def ship_scorer(folder: str | Path, name: str) -> Path:
    """Copy a saved scorer folder into the package as the shipped scorer `name` (one of `SHIPPED`)."""
    target = embedded.SHAPES_SCORERS / SHIPPED_FOLDERS[name][0]
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    return target


def scorer_folder(source: str | Path) -> Path:
    """The folder a scorer source names: a shipped Shapes scorer's (one of `SHIPPED`) or the path itself."""
    name = SHIPPED_VIEWS.get(str(source), (str(source),))[0]
    if name in SHIPPED_FOLDERS:
        return embedded.SHAPES_SCORERS / SHIPPED_FOLDERS[name][0]
    return Path(source)


def load_scorer(folder: str | Path, *, vae=None) -> Scorer:
    """Load a scorer written by `save_scorer`, or a shipped Shapes scorer by name (one of `SHIPPED`);
    `vae` re-attaches a pixel scorer's decoder."""
    if str(folder) in SHIPPED_SUMS:
        return ScoreSum([(load_scorer(name, vae=vae), w) for name, w in SHIPPED_SUMS[str(folder)]])
    if str(folder) in SHIPPED_VIEWS:
        name, space = SHIPPED_VIEWS[str(folder)]
        return load_scorer(name, vae=vae).reading(space)
    source, folder = str(folder), scorer_folder(folder)
    if source in SHIPPED and not (folder / SCORER_FILE).exists():
        raise FileNotFoundError(f"{folder} is missing: train it with `{SHIPPED_FOLDERS[source][1]}`")
    if not (folder / SCORER_FILE).exists():
        raise FileNotFoundError(f"{folder} has no {SCORER_FILE}: not a saved latentalign scorer")
    settings = read_json(folder / SCORER_FILE)
    kind = settings.pop("kind")
    if kind not in KINDS:
        raise ValueError(f"{folder / SCORER_FILE} names an unknown scorer kind {kind!r}")
    if kind == "judge":
        try:
            return LatentJudge.load_parts(folder, settings).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: its judge could not be loaded ({type(e).__name__}: {e})") from None
    try:
        clip = CLIPModel.from_pretrained(folder, use_safetensors=True)
    except Exception as e:  # a truncated or corrupt weights file: name it, not a parser's traceback
        raise ValueError(
            f"{folder}: its CLIP weights (model.safetensors) or config could not be loaded ({type(e).__name__}: {e})"
        ) from None
    extra = {"vae": vae} if kind == "pixel" else {}
    scorer = KINDS[kind](clip, CLIPTokenizer.from_pretrained(folder), **settings, **extra)
    for name, module in scorer.extra_modules().items():
        path = folder / f"{name}.safetensors"
        if path.exists():
            module.load_state_dict(read_safetensors(path))
        elif name != "timestep_embedding":  # a NoisyCLIP saved without one has a zero (no-op) timestep embedding
            raise FileNotFoundError(f"{folder} has no {path.name}: its {kind} scorer needs it")
    return scorer.eval()


_LOADED: dict[tuple, tuple] = {}  # (folder, file times, id(vae)) -> (scorer, vae); see shared_scorer


def shared_scorer(source: str | Path, *, vae=None) -> Scorer:
    """`load_scorer`, once per process: a scorer named by a string is loaded the first time and reused while its
    files are unchanged (methods call this for every `generate`; train with `load_scorer`, which always loads)."""
    if str(source) in SHIPPED_SUMS:
        return ScoreSum([(shared_scorer(name, vae=vae), w) for name, w in SHIPPED_SUMS[str(source)]])
    if str(source) in SHIPPED_VIEWS:
        name, space = SHIPPED_VIEWS[str(source)]
        return shared_scorer(name, vae=vae).reading(space)
    folder = scorer_folder(source)
    key = (str(folder.resolve()), file_stamp(folder), id(vae))
    hit = _LOADED.get(key)
    if hit is not None and hit[1] is vae:
        return hit[0]
    scorer = load_scorer(source, vae=vae)
    _LOADED[key] = (scorer, vae)
    return scorer
