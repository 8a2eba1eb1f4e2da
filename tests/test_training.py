"""EHRMIND training loop: trainers really train, the same seed gives the same metrics, a killed RLVR run resumes exactly."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from conftest import CLI, ROOT, run_cli
from ehr_rlvr.pipeline import read_record


def _weights(run, name):
    return load_file(str(run / "models" / name / "model.safetensors"))


def _differs(a, b) -> int:
    return sum(not a[k].equal(b[k]) for k in a)


def test_sft_and_grpo_logged_a_loss_and_changed_parameters(smoke_run):
    # The smoke config's nano model never writes a well-formed answer after 2 SFT steps, so with the task reward alone
    # all group advantages are zero and GRPO rightly does nothing; test_rlvr_killed_midway_resumes_bit_identical
    # trains with the tag_count shaping reward and asserts that the weights move.
    base, sft = _weights(smoke_run, "base"), _weights(smoke_run, "sft")
    assert _differs(base, sft) > 0
    sft_log = json.loads((smoke_run / "sft" / "sft" / "log_history.json").read_text())
    assert any("loss" in h or "train_loss" in h for h in sft_log)
    rl_log = json.loads((smoke_run / "rl" / "sft_rlvr" / "log_history.json").read_text())
    steps = [h for h in rl_log if "reward" in h]
    assert len(steps) == 2 and all("rewards/answer_reward/mean" in h and "kl" in h for h in steps)
    cfg = json.loads((smoke_run / "rl" / "sft_rlvr" / "trainer_config.json").read_text())
    assert cfg["beta"] == 0.001 and cfg["loss_type"] == "grpo" and cfg["num_generations"] == 4


def test_same_seed_same_metrics_on_cpu(smoke_run, tmp_path):
    p = run_cli("pipeline", "configs/smoke.yaml", "--run-id", "again", "--runs-root", tmp_path, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    first = pd.read_csv(smoke_run / "report" / "results.csv")
    second = pd.read_csv(tmp_path / "again" / "report" / "results.csv")
    pd.testing.assert_frame_equal(first, second)
    assert _differs(_weights(smoke_run, "sft_rlvr"), _weights(tmp_path / "again", "sft_rlvr")) == 0


def _moving_rl_config(tmp_path):
    "The smoke config with an RL stage whose weights move: tag_count shaping reward, no masking of truncated samples."
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg.update(rl_max_steps=6, rl_save_steps=2, rl_temperature=1.0, reward_funcs=["answer", "format", "correct", "tag_count"],
               reward_weights=[1.0, 0.0, 0.0, 1.0], mask_truncated_completions=False)
    path = tmp_path / "moving.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_rlvr_killed_midway_resumes_bit_identical(smoke_run, tmp_path):
    """SIGKILL of the whole process group mid-RLVR, then a plain rerun: weights, predictions and report are
    bit-identical to an uninterrupted run, and the weights did move (so the comparison can fail)."""
    cfg = _moving_rl_config(tmp_path)
    for name in ("full", "killed"):  # both start from the smoke run's data, base and SFT models
        shutil.copytree(smoke_run, tmp_path / name)
    args = lambda rid: ["pipeline", cfg, "--run-id", rid, "--runs-root", tmp_path, "--no-progress", "--rerun-changed"]
    full = run_cli(*args("full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "10_data: done earlier with the same inputs, skipped" in full.stdout
    line = next(l for l in full.stdout.splitlines() if l.startswith("[") and "40_rlvr_base: running 40_rlvr.ipynb (" in l)
    assert "reward_funcs: [] -> ['answer', 'format', 'correct', 'tag_count']" in line, line

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*CLI, *map(str, args("killed"))], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    ck = killed / "rl" / "sft_rlvr"
    def mid_rl():  # the stage is running and has saved its first checkpoint (the copied smoke run's are gone by then)
        rec = read_record(killed, "40_rlvr_sft")
        return rec is not None and rec["status"] == "running" and list(ck.glob("checkpoint-*/trainer_state.json"))
    while time.time() < deadline and not mid_rl():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_record(killed, "40_rlvr_sft")["status"] == "running"
    assert not (killed / "models" / "sft_rlvr").exists()  # the smoke run's stale model went when its upstream changed

    resumed = run_cli(*args("killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "40_rlvr_base: done earlier with the same inputs, skipped" in resumed.stdout
    assert "40_rlvr_sft: running 40_rlvr.ipynb (interrupted earlier)" in resumed.stdout
    executed = (killed / "40_rlvr_sft.ipynb").read_text()
    assert re.search(r"resume from \S*checkpoint-[246]\b", executed), "the resumed stage must start from its checkpoint"

    full_dir = tmp_path / "full"
    assert _differs(_weights(full_dir, "sft"), _weights(full_dir, "sft_rlvr")) > 0, "RL must move the weights"
    assert _differs(_weights(full_dir, "sft_rlvr"), _weights(killed, "sft_rlvr")) == 0
    steps = lambda run: [h["step"] for h in json.loads((run / "rl" / "sft_rlvr" / "log_history.json").read_text()) if "reward" in h]
    assert steps(killed)[-1] == 6 and max(int(p.name.split("-")[1]) for p in ck.glob("checkpoint-*")) == 6
    for regime in ("rlvr", "sft_rlvr"):
        a, b = (pd.read_parquet(r / "eval" / regime / "predictions.parquet") for r in (full_dir, killed))
        pd.testing.assert_frame_equal(a, b)
    for table in ("results.csv", "comparisons.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(full_dir / "report" / table), pd.read_csv(killed / "report" / table))
