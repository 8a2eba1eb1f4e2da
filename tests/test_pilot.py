"""20_pilot stage through papermill on a tiny prepared run: failure-mode table, figures, transitions across pilot folders.

The pilot module is task-agnostic: its tables name the knowledge unit `unit` (MedCalc: the calculator id), its display
name `unit_name` and its group `group` (MedCalc: the category)."""
import json
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from conftest import ROOT

STAGE = ROOT / "nbs" / "pipeline" / "20_pilot.ipynb"
COLUMNS = ["unit", "unit_name", "group", "n", "pass_at_1", "pass_at_k", "mode"]
PER_UNIT = "pilot_max_questions_per_unit"  # stage parameter: questions sampled per knowledge unit
RULE_GROUPS = "rule_groups"  # stage parameter: groups the min_correct / max_entropy gates apply to
SMALL = {"task": "medcalc", "pilot_k": 4, "pilot_max_new_tokens": 12, PER_UNIT: 3, "pilot_batch_size": 8}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    "A run dir with 10_data-style rows (MAP + CURB-65 synthetic notes) and an untrained nano model as models/base."
    from ehr_rlvr.medcalc.synthetic import generate_notes
    from ehr_rlvr.models import build_tiny_model, save_model, train_tokenizer
    from ehr_rlvr.tasks import get_task
    run = tmp_path_factory.mktemp("pilot") / "run"
    dd = get_task("medcalc").build_splits(source=generate_notes([5, 45], 6), style="compact", seed=0)
    dd.save_to_disk(str(run / "data" / "rows"))
    tok = train_tokenizer([r["prompt"][-1]["content"] for r in dd["train"]], vocab_size=300)
    save_model(build_tiny_model(tok, "nano"), tok, run / "models" / "base")
    later = run / "pilot_sft_rlvr"  # a constructed later pilot, so one stage run also draws the transitions
    later.mkdir()
    (later / "pilot.json").write_text(json.dumps({"model": "sft_rlvr"}))
    pd.DataFrame({"unit": [5, 45], "unit_name": ["Mean Arterial Pressure (MAP)", "CURB-65 Score for Pneumonia Severity"],
                  "group": ["physical", "risk"], "n": 3, "pass_at_1": [0.2, 0.9], "pass_at_k": [0.8, 1.0],
                  "mode": ["misapplied", "solved"]}).to_csv(later / "failure_modes.csv", index=False)
    return run


def _pilot(run: Path, **params) -> Path:
    out = run.parent / f"20_pilot_{params.get('out_name', 'pilot')}.ipynb"
    pm.execute_notebook(str(STAGE), str(out), parameters={"run_dir": str(run), "seed": 0, **SMALL, **params},
                        progress_bar=False, kernel_name="python3", cwd=str(ROOT))
    return out


def test_stage_declares_the_parameters_configs_use():
    declared = pm.inspect_notebook(str(STAGE))
    assert list(declared)[:2] == ["run_dir", "seed"]
    for p in ("task", "model_id", "pilot_model", "pilot_split", "pilot_k", "pilot_temperature", "pilot_top_p",
              "pilot_max_new_tokens", "pilot_batch_size", PER_UNIT, "out_name",
              "solved_pass1", "hit_pass_k", "min_correct", "max_entropy", RULE_GROUPS):
        assert p in declared, f"20_pilot lacks parameter {p}"
    assert declared["pilot_k"]["default"] == "12" and declared["pilot_split"]["default"] == '"train"'


def test_pilot_writes_failure_modes_and_figures(tiny_run):
    _pilot(tiny_run)
    out = tiny_run / "pilot"
    table = pd.read_csv(out / "failure_modes.csv")
    assert list(table.columns[:7]) == COLUMNS
    assert sorted(table["unit"]) == [5, 45]
    assert set(table["mode"]) <= {"solved", "misapplied", "missing"}
    assert (table["n"] == 3).all() and table["pass_at_1"].between(0, 1).all() and table["pass_at_k"].between(0, 1).all()
    questions = pd.read_csv(out / "questions.csv")
    assert len(questions) == 6 and (questions["n"] == 4).all()
    assert len(pd.read_parquet(out / "samples.parquet")) == 6 * 4
    for fig in ("pass_vs_passk.png", "mode_counts.png"):
        assert (out / fig).stat().st_size > 1000, fig
    meta = json.loads((out / "pilot.json").read_text())
    assert meta["k"] == 4 and meta["model"] == "base" and meta["thresholds"]["min_correct"] == 2
    from ehr_rlvr.pilot import select_units
    assert select_units(table, "all") == [5, 45]


def test_pilot_draws_transitions_across_pilot_folders(tiny_run):
    if not (tiny_run / "pilot" / "failure_modes.csv").exists():
        _pilot(tiny_run)
    tr = pd.read_csv(tiny_run / "pilot" / "transitions.csv")  # with the constructed pilot_sft_rlvr folder of the fixture
    assert list(tr.columns) == ["unit", "unit_name", "group", "base", "sft_rlvr"]
    assert tr.set_index("unit").loc[45, "sft_rlvr"] == "solved"
    assert (tiny_run / "pilot" / "transitions.png").stat().st_size > 1000


def test_pilot_refuses_a_task_without_a_knowledge_unit(tiny_run):
    "Trial matching has no per-calculator knowledge: the stage says so instead of inventing a unit."
    with pytest.raises(pm.PapermillExecutionError, match="declares no knowledge unit"):
        _pilot(tiny_run, task="trials", out_name="pilot_trials")
