"""Alignment scorers and judges behind one interface, `score(x, prompts, t=None) -> (batch,)`, over pixels or (noisy)
latents."""

from .base import SPACES, CLIPScorer, Scorer
from .factory import build_shapes_judge, build_shapes_scorer, load_scorer, save_scorer, shared_scorer
from .judge import LatentJudge
from .latent_clip import LatentCLIPScorer, convert_open_clip_state_dict
from .noisy_clip import NoisyCLIPScorer, fit_preview_map, sdxl_preview_map
from .pixel_clip import PixelCLIPScorer
from .score_sum import ScoreSum

__all__ = [
    "SPACES",
    "CLIPScorer",
    "LatentCLIPScorer",
    "LatentJudge",
    "NoisyCLIPScorer",
    "PixelCLIPScorer",
    "ScoreSum",
    "Scorer",
    "build_shapes_judge",
    "build_shapes_scorer",
    "convert_open_clip_state_dict",
    "fit_preview_map",
    "load_scorer",
    "sdxl_preview_map",
    "save_scorer",
    "shared_scorer",
]
