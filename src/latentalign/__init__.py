"""latentalign: make latent diffusion models follow their prompts, at inference time."""

from .cost import Cost
from .generate import GenerationResult, generate
from .pipeline import load_pipeline

__version__ = "0.1.0"
__all__ = ["Cost", "GenerationResult", "generate", "load_pipeline"]
