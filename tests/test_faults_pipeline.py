"""Fault injection in the run machinery: no silent wrong result. Each test breaks ONE thing about a real run (the
configs/smoke.yaml pipeline or its config) and asserts the exact outcome.

| case | what the user does | outcome now |
|---|---|---|
| outputs, not records | after a finished smoke run, overwrite `report/results.csv`, rerun | 60_report reruns ("its output report/results.csv was changed after it ran"); the CSV is the stage's again |
| outputs, not records | delete `models/sft_rlvr/model.safetensors`, rerun | 40_rlvr_sft reruns from scratch ("its output models/sft_rlvr/model.safetensors is missing"), then every stage after it; exit 0 |
| outputs, not records | the same, `--only 60_report` | refused (exit 2) naming 40_rlvr_sft and the missing file |
| paths | a stage's `out_name: /abs/path`, `../../x` or `models/../../x` | refused before the run folder exists, naming config, stage, parameter and value |
| paths | a stage's `notebook:` an absolute path or `../../x` | refused before the run folder exists; the notebook never runs |
| paths | `run_dir` in the config or in a stage's params | refused: set by the runner |
| two runners | two runners started at once on one run folder | one runs the stage; the other exits 2 naming the holder's PID, touching nothing; a third, started while the stage runs, names the stage too |
| late values | a key repeated in the YAML | refused naming the file, the key and both lines; no run folder |
| late values | `requires: tpu`; `seed: -5`; `--seeds 0 -1` | refused at config load naming the field and the allowed values; no run folder |
| Ctrl-C | SIGINT while 10_data runs | one line naming the stage and the exact resume command, exit 130, no traceback, no kernel left; that command resumes |
| closed stdout | `ehr-rlvr stages` whose reader closes (`| head`) | no output on stderr, exit 141 |
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from conftest import CLI, ROOT, run_cli

SMOKE = ROOT / "configs" / "smoke.yaml"


def _pipe(cfg, tmp_path, run_id, *extra):
    return run_cli("pipeline", cfg, "--run-id", run_id, "--runs-root", tmp_path / "runs", "--no-progress", *extra)


def _smoke_text(tmp_path, text: str, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _with_stage(tmp_path, old: str, new: str):
    "configs/smoke.yaml with one stage entry replaced (text, so the rest of the file is the real one)."
    text = SMOKE.read_text()
    assert text.count(old) == 1, old
    return _smoke_text(tmp_path, text.replace(old, new))


# ---- finding 4: resume trusts files, not records ----------------------------------------------------------------
def test_changed_or_missing_output_reruns_its_stage(smoke_run, tmp_path):
    run = tmp_path / "runs" / "r"
    shutil.copytree(smoke_run, run)
    results = (run / "report" / "results.csv").read_text()
    (run / "report" / "results.csv").write_text(results.replace("accuracy", "accurracy", 1))  # a hand edit
    p = _pipe(SMOKE, tmp_path, "r")
    assert p.returncode == 0, p.stderr[-2000:]
    assert ("[9/9] 60_report: running 60_report.ipynb (done earlier, but its output report/results.csv was changed "
            "after it ran) ...") in p.stdout
    assert p.stdout.count("done earlier with the same inputs, skipped") == 8
    assert (run / "report" / "results.csv").read_text() == results

    (run / "models" / "sft_rlvr" / "model.safetensors").unlink()
    p = _pipe(SMOKE, tmp_path, "r", "--only", "60_report")
    assert p.returncode == 2
    assert ("--only 60_report: the earlier stage '40_rlvr_sft' is not done for this config (done earlier, but its "
            "output models/sft_rlvr/model.safetensors is missing)") in p.stderr
    p = _pipe(SMOKE, tmp_path, "r")
    assert p.returncode == 0, p.stderr[-2000:]
    for st in ("10_data", "15_pretrain", "20_pilot", "30_sft", "40_rlvr_base"):
        assert f"{st}: done earlier with the same inputs, skipped" in p.stdout, st
    assert ("[6/9] 40_rlvr_sft: running 40_rlvr.ipynb (done earlier, but its output models/sft_rlvr/model.safetensors "
            "is missing) ...") in p.stdout
    for st in ("50_evaluate", "20_pilot_sft_rlvr", "60_report"):
        assert f"{st}: running" in p.stdout, st
    assert (run / "models" / "sft_rlvr" / "model.safetensors").stat().st_size > 0
    rec = json.loads((run / "stages" / "40_rlvr_sft.json").read_text())
    assert rec["status"] == "done" and rec["files"]["models/sft_rlvr/model.safetensors"][0] == \
        (run / "models" / "sft_rlvr" / "model.safetensors").stat().st_size
    assert sorted(pd.read_csv(run / "report" / "results.csv").query("metric == 'accuracy'")["regime"]) == \
        ["base", "rlvr", "sft", "sft_rlvr"]
    p = _pipe(SMOKE, tmp_path, "r")  # and now everything is what its record says
    assert p.returncode == 0 and p.stdout.count("done earlier with the same inputs, skipped") == 9


# ---- finding 5: outputs stay inside the run folder; notebooks come from the stage folder --------------------------
@pytest.mark.parametrize("bad", ["/tmp/ehr_rlvr_escape", "../../escape", "models/../../escape"])
def test_out_name_outside_the_run_folder_is_refused(tmp_path, bad):
    cfg = _with_stage(tmp_path, "params: {init: sft, out_name: sft_rlvr}", f"params: {{init: sft, out_name: {bad!r}}}")
    p = _pipe(cfg, tmp_path, "esc")
    assert p.returncode == 2
    assert (f"{cfg}: stage '40_rlvr_sft': parameter 'out_name' is {bad!r}, but it names where the stage writes, which "
            "must be inside the run folder") in p.stderr
    assert not (tmp_path / "runs").exists(), "a refused config must not leave a run folder"


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_notebook_outside_the_stage_folder_is_refused(tmp_path, where):
    from ehr_rlvr.pipeline import _toy_stage
    marker = tmp_path / "ran.txt"
    _toy_stage(tmp_path / "evil.ipynb", body=f"Path({str(marker)!r}).write_text('ran')", params="")
    ref = str(tmp_path / "evil") if where == "absolute" else os.path.relpath(tmp_path / "evil", ROOT / "nbs" / "pipeline")
    cfg = _with_stage(tmp_path, "- 60_report", f"- {{name: 60_report, notebook: {ref!r}}}")
    p = _pipe(cfg, tmp_path, "nb")
    assert p.returncode == 2
    assert f"{cfg}: stage '60_report': notebook {ref!r} must be the name of a stage notebook in" in p.stderr
    assert "no folder, no '..', no absolute path" in p.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_run_dir_in_a_config_is_refused(tmp_path):
    cfg = _with_stage(tmp_path, "- 60_report", "- {name: 60_report, params: {run_dir: /tmp/elsewhere}}")
    p = _pipe(cfg, tmp_path, "rd")
    assert p.returncode == 2 and f"{cfg}: stage '60_report': params.run_dir is set by the runner" in p.stderr
    cfg = _smoke_text(tmp_path, SMOKE.read_text() + "run_dir: /tmp/elsewhere\n", "top.yaml")
    p = _pipe(cfg, tmp_path, "rd")
    assert p.returncode == 2 and f"{cfg}: 'run_dir' is set by the runner" in p.stderr
    assert not (tmp_path / "runs").exists()


# ---- finding 6: one runner per run folder, atomically -----------------------------------------------------------
_RUNNER = textwrap.dedent("""
    import sys
    from ehr_rlvr.core import ConfigError
    from ehr_rlvr.pipeline import run_pipeline
    try:
        run_pipeline(sys.argv[1], run_id="r", runs_root=sys.argv[2], nbs=sys.argv[3], progress_bar=False)
    except ConfigError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
