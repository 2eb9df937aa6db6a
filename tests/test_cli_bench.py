"""The `generate`, `check` and `bench` commands on a tiny random-weight Shapes pipeline."""

from __future__ import annotations

import json
import os

import pytest
import torch

import latentalign.pipeline
from latentalign.bench import RESULTS, wilson_interval
from latentalign.cli import main
from latentalign.pipeline import assemble, build_shapes_components
from latentalign.world import render

torch.set_num_threads(1)

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "pipe"
    assemble(build_shapes_components(seed=0)).save_pretrained(path, safe_serialization=True)
    defaults = {"num_inference_steps": 2, "guidance_scale": 2.0, "world": "shapes"}  # read as a Shapes pipeline
    (path / "latentalign.json").write_text(json.dumps(defaults))
    return path


def read_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def test_generate_writes_image_and_record(pipe_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", PROMPT, "--seed", "3", "--out", str(out), "--model", str(pipe_dir)]) == 0
    stem = out / "a_red_circle_left_of_a_blue_square_s3"
    assert stem.with_suffix(".png").exists() and capsys.readouterr().out.startswith(str(stem))
    from PIL import Image

    assert Image.open(f"{stem}.png").size == (32, 32)
    assert Image.open(f"{stem}_x8.png").size == (256, 256)
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["prompt"] == PROMPT and record["seed"] == 3 and record["model"] == str(pipe_dir)
    assert record["settings"].items() >= {"num_inference_steps": 2, "guidance_scale": 2.0, "method": "plain"}.items()
    assert record["cost"]["denoiser_evals"] == 4 and record["cost"]["vae_decodes"] == 1
    assert set(record["verdict"]) >= {"ok", "failures"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["", "--seed", "0"], "empty prompt"),
        (["a purple dog"], "purple"),
        ([PROMPT, "--steps", "0"], "--steps"),
        ([PROMPT, "--seed", "-1"], "--seed"),
        ([PROMPT, "--n", "4"], "--method"),
        ([PROMPT, "--method", "early-exit", "--n", "0"], "--n"),
        ([PROMPT, "--words", "circle"], "--words"),
        ([PROMPT, "--method", "attention-refinement", "--n", "2"], "--n"),
        ([PROMPT, "--method", "attention-refinement", "--scorer", "shapes-pixel"], "--scorer needs --method"),
        ([PROMPT, "--method", "best-of-n+early-exit"], "selection place"),
        ([PROMPT, "--method", "best-of-all"], "unknown method"),
        ([PROMPT, "--method", "noise-optimization+best-of-n", "--scorer", "shapes-pixel"], "pass stage objects"),
    ],
)
def test_generate_rejects_bad_input_before_loading(pipe_dir, tmp_path, capsys, monkeypatch, argv, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before validating the input")

    monkeypatch.setattr(latentalign.pipeline, "load_pipeline", no_loading)
    out = tmp_path / "gen"
    assert main(["generate", *argv, "--out", str(out), "--model", str(pipe_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_generate_missing_model(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", PROMPT, "--out", str(out), "--model", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: no pipeline at")
    assert not out.exists()


def test_check_rendered_image(tmp_path, capsys):
    path = tmp_path / "scene.png"
    render(PROMPT, seed=0).save(path)
    assert main(["check", str(path), PROMPT]) == 0
    assert capsys.readouterr().out.startswith("ok")
    assert main(["check", str(path), "a green circle left of a blue square"]) == 1
    assert "wrong_colour: green circle is red" in capsys.readouterr().out
    assert main(["check", str(path), "a green circle left of a blue square", "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert not verdict["ok"] and verdict["failures"]
    assert main(["check", str(tmp_path / "none.png"), PROMPT]) == 2


def bench(pipe_dir, out, *extra) -> int:
    argv = ["bench", "--suite", "single_object", "--seeds", "2", "--limit-prompts", "2", "--batch", "3"]
    return main([*argv, "--out", str(out), "--model", str(pipe_dir), *extra])


def test_bench_writes_rows_and_resumes(pipe_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench(pipe_dir, out) == 0
    rows = read_rows(out)
    assert len(rows) == 4 and len({(r["prompt"], r["seed"]) for r in rows}) == 4
    assert {r["seed"] for r in rows} == {0, 1} and all(r["suite"] == "single_object" for r in rows)
    assert rows[0]["cost"]["denoiser_evals"] == 4  # 2 steps x 2 (guidance), per image despite batches of 3
    assert all((out / r["image"]).exists() for r in rows)
    for name in ("summary.json", "summary.md", "grid.png"):
        assert (out / name).exists()
    record = json.loads((out / "settings.json").read_text())
    (run,) = record["runs"]
    assert record["settings"] == rows[0]["settings"] and run["packages"]["torch"] and run["machine"]["cpus"]
    summary = json.loads((out / "summary.json").read_text())
    assert [c["suite"] for c in summary["categories"]] == ["single_object", "all"]
    assert summary["categories"][1]["n"] == 4
    assert "| single_object | 4 |" in capsys.readouterr().out

    text = (out / RESULTS).read_text()
    assert bench(pipe_dir, out) == 0
    assert (out / RESULTS).read_text() == text  # nothing to do: no row added

    lines = text.splitlines(keepends=True)
    (out / RESULTS).write_text("".join(lines[:-1]))
    assert bench(pipe_dir, out) == 0
    restored = read_rows(out)
    assert len(restored) == 4 and len({(r["prompt"], r["seed"]) for r in restored}) == 4
    same = ("suite", "prompt", "seed", "settings", "ok", "failures")
    assert [r[k] for k in same for r in restored] == [r[k] for k in same for r in rows]

    (out / RESULTS).write_text("".join(lines[:-1]) + lines[-1][:25])  # an interrupted write
    assert bench(pipe_dir, out) == 0
    repaired = (out / RESULTS).read_text()
    assert repaired.endswith("\n") and len(read_rows(out)) == 4


def test_bench_runs_a_method_and_records_it(pipe_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench(pipe_dir, out, "--method", "best-of-n", "--n", "2", "--scorer", "shapes-latent") == 0
    rows = read_rows(out)
    assert len(rows) == 4
    assert rows[0]["settings"]["method"] == "best-of-n"
    assert rows[0]["settings"]["options"] == {"n": 2, "scorer": "shapes-latent"}
    assert rows[0]["cost"]["denoiser_evals"] == 8  # two candidates of 2 guided steps per image
    # the first candidate of Best-of-N is the plain image's seed: a plain run is another folder's settings
    assert bench(pipe_dir, out) == 2 and "settings" in capsys.readouterr().err
    assert bench(pipe_dir, tmp_path / "x", "--method", "nonsense") == 2
    assert "unknown method" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert bench(pipe_dir, tmp_path / "y", "--n", "2") == 2  # an option without a method that takes it
    assert "--n needs --method" in capsys.readouterr().err


def test_report_draws_the_frontier_of_bench_folders(pipe_dir, tmp_path, capsys):
    plain, best = tmp_path / "plain", tmp_path / "best"
    assert bench(pipe_dir, plain) == 0
    assert bench(pipe_dir, best, "--method", "best-of-n", "--n", "2", "--scorer", "shapes-latent") == 0
    assert main(["report", str(plain), str(best), "--out", str(tmp_path / "report")]) == 0
    table = json.loads((tmp_path / "report" / "frontier.json").read_text())
    (runs,) = table.values()  # one model
    assert [r["label"] for r in runs] == ["plain", "best-of-n n=2 scorer=shapes-latent"]
    assert [r["denoiser_evals"] for r in runs] == [4, 8] and all(r["images"] == 4 for r in runs)
    assert [r["denoiser_equivalents"] for r in runs] == [4, 8]  # no backward passes in sampling methods
    # same-seed pairs against the plain run of the same prompts and seeds
    assert "fixed" not in runs[0] and runs[1]["fixed"] + runs[1]["broken"] <= 4 and 0 <= runs[1]["sign_test_p"] <= 1
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 0
    # a gradient method's backward passes count twice on the compute axis; rows from before they were counted say so
    # (a sampling method's old rows had none to record)
    rows = read_rows(best)
    for name, method, change in (
        ("graded", "noise-optimization", lambda c: c.update(denoiser_backwards=2)),
        ("old", "noise-optimization", lambda c: c.pop("denoiser_backwards")),
        ("old-sampling", "best-of-n", lambda c: c.pop("denoiser_backwards", None)),
    ):
        (tmp_path / name).mkdir()
        for r in rows:
            change(r["cost"])
            r["settings"] = {**r["settings"], "method": method, "options": {"name": name}}
        (tmp_path / name / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    folders = [str(tmp_path / n) for n in ("plain", "graded", "old", "old-sampling")]
    assert main(["report", *folders, "--out", str(tmp_path / "r")]) == 0
    runs = {r["folder"]: r for r in json.loads((tmp_path / "r" / "frontier.json").read_text()).popitem()[1]}
    graded, old, sampling = (runs[f] for f in folders[1:])
    assert (graded["denoiser_backwards"], graded["denoiser_equivalents"]) == (2, 8 + 2 * 2)
    assert old["denoiser_equivalents"] is None and old["label"].endswith("(backward passes not recorded)")
    assert sampling["denoiser_equivalents"] == 8 and "not recorded" not in sampling["label"]
    other = tmp_path / "other"
    assert bench(pipe_dir, other, "--limit-prompts", "1") == 0
    capsys.readouterr()
    assert main(["report", str(plain), str(other), "--out", str(tmp_path / "r2")]) == 2
    assert "other prompts or seeds" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r3")]) == 2


def test_bench_rejudge_checks_saved_images_again(pipe_dir, tmp_path):
    out = tmp_path / "bench"
    assert bench(pipe_dir, out) == 0
    rows = read_rows(out)
    tampered = [dict(r, ok=not r["ok"], failures=["made_up"]) for r in rows]  # as if judged by another checker
    (out / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in tampered))
    assert bench(pipe_dir, out, "--rejudge") == 0
    again = read_rows(out)
    assert [(r["prompt"], r["seed"], r["ok"], r["failures"]) for r in again] == [
        (r["prompt"], r["seed"], r["ok"], r["failures"]) for r in rows
    ]
    assert json.loads((out / "summary.json").read_text())["categories"][1]["correct"] == sum(r["ok"] for r in rows)


def test_bench_refuses_mismatched_settings(pipe_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench(pipe_dir, out, "--limit-prompts", "1") == 0
    text = (out / RESULTS).read_text()
    assert bench(pipe_dir, out, "--steps", "1") == 2
    assert "settings" in capsys.readouterr().err
    assert (out / RESULTS).read_text() == text


def test_bench_rejects_unknown_suite(pipe_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--suite", "dogs", "--seeds", "1", "--out", str(out), "--model", str(pipe_dir)]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert not out.exists()


def test_wilson_interval():
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    """A tiny random NoisyCLIP saved to a folder, for the early-exit commands."""
    from latentalign.scorers import build_shapes_scorer, fit_preview_map, save_scorer

    preview = fit_preview_map(torch.randn(2, 4, 8, 8), torch.rand(2, 3, 32, 32))
    folder = tmp_path_factory.mktemp("scorer") / "noisy"
    save_scorer(build_shapes_scorer("noisy", 0.5, preview_map=preview), folder)
    return folder


def test_generate_with_early_exit_records_candidates(pipe_dir, scorer_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", PROMPT, "--out", str(out), "--model", str(pipe_dir), "--method", "early-exit", "--n", "4"]
    assert main([*argv, "--scorer", str(scorer_dir)]) == 0
    record = json.loads((out / "a_red_circle_left_of_a_blue_square_s0.json").read_text())
    assert record["method"] == "early-exit" and len(record["candidate_scores"]) == 4
    assert record["pruned_at"].count(None) == 2 and record["pruned_at"][record["chosen"]] is None
    # 4 candidates for the first step, then the kept half for the second, two evaluations each (guidance); the
    # scorer reads 4 at the prune and the 2 kept at the end
    assert record["cost"]["denoiser_evals"] == 2 * (4 + 2) and record["cost"]["scorer_calls"] == 4 + 2


def test_generate_with_attention_refinement_records_losses(pipe_dir, tmp_path):
    out = tmp_path / "gen"
    argv = ["generate", PROMPT, "--out", str(out), "--model", str(pipe_dir), "--method", "attention-refinement"]
    assert main([*argv, "--words", "circle,square"]) == 0
    record = json.loads((out / "a_red_circle_left_of_a_blue_square_s0.json").read_text())
    assert record["method"] == "attention-refinement" and record["settings"]["subject_tokens"] == [[3, 8]]
    assert record["attention_losses"] and record["refine_iterations"] >= 0 and "verdict" in record


def bench_argv(pipe_dir, out, *extra):
    return [
        "bench",
        "--suite",
        "single_object",
        "--seeds",
        "2",
        "--limit-prompts",
        "3",
        "--batch",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        "--model",
        str(pipe_dir),
        *extra,
    ]


def test_bench_folder_is_owned_by_one_run(pipe_dir, tmp_path, capsys):
    from latentalign.bench import FolderLock

    out = tmp_path / "b"
    with FolderLock(out):  # another run holds the folder
        assert main(bench_argv(pipe_dir, out)) == 2
        err = capsys.readouterr().err
        assert "in use by another run" in err and f"pid {os.getpid()}" in err and not (out / RESULTS).exists()
    (out / ".lock").write_text(str(os.getpid()))  # a pid left in the file, no lock held: not an owner
    assert main(bench_argv(pipe_dir, out)) == 0 and len(read_rows(out)) == 6


def test_two_bench_runs_on_one_folder_leave_every_row_once(pipe_dir, tmp_path):
    """A second process on a folder another run holds is refused (exit 2) and writes nothing; once the holder lets
    go, a run fills the folder with every row once. The holder is this test (deterministic, unlike racing two)."""
    import subprocess
    import sys

    from latentalign.bench import FolderLock

    out = tmp_path / "together"
    argv = [sys.executable, "-m", "latentalign.cli", *bench_argv(pipe_dir, out)]
    with FolderLock(out):
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and f"in use by another run (pid {os.getpid()})" in refused.stderr
    assert not (out / RESULTS).exists()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = [(r["prompt"], r["seed"]) for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 6


def test_bench_remakes_lost_images_and_refuses_other_splits(pipe_dir, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(bench_argv(pipe_dir, out)) == 0
    rows = read_rows(out)
    (out / rows[0]["image"]).unlink()  # deleted
    data = (out / rows[1]["image"]).read_bytes()
    (out / rows[1]["image"]).write_bytes(data[: len(data) // 2])  # truncated
    damaged = bytearray((out / rows[2]["image"]).read_bytes())
    damaged[36] ^= 0xFF  # a flipped byte in the header chunk: Pillow raises SyntaxError (bad CRC)
    (out / rows[2]["image"]).write_bytes(bytes(damaged))
    assert main(bench_argv(pipe_dir, out, "--rejudge")) == 0
    again = read_rows(out)
    assert len(again) == 6 and sorted((r["prompt"], r["seed"]) for r in again) == sorted(
        (r["prompt"], r["seed"]) for r in rows
    )
    assert all((out / r["image"]).exists() for r in again)
    assert main(bench_argv(pipe_dir, out, "--split", "train")) == 2
    assert "heldout-split rows" in capsys.readouterr().err
    legacy = tmp_path / "legacy"  # rows written before they carried their split: read from their prompts
    legacy.mkdir()
    (legacy / RESULTS).write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n" for r in again)
    )
    assert main(bench_argv(pipe_dir, legacy, "--split", "train")) == 2
    assert "heldout-split rows" in capsys.readouterr().err
    # a later run must plan the folder's suites (it may add some): the summary covers every row of the folder
    argv = bench_argv(pipe_dir, out)
    assert main([*argv[:2], "counting", *argv[3:]]) == 2
    assert "suite(s) ['single_object']" in capsys.readouterr().err
    assert main([*argv[:3], "--suite", "counting", *argv[3:]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {c["suite"] for c in summary["categories"]} == {"single_object", "counting", "all"}
    assert summary["categories"][-1]["n"] == len(read_rows(out)) == 12


def test_bench_killed_mid_run_resumes_with_every_row_once(pipe_dir, tmp_path):
    """SIGKILL a bench in a subprocess once some rows are written; the rerun finishes with each row once."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "latentalign.cli", *bench_argv(pipe_dir, out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / RESULTS).exists() and len((out / RESULTS).read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed_early = proc.returncode == -signal.SIGKILL
    assert (out / ".lock").read_text() == str(proc.pid)  # the killed run's pid is left; its flock died with it
    assert main(bench_argv(pipe_dir, out)) == 0  # the stale lock of the killed run is taken over
    keys = [(r["prompt"], r["seed"]) for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 6
    assert killed_early, "the bench finished before it could be killed: the resume path was not exercised"


def test_a_sweep_config_runs_every_combination_then_the_frontier(pipe_dir, tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(
        f'model = "{pipe_dir}"\nsuite = ["single_object"]\nseeds = 1\nlimit_prompts = 2\nbatch = 3\n'
        '[[run]]\nmethod = "plain"\n[[run]]\nmethod = "best-of-n"\nn = [2, 3]\nscorer = "shapes-latent"\n'
    )
    out = tmp_path / "sweep"
    assert main(["bench", "--config", str(config), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "best-of-n_n2_scorershapes-latent",
        "best-of-n_n3_scorershapes-latent",
        "plain",
    ]
    (runs,) = json.loads((out / "frontier.json").read_text()).values()
    assert [r["denoiser_evals"] for r in runs] == [4, 8, 12]
    assert main(["bench", "--config", str(config), "--out", str(out), "--seeds", "2"]) == 2
    assert "--seeds cannot come with it" in capsys.readouterr().err
    config.write_text('model = "shapes"\nmodle = 1\n')
    assert main(["bench", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "unknown key 'modle'" in capsys.readouterr().err


class ThreadProcesses:
    """Two bench "processes" as threads of this one: accelerate's PartialState interface over a threading barrier."""

    def __init__(self, index: int, barrier):
        self.process_index, self.num_processes, self._barrier = index, 2, barrier

    def wait_for_everyone(self) -> None:
        self._barrier.wait(timeout=300)


def test_a_sharded_bench_writes_the_rows_an_unsharded_one_does(pipe_dir, tmp_path):
    import threading

    from latentalign.bench import run_bench
    from latentalign.pipeline import load_pipeline

    pipe = load_pipeline(pipe_dir)
    args = dict(split="train", limit_prompts=3, batch=2)
    alone = run_bench(pipe, ["single_object"], 2, out=tmp_path / "alone", **args)
    barrier, returned = threading.Barrier(2), {}

    def shard(index):
        processes = ThreadProcesses(index, barrier)
        returned[index] = run_bench(pipe, ["single_object"], 2, out=tmp_path / "sharded", processes=processes, **args)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert returned[1] is None and returned[0]["categories"] == alone["categories"]  # only the main one summarises
    same = ("suite", "prompt", "seed", "ok", "failures", "settings", "image")
    sharded, single = read_rows(tmp_path / "sharded"), read_rows(tmp_path / "alone")
    assert [[r[k] for k in same] for r in sharded] == [[r[k] for k in same] for r in single]  # plan order, once each
    assert not list((tmp_path / "sharded").glob("results.rank*.jsonl"))  # merged into results.jsonl
    for r in single:
        assert (tmp_path / "sharded" / r["image"]).read_bytes() == (tmp_path / "alone" / r["image"]).read_bytes()


def test_an_interrupted_sharded_run_resumes_in_one_process(pipe_dir, tmp_path):
    out = tmp_path / "b"
    assert bench(pipe_dir, out) == 0
    rows = read_rows(out)
    # as a sharded run leaves it when killed: each process's rows in its own file, one with a torn last line
    (out / RESULTS).unlink()
    (out / "results.rank0.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[2])[:30])
    (out / "results.rank1.jsonl").write_text(json.dumps(rows[1]) + "\n")
    assert bench(pipe_dir, out) == 0
    again = read_rows(out)
    assert [(r["prompt"], r["seed"]) for r in again] == [(r["prompt"], r["seed"]) for r in rows]
    assert again[:2] == rows[:2] and not list(out.glob("results.rank*.jsonl"))


def test_a_sharded_bench_that_cannot_start_fails_on_every_process(pipe_dir, tmp_path):
    """A folder of other settings: the main process refuses it, and the other process raises too (no hang)."""
    import threading

    from latentalign.bench import run_bench
    from latentalign.pipeline import load_pipeline

    pipe = load_pipeline(pipe_dir)
    out = tmp_path / "sharded"
    run_bench(pipe, ["single_object"], 1, split="train", limit_prompts=1, out=out)
    barrier, raised = threading.Barrier(2), {}

    def shard(index):
        try:
            run_bench(pipe, ["single_object"], 1, split="train", limit_prompts=1, out=out, guidance=3.0,
                      processes=ThreadProcesses(index, barrier))  # fmt: skip
        except ValueError as e:
            raised[index] = str(e)

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and set(raised) == {0, 1}
    assert "holds results made with" in raised[0] and raised[1] == raised[0]


def test_generate_takes_the_early_exit_schedule(pipe_dir, scorer_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", PROMPT, "--out", str(out), "--model", str(pipe_dir), "--method", "early-exit", "--n", "4"]
    assert main([*argv, "--scorer", str(scorer_dir), "--at", "0.5", "--keep-share", "0.25"]) == 0
    record = json.loads((out / "a_red_circle_left_of_a_blue_square_s0.json").read_text())
    assert record["pruned_at"].count(None) == 1  # one of four kept after the first of the two steps
    assert record["cost"]["denoiser_evals"] == 2 * (4 + 1)
    capsys.readouterr()
    assert main([*argv, "--scorer", str(scorer_dir), "--at", "1.5"]) != 0
    assert "at must be in (0, 1)" in capsys.readouterr().err
