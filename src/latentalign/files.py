"""Reading saved files with errors that name the file: a truncated or corrupt safetensors or JSON file is a
`ValueError` saying which file, not a traceback from deep inside the parser; writing them atomically (a reader or an
interrupted run never sees half a file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def file_stamp(path: str | Path) -> tuple:
    """What tells one version of a file, or of a folder's files, from another: (name, mtime, size) of each. The
    load-once caches (pipeline defaults, scorers, projectors) key on it, so an edited file is read again."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` into `path` through a temporary file beside it and one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_save_png(path: str | Path, image) -> None:
    """A PIL image as `path` (PNG) through a temporary file beside it and one rename; no temporary file is left."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
