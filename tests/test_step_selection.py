"""Step selection and attention grids on a tiny random Shapes pipeline: rows per (step, prompt, seed) that resume
without losing one, shards that split the candidates and add up, the record in latentalign.json, the grid's files,
and errors before any work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SHAPES_DEFAULTS
from PIL import Image

from latentalign import load_pipeline
from latentalign.attention_maps import attention_grid, attention_over_steps
from latentalign.cli import main
from latentalign.methods import IterRef
from latentalign.step_selection import PLAIN, select_steps

SMALL = dict(suites=["two_objects"], seeds=1, limit_prompts=2, batch=2)


def judged(summary: dict) -> list[dict]:
    """The summary's rows without their wall seconds (which vary run to run)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["steps"]]


@pytest.fixture
def folder(tiny_shapes_path, tmp_path):
    """A writable copy of the tiny Shapes pipeline (select-steps may record into its latentalign.json)."""
    path = tmp_path / "pipe"
    shutil.copytree(tiny_shapes_path, path)
    return path


def test_selection_table_plot_and_record(folder, tmp_path):
    pipe = load_pipeline(str(folder))
    out = tmp_path / "sel"
    summary = select_steps(
        pipe, out, candidates=[0, 2], options={"max_refine_iterations": 1}, record=True, model_folder=folder, **SMALL
    )
    assert [r["step"] for r in summary["steps"]] == [PLAIN, 0, 2] and summary["complete"]
    assert all(r["n"] == 2 and 0 <= r["value"] <= 1 for r in summary["steps"])
    assert (
        summary["selected"] in (0, 2)
        and (out / "steps.png").exists()
        and "selected" in (out / "summary.md").read_text()
    )
    recorded = json.loads((folder / "latentalign.json").read_text())
    assert recorded["iterref"] == {
        "steps": [summary["selected"]],
        "loss": "attend-and-excite",
        "max_refine_iterations": 1,
    }
    assert recorded["num_inference_steps"] == SHAPES_DEFAULTS["num_inference_steps"]  # other keys kept
    # the pipeline now runs iterref at the recorded step without being told
    again = load_pipeline(str(folder))
    from latentalign import generate

    r = generate(again, "a red circle and a blue square", method="iterref", seed=0)
    assert r.settings["refine_steps"] == [summary["selected"]]


def test_selection_resumes_without_losing_a_row_and_shards_add_up(tiny_shapes_pipeline, tmp_path):
    out = tmp_path / "sel"
    opts = {"max_refine_iterations": 0}
    full = select_steps(tiny_shapes_pipeline, out, candidates=[1, 2], options=opts, **SMALL)
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 2
    (out / "rows.jsonl").write_text("\n".join(rows[:3]) + "\n" + rows[3][:10])  # interrupted mid-row
    resumed = select_steps(tiny_shapes_pipeline, out, candidates=[1, 2], options=opts, **SMALL)
    again = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(again) == 6 and len({(r["step"], r["prompt"], r["seed"]) for r in again}) == 6
    assert judged(resumed) == judged(full)  # the same images, judged the same
    sharded = tmp_path / "sharded"
    first = select_steps(tiny_shapes_pipeline, sharded, candidates=[1, 2], options=opts, shard=(0, 2), **SMALL)
    assert not first["complete"] and first["selected"] is None
    last = select_steps(tiny_shapes_pipeline, sharded, candidates=[1, 2], options=opts, shard=(1, 2), **SMALL)
    assert last["complete"] and sorted(p.name for p in sharded.glob("rows*.jsonl")) == [
        "rows-0-of-2.jsonl",
        "rows-1-of-2.jsonl",
    ]
    assert judged(last) == judged(full)
    with pytest.raises(ValueError, match="other settings"):
        select_steps(tiny_shapes_pipeline, out, candidates=[1, 2], options={"max_refine_iterations": 2}, **SMALL)


def test_selection_refuses_before_any_work(tiny_shapes_pipeline, tiny_sd_pipeline, tmp_path, monkeypatch):
    unet = tiny_shapes_pipeline.unet
    monkeypatch.setattr(unet, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work began")))
    for kwargs, match in (
        ({"split": "heldout"}, "never used to choose"),
        ({"candidates": [7]}, "must lie in 0..2"),
        ({"options": {"step_size": -1.0}}, "step_size"),
        ({"loss": "boxdiff"}, "unknown attention loss"),
        ({"record": True}, "model_folder"),
        ({"shard": (2, 2)}, "shard index"),
    ):
        with pytest.raises(ValueError, match=match):
            select_steps(tiny_shapes_pipeline, tmp_path / "x", **{**SMALL, **kwargs})
    with pytest.raises(ValueError, match="needs a scorer"):
        select_steps(tiny_sd_pipeline, tmp_path / "y", **SMALL)


def test_attention_grid_shows_every_group_before_and_after(tiny_shapes_pipeline, tmp_path):
    method = IterRef(steps=(1,), max_refine_iterations=1, step_size=50.0)
    result, maps, groups = attention_over_steps(tiny_shapes_pipeline, "a red circle and a blue square", method)
    steps = result.settings["num_inference_steps"]
    assert maps["subjects"].shape[:2] == (steps, 2) and maps["modifiers"].shape[:2] == (steps, 2)
    assert [g["word"] for g in groups["subjects"]] == ["circle", "square"]
    assert result.settings["refine_steps"] == [1]  # the inner method's record, not the recorder's
    _, plain, _ = attention_over_steps(tiny_shapes_pipeline, "a red circle and a blue square", None)
    assert np.allclose(plain["subjects"][0], maps["subjects"][0], atol=1e-5)  # identical before the refined step
    assert not np.allclose(plain["subjects"][-1], maps["subjects"][-1])
    png = attention_grid(tiny_shapes_pipeline, "a red circle and a blue square", tmp_path / "grid", method)
    with Image.open(png) as im:
        assert im.size[1] == 20 + 2 * 4 * 48  # plain and iterref, two subjects and two colours each
    saved = np.load(tmp_path / "grid" / "attention.npz")
    assert list(saved["words"]) == ["circle", "square", "red", "blue"] and saved["iterref"].shape[:2] == (steps, 4)


def test_cli_select_steps_and_attention(folder, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "select-steps",
        "--model",
        str(folder),
        "--candidates",
        "1",
        "--suite",
        "two_objects",
        "--seeds",
        "1",
        "--limit-prompts",
        "1",
        "--max-refine-iterations",
        "1",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    assert main(argv) == 0 and json.loads((out / "summary.json").read_text())["selected"] == 1
    grid = tmp_path / "grid"
    argv = [
        "attention",
        "a red circle",
        "--model",
        str(folder),
        "--out",
        str(grid),
        "--at-steps",
        "0",
        "--loss",
        "iou",
        "--threads",
        "1",
    ]
    assert main(argv) == 0 and (grid / "attention.png").exists()
    for bad, match in (
        (["select-steps", "--model", str(folder), "--loss", "nope"], "unknown attention loss"),
        (["select-steps", "--model", str(folder), "--shard", "3/2"], "--shard"),
        (["select-steps", "--model", str(folder), "--candidates", "a"], "--candidates"),
        (["attention", "a red circle", "--model", str(folder), "--method", "best-of-n"], "attention method"),
    ):
        assert main(bad) == 2  # a one-line error before loading anything
        assert match in capsys.readouterr().err
