"""Benchmark layouts: GenEval's and T2I-CompBench's, end to end on the tiny Shapes pipeline: the Shapes suites as
GenEval metadata, an export, and the checker scoring the exported folder exactly as it scores the images."""

from __future__ import annotations

import json

import pytest
import torch

from latentalign import generate
from latentalign.cli import main
from latentalign.exports import (
    read_geneval_metadata,
    score_geneval_folder,
    shapes_geneval_metadata,
    write_geneval,
    write_jsonl,
    write_t2i_compbench,
    write_tiam,
)
from latentalign.world import check, parse


def test_shapes_suites_as_geneval_metadata():
    entries = shapes_geneval_metadata("heldout", limit_prompts=3)
    assert {e["tag"] for e in entries} == {"single_object", "color_attr", "position", "counting"}
    relation = next(e for e in entries if e["tag"] == "position")
    scene = parse(relation["prompt"])  # "A <relation> B": B first, A placed relative to it, as GenEval writes it
    assert relation["include"][0]["class"] == scene.objects[1].shape
    assert relation["include"][1]["position"] == [scene.relation, 0]
    counting = next(e for e in entries if e["tag"] == "counting")
    assert counting["include"][0]["count"] == parse(counting["prompt"]).objects[0].count


def test_geneval_export_layout_and_checker_scoring(tiny_shapes_pipeline, tmp_path):
    entries = shapes_geneval_metadata("train", limit_prompts=1)
    out = write_geneval(tiny_shapes_pipeline, entries, tmp_path / "geneval", samples=2, batch=3)
    for index, entry in enumerate(entries):
        folder = out / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == entry
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]
        assert (folder / "grid.png").is_file()
    # sample n of a prompt is the seed-n image of plain generation
    again = generate(tiny_shapes_pipeline, entries[0]["prompt"], seed=1)
    with torch.no_grad():
        from PIL import Image

        saved = Image.open(out / "00000" / "samples" / "00001.png").convert("RGB")
    # equal up to rounding: with several threads a batch of 3 and a batch of 1 may sum in another order
    import numpy as np

    diff = np.abs(np.asarray(saved, dtype=int) - np.asarray(again.images[0].convert("RGB"), dtype=int))
    assert diff.max() <= 2
    summary = score_geneval_folder(out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["images"] == len(rows) == 2 * len(entries)
    for row in rows:
        image = Image.open(out / row["filename"]).convert("RGB")
        assert row["correct"] == check(image, row["prompt"]).ok
    # resumable: a second run keeps every image
    stamp = (out / "00000" / "samples" / "00000.png").stat().st_mtime_ns
    write_geneval(tiny_shapes_pipeline, entries, out, samples=2)
    assert (out / "00000" / "samples" / "00000.png").stat().st_mtime_ns == stamp


def test_t2i_compbench_layout(tiny_shapes_pipeline, tmp_path):
    out = write_t2i_compbench(tiny_shapes_pipeline, ["a red circle", "a blue square"], tmp_path / "t2i", samples=2)
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == [
        "a blue square_000002.png",
        "a blue square_000003.png",
        "a red circle_000000.png",
        "a red circle_000001.png",
    ]


def test_tiam_layout(tiny_shapes_pipeline, tmp_path):
    from PIL import Image

    prompts = ["a red circle", "two blue squares"]
    out = write_tiam(tiny_shapes_pipeline, prompts, tmp_path / "tiam", samples=2)
    assert (out / "prompts.txt").read_text().splitlines() == prompts
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["a_red_circle_0.png", "a_red_circle_1.png", "two_blue_squares_0.png", "two_blue_squares_1.png"]
    again = generate(tiny_shapes_pipeline, "two blue squares", seed=1).images[0]  # sample n has seed n
    assert list(Image.open(out / "images" / "two_blue_squares_1.png").convert("RGB").getdata()) == list(again.getdata())
    with pytest.raises(ValueError, match="given twice"):
        write_tiam(tiny_shapes_pipeline, ["a red circle", "a  red circle"], tmp_path / "t2")


def test_bad_metadata_and_prompts_are_refused_before_any_work(tiny_shapes_pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_shapes_pipeline.unet, "forward", lambda *a, **k: pytest.fail("the denoiser ran"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_geneval_metadata(bad)
    with pytest.raises(Exception, match="unknown word"):
        write_geneval(tiny_shapes_pipeline, [{"prompt": "a red dog"}], tmp_path / "x")
    with pytest.raises(ValueError, match="samples"):
        write_geneval(tiny_shapes_pipeline, [{"prompt": "a red circle"}], tmp_path / "x", samples=0)


def test_export_cli_round_trip(tiny_shapes_path, tmp_path, capsys):
    metadata = tmp_path / "meta.jsonl"
    assert (
        main(
            [
                "export",
                "--format",
                "shapes-metadata",
                "--split",
                "train",
                "--limit-prompts",
                "1",
                "--out",
                str(metadata),
            ]
        )
        == 0
    )
    assert len(read_geneval_metadata(metadata)) == 4
    write_jsonl(metadata, read_geneval_metadata(metadata)[:2])
    out = tmp_path / "g"
    argv = ["export", "--format", "geneval", "--metadata", str(metadata), "--samples", "1", "--out", str(out)]
    assert main([*argv, "--model", str(tiny_shapes_path)]) == 0
    assert main(["score-geneval", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["images"] == 2
    assert main(["export", "--format", "geneval", "--out", str(tmp_path / "y")]) == 2
    assert "--metadata" in capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\nthree green squares\n")
    argv = ["export", "--format", "tiam", "--prompts", str(prompts), "--samples", "1", "--out", str(tmp_path / "t")]
    assert main([*argv, "--model", str(tiny_shapes_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "t" / "images").iterdir()) == [
        "a_red_circle_0.png",
        "three_green_squares_0.png",
    ]
    assert main(["export", "--format", "tiam", "--out", str(tmp_path / "z")]) == 2
    assert "--format tiam needs --prompts" in capsys.readouterr().err
