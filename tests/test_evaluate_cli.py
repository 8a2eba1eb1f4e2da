"""`ehr-rlvr evaluate`: a run's trained model on another data file gives what the run's own 50_evaluate gave."""
import json
import shutil

import pandas as pd
import yaml

from conftest import ROOT, run_cli
from ehr_rlvr.medcalc.synthetic import generate_notes, save_notes


def test_evaluate_command_equals_the_runs_own_evaluation(tmp_path):
    save_notes(generate_notes([5, 45], 6, seed=7), tmp_path / "test.csv")  # held-out notes as a MedCalc-Bench CSV
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["stages"] = ["10_data", "15_pretrain", "30_sft", "50_evaluate"]
    cfg["task_params"]["test_source"] = str(tmp_path / "test.csv")
    cfg["regimes"] = ["base", "sft"]
    for k in ("max_completion_length", "num_generations", "pilot_k", "pilot_max_new_tokens", "pilot_max_questions_per_unit",
              "prompts_per_step", "rl_max_steps"):  # parameters of the stages left out
        cfg.pop(k)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    p = run_cli("pipeline", tmp_path / "cfg.yaml", "--run-id", "ev", "--runs-root", runs, "--no-progress")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run = runs / "ev"
    shutil.copy(tmp_path / "test.csv", tmp_path / "copy.csv")  # a user's "new" file: the same notes under another name

    p = run_cli("evaluate", "--run", run, "--regime", "sft", "--data", tmp_path / "copy.csv", "--out", tmp_path / "out")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    mine, theirs = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "out", run / "eval" / "sft"))
    assert mine["rows"] == theirs["rows"] and len(mine["rows"]) > 3  # every metric and CI, to the last digit
    assert summary["accuracy"] == next(r["value"] for r in theirs["rows"] if r["metric"] == "accuracy")
    assert summary["n_rows"] == 12 and mine["regime"] == "sft" and mine["split"] == "file:copy.csv"
    a, b = (pd.read_parquet(d / "predictions.parquet") for d in (tmp_path / "out", run / "eval" / "sft"))
    assert a["completion"].tolist() == b["completion"].tolist() and a["correct"].tolist() == b["correct"].tolist()

    # the scoring protocol can change; the run's own files and the data file are never written over
    p = run_cli("evaluate", "--run", run, "--regime", "sft", "--data", tmp_path / "copy.csv", "--out", tmp_path / "out2",
                "--protocol", "medcalc-bench")
    assert p.returncode == 0 and json.loads((tmp_path / "out2" / "metrics.json").read_text())["rows"]
    p = run_cli("evaluate", "--run", run, "--regime", "sft", "--data", tmp_path / "copy.csv", "--out", run / "eval" / "x")
    assert p.returncode == 2 and "inside the run folder" in p.stderr
    p = run_cli("evaluate", "--run", run, "--regime", "rlvr", "--data", tmp_path / "copy.csv", "--out", tmp_path / "o3")
    assert p.returncode == 2 and "'rlvr' not found" in p.stderr
