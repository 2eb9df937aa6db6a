"""Alignment methods as composable stages, one module each, registered by name (see `methods.base`)."""

from __future__ import annotations

from .attention_refinement import AttentionGuidance, AttentionRefinement
from .base import (
    PLACES,
    SEED_STRIDE,
    Composition,
    NoiseStage,
    PruneSchedule,
    SelectionStage,
    Stage,
    StepStage,
    compose,
    method_names,
    register,
    registered,
    resolve_scorer,
)
from .best_of_n import BestOfN, EarlyExit, SuccessiveHalving, early_exit_schedule, successive_halving_schedule
from .gsn_guidance import GSNGuidance
from .iterref import IterRef
from .noise_optimization import (
    NoiseOptimization,
    Reward,
    chi_regulariser,
    recommended_iterations,
    recommended_steps,
)
from .noise_projection import (
    NoiseProjection,
    NoiseProjector,
    NoiseProjectorConfig,
    load_projector,
    projection_kl,
    save_projector,
)

__all__ = [
    "PLACES",
    "SEED_STRIDE",
    "AttentionGuidance",
    "AttentionRefinement",
    "BestOfN",
    "Composition",
    "EarlyExit",
    "GSNGuidance",
    "IterRef",
    "NoiseOptimization",
    "NoiseProjection",
    "NoiseProjector",
    "NoiseProjectorConfig",
    "NoiseStage",
    "PruneSchedule",
    "Reward",
    "SelectionStage",
    "Stage",
    "StepStage",
    "SuccessiveHalving",
    "chi_regulariser",
    "compose",
    "early_exit_schedule",
    "load_projector",
    "method_names",
    "projection_kl",
    "recommended_iterations",
    "recommended_steps",
    "register",
    "registered",
    "resolve_scorer",
    "save_projector",
    "successive_halving_schedule",
]
