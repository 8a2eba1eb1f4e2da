"The explore notebook as a user runs it: `ehr-rlvr explore` (papermill) on a smoke run of every task kind, a partial run, no run."
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import ROOT, run_cli

NOTEBOOK = ROOT / "nbs" / "explore_run.ipynb"
KINDS = {"medcalc": "smoke_run", "trials": "trials_smoke_run", "diagnosis": "diagnosis_smoke_run", "eagrl": "eagrl_smoke_run"}


def outputs(path: Path) -> list[dict]:
    "Every output of an executed notebook's code cells."
    nb = nbformat.read(str(path), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def text_of(outs: list[dict]) -> str:
    "The stream text and the plain/HTML renderings of the outputs, joined."
    parts = []
    for o in outs:
        parts.append(o.get("text", "") if o.get("output_type") == "stream" else "")
        parts += [str(o.get("data", {}).get(k, "")) for k in ("text/plain", "text/html")]
    return "\n".join(parts)


def assert_shows_run(path: Path) -> str:
    "No error output, the results table (an HTML table with CI columns), at least one figure; returns the outputs' text."
    outs = outputs(path)
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outs if o.get("output_type") == "error"]
    assert not errors, errors
    assert not any(o.get("name") == "stderr" and "Traceback" in o.get("text", "") for o in outs)
    html = [str(o["data"]["text/html"]) for o in outs if "text/html" in o.get("data", {})]
    assert any("ci_low" in h and "ci_high" in h and "<table" in h for h in html), "no results table with CIs"
    assert sum("image/png" in o.get("data", {}) for o in outs) >= 1, "no figure"
    return text_of(outs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_explore_notebook_on_a_smoke_run_of_each_task_kind(kind, request, tmp_path):
    "`ehr-rlvr explore RUN --out X` executes the notebook on the run: tables, figures, RL curves, rows side by side, no error."
    run = request.getfixturevalue(KINDS[kind])
    out = tmp_path / "explore.ipynb"  # not into the shared session run, which other tests read
    p = run_cli("explore", run, "--out", out, "--no-progress", timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(out.resolve())
    text = assert_shows_run(out)
    assert "not available" not in text and "missing:" not in text, text[-3000:]
    for shown in ("reason", "format_ok", "gold"):  # one row side by side, with the verifier's verdict
        assert shown in text
    if kind == "eagrl":  # the expert's per-feature saliency for one patient
        assert "expert" in text and "planted" in text


def test_explore_writes_into_the_run_folder_by_default(smoke_run, tmp_path):
    "Without --out the executed copy lands in RUN/explore.ipynb (a copy of the run's tables, so the shared run stays untouched)."
    run = tmp_path / "copy"
    heavy = {"models", "pretrain", "sft", "sft_data"}  # checkpoints: the notebook reads none of them
    shutil.copytree(smoke_run, run, ignore=lambda d, names: [n for n in names if Path(d) == smoke_run and n in heavy])
    p = run_cli("explore", run, "--no-progress", timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(run / "explore.ipynb")
    assert_shows_run(run / "explore.ipynb")


def test_explore_names_what_a_partial_run_lacks(smoke_run, tmp_path):
    "A run with evaluations only: the tables are gathered from eval/, and each missing piece is named, with no error cell."
    run = tmp_path / "partial"
    shutil.copytree(smoke_run / "eval", run / "eval")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"run_dir": str(run)}, kernel_name="python3",
                        cwd=str(NOTEBOOK.parent), progress_bar=False)
    outs = outputs(out)
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = text_of(outs)
    assert "report/results.csv: missing (written by the 60_report stage)" in text
    assert "no figures:" in text and "no RL logs in" in text
    assert "ci_low" in text  # the results table, gathered from eval/*/metrics.json


def test_explore_without_a_run_says_how_to_choose_one(tmp_path):
    "The default (`run_dir = ''`, as nbdev_test runs it) prints how to point the notebook at a run and finishes."
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(NOTEBOOK.parent), progress_bar=False)
    outs = outputs(out)
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert "ehr-rlvr explore" in text_of(outs) and "run_dir" in text_of(outs)
    assert set(pm.inspect_notebook(str(NOTEBOOK))) == {"run_dir", "row_id", "seed"}
