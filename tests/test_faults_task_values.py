"""Task-parameter values are checked before a run folder exists (issue "No silent wrong result", finding 10, task part;
finding 7, the silent default of external scoring).

| case | broken config value | outcome now |
|---|---|---|
| 10 counts | medcalc `n_per_calculator: 0` / `-3` | exit 2 before any stage: `task_params.n_per_calculator must be >= 1`; no run folder |
| 10 ids | medcalc `calculator_ids: [9999]` | exit 2 naming the id and the known ones |
| 10 paths | medcalc `test_source: /nonexistent.csv`, ehr_prediction `data: /nonexistent` | exit 2: `no such file or folder` naming the parameter |
| 10 names | diagnosis `label_task: new_diabetes` | exit 2: unknown label task, the known ones listed |
| 10 MedCalc rows | a gold answer outside its own Lower/Upper Limit in one row of the real dev CSV | `ValueError` naming the file and the Row Number (the real file loads: 525 rows) |
| 7 silent default | `evaluate-completions --task diagnosis` without `--task-param label_task=...` | exit 2: pass `--task-param label_task=VALUE` |
"""
import pytest
import yaml

from conftest import DATA_ROOT, ROOT, run_cli


def _config(tmp_path, base, **task_params):
    cfg = yaml.safe_load((ROOT / "configs" / base).read_text())
    cfg["task_params"] = {**cfg.get("task_params", {}), **task_params}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("base, values, message", [
    ("smoke.yaml", {"n_per_calculator": 0}, "task_params.n_per_calculator must be >= 1, got 0"),
    ("smoke.yaml", {"n_per_calculator": -3}, "task_params.n_per_calculator must be >= 1, got -3"),
    ("smoke.yaml", {"calculator_ids": [9999]}, "task_params.calculator_ids: unknown calculator id(s) [9999]"),
    ("smoke.yaml", {"test_source": "/nonexistent.csv"}, "medcalc: task_params.test_source: no such file or folder: /nonexistent.csv"),
    ("smoke.yaml", {"distractor_rate": 1.5}, "task_params.distractor_rate must lie in [0, 1], got 1.5"),
    ("smoke-diagnosis.yaml", {"label_task": "new_diabetes"}, "task_params.label_task 'new_diabetes' unknown"),
    ("smoke-eagrl.yaml", {"source": "tjh", "data": "/nonexistent"}, "task_params.data: no such file or folder: /nonexistent"),
])
def test_a_bad_task_value_fails_before_the_run_folder_exists(tmp_path, base, values, message):
    runs = tmp_path / "runs"
    p = run_cli("pipeline", _config(tmp_path, base, **values), "--run-id", "bad", "--runs-root", runs, "--no-progress")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert message in p.stderr and "bad.yaml" in p.stderr
    assert not (runs / "bad").exists()


def test_scoring_diagnosis_answers_needs_the_label_task(tmp_path):
    comp = tmp_path / "c.jsonl"
    comp.write_text('{"row": "1:2020-01-01", "completion": "x"}\n')
    p = run_cli("evaluate-completions", "--task", "diagnosis", "--data", tmp_path, "--completions", comp)
    assert p.returncode == 2 and "pass --task-param label_task=VALUE (e.g. 'new_hypertension')" in p.stderr, p.stderr


DEV_CSV = DATA_ROOT / "medcalc_bench" / "test_data_v1.0_dev.csv"


@pytest.mark.skipif(not DEV_CSV.exists(), reason=f"MedCalc dev CSV not found at {DEV_CSV} (set EHR_RLVR_DATA)")
def test_a_gold_outside_its_own_limits_is_refused(tmp_path):
    "Finding 10: a MedCalc row whose gold lies outside its own limits was accepted, and the gold answer then scored wrong."
    import pandas as pd
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    df = pd.read_csv(DEV_CSV, dtype=str, keep_default_na=False)
    i = df.index[pd.to_numeric(df["Upper Limit"], errors="coerce").notna()][3]
    df.loc[i, "Ground Truth Answer"] = str(float(df.loc[i, "Upper Limit"]) + 1)
    bad = tmp_path / "dev.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(ValueError, match=rf"dev.csv: Row Number {df.loc[i, 'Row Number']}: Ground Truth Answer .* lies "
                                          r"outside its own limits"):
        read_medcalc_csv(bad)
    assert len(read_medcalc_csv(DEV_CSV)) == 525  # the real file has no such row
