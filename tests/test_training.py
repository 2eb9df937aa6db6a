"""Checkpoints and the Shapes world trainer: round trips, atomic saves, and exact resumption."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import latentalign.training.world as world_training
from latentalign import generate
from latentalign.checkpoint import load_checkpoint, recover_checkpoint, save_checkpoint
from latentalign.training.world import WorldTrainConfig, train_world
from latentalign.world import SUITE_NAMES, inverse_phrasing, suite
from latentalign.world.dataset import sample_prompts

TINY = WorldTrainConfig(
    vae_steps=4, unet_steps=4, pool_size=64, checkpoint_every=2, warmup=1, vae_batch=8, unet_batch=8
)
WEIGHTS = [
    "unet/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


def quiet(_: str) -> None:
    pass


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir())


# Checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = small_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    train_steps(model, opt, 2)
    save_checkpoint(tmp_path / "ckpt", {"model": model}, opt, {"step": 2, "note": "x"})

    restored = small_model(1)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2, weight_decay=0.01)
    meta = load_checkpoint(tmp_path / "ckpt", {"model": restored}, restored_opt)
    assert meta["step"] == 2 and meta["note"] == "x"
    assert_same_tensors(model.state_dict(), restored.state_dict())
    state, restored_state = opt.state_dict()["state"], restored_opt.state_dict()["state"]
    assert state.keys() == restored_state.keys() and state
    for idx in state:
        assert_same_tensors(state[idx], restored_state[idx])
    # Training continues exactly as if it had never stopped.
    train_steps(model, opt, 2, seed=1)
    train_steps(restored, restored_opt, 2, seed=1)
    assert_same_tensors(model.state_dict(), restored.state_dict())


def test_checkpoint_without_optimizer(tmp_path):
    model = small_model(0)
    save_checkpoint(tmp_path / "ckpt", {"a": model}, None, {"step": 0})
    assert not (tmp_path / "ckpt" / "optimizer.safetensors").exists()
    restored = small_model(1)
    assert load_checkpoint(tmp_path / "ckpt", {"a": restored}, None) == {"step": 0}
    assert_same_tensors(model.state_dict(), restored.state_dict())


def test_checkpoint_save_replaces_the_folder(tmp_path):
    directory = tmp_path / "ckpt"
    save_checkpoint(directory, {"first": small_model(0)}, None, {"step": 1})
    save_checkpoint(directory, {"second": small_model(1)}, None, {"step": 2})
    assert sorted(p.name for p in directory.iterdir()) == ["meta.json", "second.safetensors"]
    assert json.loads((directory / "meta.json").read_text()) == {"step": 2}
    assert siblings(directory) == ["ckpt"]  # no temporary or old folders left behind


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    model = small_model(0)
    save_checkpoint(directory, {"model": model}, None, {"step": 1})
    with pytest.raises(TypeError):
        save_checkpoint(directory, {"model": small_model(1)}, None, {"step": object()})  # meta is not JSON
    restored = small_model(2)
    assert load_checkpoint(directory, {"model": restored}, None) == {"step": 1}
    assert_same_tensors(model.state_dict(), restored.state_dict())
    assert siblings(directory) == ["ckpt"]


def test_save_survives_a_stale_old_folder(tmp_path):
    """A save killed while deleting the previous checkpoint leaves `.ckpt-old` behind; the next save still works."""
    directory = tmp_path / "ckpt"
    save_checkpoint(directory, {"model": small_model(0)}, None, {"step": 1})
    stale = tmp_path / ".ckpt-old"
    stale.mkdir()
    (stale / "meta.json").write_text("{}")
    save_checkpoint(directory, {"model": small_model(1)}, None, {"step": 2})
    assert json.loads((directory / "meta.json").read_text()) == {"step": 2}
    assert siblings(directory) == ["ckpt"]


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    """Killed after moving the old checkpoint aside but before moving the new one in: the old one comes back."""
    directory = tmp_path / "ckpt"
    model = small_model(0)
    save_checkpoint(directory, {"model": model}, None, {"step": 1})
    directory.rename(tmp_path / ".ckpt-old")
    recover_checkpoint(directory)
    restored = small_model(1)
    assert load_checkpoint(directory, {"model": restored}, None) == {"step": 1}
    assert_same_tensors(model.state_dict(), restored.state_dict())
    assert siblings(directory) == ["ckpt"]


# The Shapes world trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One uninterrupted tiny training run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    train_world(out, TINY, log=quiet)
    return out


def test_train_world_writes_a_loadable_pipeline(trained):
    assert siblings(trained / "pipeline") == ["checkpoint", "pipeline"]
    pipe = StableDiffusionPipeline.from_pretrained(trained / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    defaults = json.loads((trained / "pipeline" / "latentalign.json").read_text())
    assert defaults["world"] == "shapes"
    report = json.loads((trained / "pipeline" / "training.json").read_text())
    assert report["phase"] == "done" and report["config"]["unet_steps"] == TINY.unet_steps
    assert {"vae/4", "unet/4"} <= set(report["losses"])
    result = generate(pipe, "a red circle", seed=0, num_inference_steps=2, guidance_scale=2.0)
    assert result.latents.shape == (1, 4, 8, 8) and torch.isfinite(result.latents).all()
    assert result.images[0].size == (32, 32)
    # The shipped UNet is the EMA, not the raw weights of the last step.
    raw = load_file(str(trained / "checkpoint" / "unet.safetensors"))
    ema = load_file(str(trained / "checkpoint" / "ema_unet.safetensors"))
    assert_same_tensors(load_file(str(trained / "pipeline" / WEIGHTS[0])), ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


@pytest.mark.parametrize("interrupt_after", [1, 2, 3], ids=["mid-vae", "vae-done", "mid-unet"])
def test_resume_gives_the_same_weights(trained, tmp_path, monkeypatch, interrupt_after):
    saves = []
    real_save = world_training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(json.loads((Path(args[0]) / "meta.json").read_text())["phase"])
        if len(saves) == interrupt_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(world_training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_world(tmp_path, TINY, log=quiet)
    assert not (tmp_path / "pipeline").exists()
    monkeypatch.setattr(world_training, "save_checkpoint", real_save)
    logs = []
    train_world(tmp_path, TINY, log=logs.append)
    assert any(line.startswith("resuming") for line in logs)
    for name in WEIGHTS:
        assert_same_tensors(load_file(str(tmp_path / "pipeline" / name)), load_file(str(trained / "pipeline" / name)))


def test_training_captions_never_use_held_out_prompts():
    prompts = sample_prompts(3000, random.Random(0), split="train")
    captions = world_training._captions(prompts, WorldTrainConfig())
    heldout = {p for name in SUITE_NAMES for p in suite(name, "heldout")}
    assert not heldout & set(captions)
    changed = [(p, c) for p, c in zip(prompts, captions, strict=True) if p != c]
    assert changed and all(c == inverse_phrasing(p) for p, c in changed)


def test_resume_with_another_config_is_refused(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with pytest.raises(ValueError, match="config"):
        train_world(out, replace(TINY, unet_steps=5), log=quiet)


@pytest.mark.parametrize(
    "bad",
    [{"high_noise_share": -0.1}, {"high_noise_share": 1.5}, {"high_noise_start": 1000}, {"unet_steps": -1}],
)
def test_bad_world_config_is_refused_at_once(bad):
    with pytest.raises(ValueError):
        WorldTrainConfig(**bad)


def test_high_noise_share_moves_timesteps_to_the_upper_half():
    g = torch.Generator().manual_seed(0)
    high = world_training._timesteps(WorldTrainConfig(unet_batch=4000, high_noise_share=1.0), 1000, g)
    assert high.min() >= 500 and high.max() < 1000
    uniform = world_training._timesteps(WorldTrainConfig(unet_batch=4000, high_noise_share=0.0), 1000, g)
    assert 0.45 < (uniform >= 500).float().mean() < 0.55
    mixed = world_training._timesteps(WorldTrainConfig(unet_batch=4000, high_noise_share=0.5), 1000, g)
    assert 0.70 < (mixed >= 500).float().mean() < 0.80  # half forced high, half uniform: 3/4 in the upper half