""")


def test_two_runners_on_one_run_folder_one_runs_the_other_is_refused(tmp_path):
    from ehr_rlvr.pipeline import _toy_stage, read_record
    ran, release = tmp_path / "ran.txt", tmp_path / "release"
    _toy_stage(tmp_path / "nbs" / "10_toy.ipynb", body=(  # record which runner ran it, then hold the stage open
        f"import os, time\nwith open({str(ran)!r}, 'a') as f: f.write(os.environ['JPY_PARENT_PID'] + '\\n')\n"
        f"t0 = time.time()\nwhile not Path({str(release)!r}).exists() and time.time() - t0 < 300: time.sleep(0.1)\n"
        "(Path(run_dir) / 'out.txt').write_text(str(n_rows))"))
    (tmp_path / "cfg.yaml").write_text("name: toy\nstages: [10_toy]\nn_rows: 5\n")
    args = [sys.executable, "-c", _RUNNER, str(tmp_path / "cfg.yaml"), str(tmp_path / "runs"), str(tmp_path / "nbs")]
    start = lambda: subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [start(), start()]  # started together: both race for the run folder
    try:
        deadline = time.time() + 240
        while all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)  # StopIteration: neither was refused
        winner = next(p for p in procs if p is not loser)
        assert loser.returncode == 2
        err = loser.stderr.read()
        assert f"run folder {tmp_path / 'runs' / 'r'} is in use by another runner, process {winner.pid} (" in err, err
        assert f"Wait for it to finish, or stop process {winner.pid} first" in err
        while not ran.exists() and time.time() < deadline:  # the winner inside its stage now
            time.sleep(0.1)
        third = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert third.returncode == 2
        assert f"is in use by another runner, process {winner.pid} (running stage '10_toy' since" in third.stderr
        release.touch()
        assert winner.wait(timeout=240) == 0, winner.stderr.read()[-2000:]
    finally:
        release.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert ran.read_text() == f"{winner.pid}\n", "exactly one runner ran the stage"
    rd = tmp_path / "runs" / "r"
    assert read_record(rd, "10_toy")["status"] == "done" and (rd / "out.txt").read_text() == "5"
    assert not (rd / "manifests").exists(), "a refused runner must not even archive the manifest"


# ---- finding 10: values refused at config load, before the run folder ---------------------------------------------
def test_a_repeated_yaml_key_is_refused_with_both_lines(tmp_path):
    text = SMOKE.read_text()
    first = text.splitlines().index("sft_max_steps: 2") + 1
    cfg = _smoke_text(tmp_path, text + "sft_max_steps: 50\n")
    p = _pipe(cfg, tmp_path, "dup")
    assert p.returncode == 2
    assert (f"{cfg}: line {len(text.splitlines()) + 1}: key 'sft_max_steps' is repeated in one mapping (first on line "
            f"{first}); YAML would silently keep only the last value. Keep one of them.") in p.stderr
    cfg = _smoke_text(tmp_path, text.replace("  n_per_calculator: 10\n", "  n_per_calculator: 10\n  n_per_calculator: 12\n"), "nested.yaml")
    p = _pipe(cfg, tmp_path, "dup")
    assert p.returncode == 2 and "key 'n_per_calculator' is repeated in one mapping" in p.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("line,extra,message", [
    ("requires: cpu", (), "'requires' must be one of ['cpu', 'gpu'] (got 'tpu')"),
    ("seed: 0", (), "'seed' must be an integer from 0 to 4294967295 (got -5; NumPy and torch refuse negative seeds)"),
    (None, ("--seeds", "0", "-1"), "each of the seeds must be an integer from 0 to 4294967295 (got -1;"),
])
def test_late_values_are_refused_at_config_load(tmp_path, line, extra, message):
    text = SMOKE.read_text()
    if line:
        text = text.replace(f"\n{line}\n", "\n" + {"requires: cpu": "requires: tpu", "seed: 0": "seed: -5"}[line] + "\n")
    cfg = _smoke_text(tmp_path, text)
    p = _pipe(cfg, tmp_path, "late", *extra)
    assert p.returncode == 2 and message in p.stderr and str(cfg) in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


# ---- finding 11: Ctrl-C and a closed stdout -----------------------------------------------------------------------
def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path):
    from ehr_rlvr.pipeline import orphan_kernels, read_record
    text = SMOKE.read_text()
    cfg = _smoke_text(tmp_path, text[:text.index("stages:")] + "stages: [10_data]\n" + text[text.index("task: medcalc"):]
                      .split("model_id:")[0] + "prompt_style: compact\n")
    args = ["pipeline", str(cfg), "--run-id", "c", "--runs-root", str(tmp_path / "runs"), "--no-progress"]
    # a terminal's runner has Ctrl-C's default action; one started by a background job (a CI script's `cmd &`) inherits
    # SIGINT ignored and would never see it, so the child gets the default back, as in a terminal
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "runs" / "c"
    deadline = time.time() + 240
    while ((read_record(run, "10_data") or {}).get("status") != "running" or not orphan_kernels(proc.pid)) \
            and time.time() < deadline:  # the stage is claimed and its kernel is up
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)  # inside the stage
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the runner
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    resume = f"ehr-rlvr pipeline {cfg} --run-id c --runs-root {tmp_path / 'runs'} --no-progress"
    lines = [l for l in err.splitlines() if not l.startswith("[IPKernelApp] WARNING")]  # the kernel's own start-up line
    assert lines == [f"ehr-rlvr pipeline: interrupted during stage 10_data (not marked done: it reruns); run c in {run}. "
                     f"Resume with: {resume}"], err
    assert "Traceback" not in err and "Traceback" not in out
    assert read_record(run, "10_data")["status"] == "running"
    assert orphan_kernels(proc.pid) == [], "the stage's kernel must not outlive the runner"
    p = subprocess.run([*CLI, *shlex.split(resume)[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[1/1] 10_data: running 10_data.ipynb (interrupted earlier) ..." in p.stdout
    assert read_record(run, "10_data")["status"] == "done"


def test_a_closed_stdout_ends_quietly(tmp_path):
    proc = subprocess.Popen([*CLI, "stages"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # a reader gone before the first line, as `| head -n 0`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""
    p = subprocess.run(f"{shlex.quote(CLI[0])} stages | head -n 1", shell=True, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout == "10_data\n" and p.stderr == ""
