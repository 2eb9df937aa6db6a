"""The benchmarks' index stays whole: every result folder is listed with its command, every script it names exists
(or is named as retired), every sweep config is one the harness would run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latentalign.bench import SWEEP_KEYS, sweep_runs
from latentalign.methods.base import compose

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
INDEX = (BENCHMARKS / "README.md").read_text()
RETIRED = {"noise_optimization.py", "noise_projection.py", "attention_refinement.py"}  # the harness does their job
REMOVED = {"one_step_pilot.py"}  # became `latentalign train one-step`; its row names the commit that has it


def test_every_result_folder_is_in_the_index():
    folders = [p.name for p in (BENCHMARKS / "results").iterdir() if p.is_dir() and p.name != "archive"]
    missing = [f for f in folders if f"results/{f}/" not in INDEX and f"results/{f}`" not in INDEX]
    assert not missing, f"result folders missing from benchmarks/README.md: {missing}"


def test_every_archived_folder_is_explained():
    archive = BENCHMARKS / "results" / "archive"
    note = (archive / "README.md").read_text()
    for group in (p for p in archive.iterdir() if p.is_dir()):
        for folder in (p for p in group.iterdir() if p.is_dir()) if group.name == "previous_world" else [group]:
            assert str(folder.relative_to(archive)) in note, f"{folder} is not in results/archive/README.md"


def test_every_script_the_index_names_exists_or_is_retired():
    named = set(re.findall(r"benchmarks/([A-Za-z0-9_]+\.(?:py|sh))", INDEX))
    assert named  # the index names scripts
    missing = sorted(n for n in named - RETIRED - REMOVED if not (BENCHMARKS / n).exists())
    assert not missing, f"benchmarks/README.md names scripts that are gone: {missing}"
    assert not [n for n in RETIRED | REMOVED if (BENCHMARKS / n).exists()]


@pytest.mark.parametrize("config", sorted((BENCHMARKS / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_sweep_config_is_one_the_harness_runs(config):
    data = tomllib.loads(config.read_text())
    assert set(data) <= SWEEP_KEYS
    runs = sweep_runs(data)
    assert runs
    for _, method, options in runs:  # unknown methods and options would be refused before any work
        compose(method, dict(options))
    assert config.name in INDEX, f"{config.name} is not in benchmarks/README.md"
