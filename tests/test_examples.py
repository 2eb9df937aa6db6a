"""The Hub-model example runs end to end on tiny random-weight SDXL, SD3, Flux and PixArt folders and a tiny CLIP
folder."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from conftest import TINY_WORDS
from test_scorers import tiny_clip

from latentalign.tokenizer import build_clip_tokenizer

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "pixart"])
def test_hub_models_example_runs_every_method(request, family, tmp_path, monkeypatch, capsys):
    pipe = request.getfixturevalue(f"tiny_{family}_pipeline")
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=16)
    tiny_clip(tokenizer).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    argv = ["hub_models.py", "a red ball", "--model", str(tmp_path / "model"), "--clip", str(tmp_path / "clip")]
    argv += ["--steps", "2", "--guidance", "2", "--n", "2", "--iterations", "1", "--out", str(tmp_path / "out")]
    argv += {"sd3": ["--no-t5"], "flux": ["--height", "16", "--width", "16"], "pixart": ["--no-binning"]}.get(
        family, []
    )
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "hub_models.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["plain", "best-of-n", "noise-optimization"]
    for name in ("plain", "best-of-n", "noise-optimization"):
        assert (tmp_path / "out" / f"{name}.png").is_file()


def test_token_feedback_example_scores_every_word_three_ways(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["token_feedback.py", "a red circle left of a blue square", "--seeds", "1"])
    runpy.run_path(str(EXAMPLES / "token_feedback.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["checker", "question", "clip"]
    assert "left=" in lines[0] and "of=" in lines[0] and "of=" not in lines[2]  # the checker judges relation words
