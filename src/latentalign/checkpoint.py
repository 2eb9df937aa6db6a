"""Atomic, pickle-free training checkpoints: tensors in safetensors, everything else in JSON."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .files import read_json, read_safetensors


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"{idx}.{k}": v.contiguous() for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(
    directory: str | Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None, meta: dict
) -> None:
    """Write every module, the optimizer and `meta` to a fresh folder, then swap it in with one rename."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        for name, module in modules.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        if opt is not None:
            tensors, groups = optimizer_tensors(opt)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta = {**meta, "param_groups": groups}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    recover_checkpoint(directory)
    old = _old(directory)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def _old(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}-old")


def recover_checkpoint(directory: str | Path) -> None:
    """Undo a save killed between its two renames (bring the previous checkpoint back), or clear its leftovers."""
    directory = Path(directory)
    old = _old(directory)
    if old.exists() and not directory.exists():
        os.replace(old, directory)
    else:
        shutil.rmtree(old, ignore_errors=True)  # a save killed mid-cleanup; os.replace cannot overwrite it


def checkpoint_exists(directory: str | Path, config: dict) -> bool:
    """Whether `directory` holds a checkpoint to resume; refuse one written with another `config`."""
    meta = Path(directory) / "meta.json"
    if not meta.exists():
        return False
    if read_json(meta)["config"] != config:
        raise ValueError(f"{directory} was written with another config; remove it or pass the same settings")
    return True


def load_checkpoint(
    directory: str | Path, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer | None
) -> dict:
    directory = Path(directory)
    meta = read_json(directory / "meta.json")
    for name, module in modules.items():
        module.load_state_dict(read_safetensors(directory / f"{name}.safetensors"))
    if opt is not None:
        load_optimizer(opt, read_safetensors(directory / "optimizer.safetensors"), meta["param_groups"])
    return meta


def publish_folder(out: str | Path, name: str, write) -> Path:
    """`out/name` written by `write(folder)` into a fresh folder, then swapped in with one rename (a run killed
    while writing leaves the previous result, never half of one)."""
    out = Path(out)
    final = out / name
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{name}-"))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_prompted_tensors(path: str | Path, tensors: dict[str, torch.Tensor], prompts: list[str]) -> None:
    """Tensors with one prompt per row, as one safetensors file (prompts in its metadata), written atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"prompts": json.dumps(prompts)})
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


def load_prompted_tensors(path: str | Path) -> dict:
    """What `save_prompted_tensors` wrote: the tensors, and the prompts under "prompts"."""
    with safe_open(str(path), "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
    return {**read_safetensors(path), "prompts": prompts}
