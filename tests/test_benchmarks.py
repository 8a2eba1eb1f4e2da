"""benchmarks/gpu_grpo.py runs at its tiny CPU shape (so the GPU check cannot rot), its offline installer, and the sharded-save check's CPU mechanics."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_grpo  # noqa: E402


def test_tiny_cpu_benchmark_reports_every_quantity_for_both_settings(tmp_path):
    out = tmp_path / "tiny.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_grpo.py"), "--tiny", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(out.read_text())
    shape, lim = rep["shape"], rep["limits"]
    assert lim["matmul_tflops"] > 0 and lim["mem_bw_tbs"] > 0 and "thread" in lim["device"]
    n_seq = shape["prompts"] * shape["generations"]
    for name in ("defaults", "tuned"):
        r = rep["results"][name]
        assert "error" not in r, r
        # one real GRPO step at the stated shape: every prompt token and (min_new_tokens) every completion token
        assert r["sequences"] == n_seq and r["prompt_tokens"] == n_seq * shape["prompt_tokens"]
        assert r["completion_tokens"] == n_seq * shape["completion_tokens"]
        assert 0 < r["gen_s"] < r["step_s"] and 0 < r["gen_share"] < 1
        assert r["steps_run"] == 2 and r["peak_mem_gb"] > 0
        tokens = r["prompt_tokens"] + r["completion_tokens"]
        assert math.isclose(r["train_tokens_per_s"], tokens / (r["step_s"] - r["gen_s"]), rel_tol=1e-9)
        mfu = r["step_flops"] / r["step_s"] / 1e12 / lim["matmul_tflops"]
        assert 0 < mfu < 1.5, f"{name}: MFU {mfu:.2f} against the measured peak is not physical"
    assert rep["results"]["tuned"]["micro_batch"] > rep["results"]["defaults"]["micro_batch"]
    assert "| generation tokens/s |" in p.stdout and "| MFU, 6·N·tokens / step (vs measured peak) |" in p.stdout


def test_offline_installer_installs_only_what_is_missing(tmp_path):
    (tmp_path / "requirements.txt").write_text("# comment\npackaging>=1\n")
    assert gpu_grpo.install_wheels(tmp_path, tmp_path / "site") == []  # present here: pip is not even called
    (tmp_path / "requirements.txt").write_text("packaging>=1\nno-such-package-ehr==1.0\n")
    with pytest.raises(subprocess.CalledProcessError):  # offline: a wheel that is not in the folder cannot come from anywhere
        gpu_grpo.install_wheels(tmp_path, tmp_path / "site")


def test_wheel_script_targets_the_gpu_machine():
    text = (ROOT / "benchmarks" / "prepare_gpu_wheels.sh").read_text()
    assert "--python-version 3.12" in text and "manylinux_2_28_x86_64" in text and "trl==1.16.0" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "prepare_gpu_wheels.sh")]).returncode == 0
    assert "benchmarks/wheels/" in (ROOT / ".gitignore").read_text().splitlines()


def test_sharded_save_check_runs_its_mechanics_on_two_cpu_processes(tmp_path):
    "benchmarks/gpu_fsdp_save.py --cpu: two gloo processes save through save_policy what one process trains, and it loads."
    out = tmp_path / "save.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_fsdp_save.py"), "--cpu", "--out", str(out)],
                       cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ok"] and r["processes"] == r["num_processes"] == 2 and "MULTI_CPU" in r["distributed_type"]
    assert not r["missing_tensors"] and r["max_diff_vs_one_process"] <= r["tol"] < r["moved"]
    # without a GPU the FSDP configuration is refused up front, not run as something else
    q = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_fsdp_save.py")], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert q.returncode != 0 and "no CUDA GPU visible" in q.stderr
