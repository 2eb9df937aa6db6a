"""latentalign: make latent diffusion models follow their prompts, at inference time."""

from . import _quiet

_quiet.install()  # before transformers is imported: it would print a torchvision notice on import

__version__ = "0.1.0"
__all__ = ["Cost", "GenerationResult", "NonFiniteError", "generate", "load_pipeline"]

# loaded on first use, so `latentalign --help` and commands that need no model do not import torch
_LAZY = {
    "Cost": "cost",
    "GenerationResult": "core",
    "NonFiniteError": "engine",
    "generate": "generation",
    "load_pipeline": "pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
