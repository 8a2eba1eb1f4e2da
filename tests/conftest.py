"""Shared pytest setup: offline hub, the real-data root, and one smoke pipeline run shared by the tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("EHR_RLVR_DATA", ROOT.parent / "shared" / "data"))
CLI = [str(Path(sys.executable).parent / "ehr-rlvr")]  # the installed console script of this environment


def run_cli(*args, cwd=ROOT, timeout=1200) -> subprocess.CompletedProcess:
    "Run `ehr-rlvr ARGS` in a subprocess (the installed entry point's module)."
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    "A full run of configs/smoke.yaml (every stage) into a temporary runs folder; returns its run directory."
    runs = tmp_path_factory.mktemp("runs")
    p = run_cli("pipeline", "configs/smoke.yaml", "--run-id", "smoke", "--runs-root", runs, "--no-progress")
    assert p.returncode == 0, f"smoke pipeline failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return runs / "smoke"


def _smoke_run(tmp_path_factory, config: str, run_id: str) -> Path:
    "Run one smoke config (every stage) into a temporary runs folder; returns its run directory."
    runs = tmp_path_factory.mktemp("runs")
    p = run_cli("pipeline", config, "--run-id", run_id, "--runs-root", runs, "--no-progress")
    assert p.returncode == 0, f"{config} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return runs / run_id


@pytest.fixture(scope="session")
def trials_smoke_run(tmp_path_factory):
    "configs/smoke-trials.yaml run once per session (a label task); returns its run directory."
    return _smoke_run(tmp_path_factory, "configs/smoke-trials.yaml", "t")


@pytest.fixture(scope="session")
def diagnosis_smoke_run(tmp_path_factory):
    "configs/smoke-diagnosis.yaml run once per session (a probability task); returns its run directory."
    return _smoke_run(tmp_path_factory, "configs/smoke-diagnosis.yaml", "d")


@pytest.fixture(scope="session")
def eagrl_smoke_run(tmp_path_factory):
    "configs/smoke-eagrl.yaml run once per session (EAG-RL: MCTS, three RL rewards, a permuted view); returns its run directory."
    return _smoke_run(tmp_path_factory, "configs/smoke-eagrl.yaml", "e")
