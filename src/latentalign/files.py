"""Reading saved files with errors that name the file: a truncated or corrupt safetensors or JSON file is a
`ValueError` saying which file, not a traceback from deep inside the parser."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def read_json(path: str | Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
