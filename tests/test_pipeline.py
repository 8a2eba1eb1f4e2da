"""The papermill runner on the real stages: refuses unknown parameters, reports failing stages, resumes, smoke run."""
import json
import shutil

import pandas as pd
import pytest

from conftest import ROOT, run_cli
from ehr_rlvr.core import ConfigError, load_config
from ehr_rlvr.pipeline import pipeline_dir, resolve_stages


def test_runner_refuses_a_parameter_no_stage_declares(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("stages: [10_data]\nn_per_calculater: 5\n")
    with pytest.raises(ConfigError, match=r"\['n_per_calculater'\] are declared by none"):
        resolve_stages(load_config(cfg), pipeline_dir(ROOT), tmp_path / "run")
    p = run_cli("pipeline", cfg, "--runs-root", tmp_path / "runs")
    assert p.returncode == 2 and "n_per_calculater" in p.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ipynb")), "nothing may run"


def test_runner_refuses_a_stage_parameter_the_notebook_lacks(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stages: [{name: 30_sft, params: {lr: 0.1}}]\n")
    with pytest.raises(ConfigError, match=r"does not declare: \['lr'\]"):
        resolve_stages(load_config(cfg), pipeline_dir(ROOT), tmp_path / "run")


def test_failing_stage_is_reported_with_cell_and_notebook(tmp_path):
    cfg = tmp_path / "fail.yaml"
    bad = tmp_path / "not_medcalc.csv"  # exists (the config check passes), but is not a MedCalc CSV: the stage fails
    bad.write_text("a,b\n1,2\n")
    cfg.write_text(f"name: fail\nstages: [10_data]\ntask: medcalc\ntask_params: {{source: {bad}}}\n")
    p = run_cli("pipeline", cfg, "--run-id", "f1", "--runs-root", tmp_path / "runs", "--no-progress")
    assert p.returncode != 0
    assert "Stage '10_data' failed in cell" in p.stderr
    executed = tmp_path / "runs" / "f1" / "10_data.ipynb"
    assert str(executed) in p.stderr and executed.exists()
    assert str(bad) in p.stderr


def test_smoke_run_writes_manifest_notebooks_and_results(smoke_run):
    man = json.loads((smoke_run / "manifest.json").read_text())
    assert {"config", "git", "packages", "data", "seed", "host"} <= set(man)
    assert man["git"]["sha"] and man["packages"]["trl"] == "1.16.0" and man["seed"] == 0
    for st in ("10_data", "15_pretrain", "20_pilot", "30_sft", "40_rlvr_base", "40_rlvr_sft", "50_evaluate",
               "20_pilot_sft_rlvr", "60_report"):
        assert (smoke_run / f"{st}.ipynb").exists(), st
        assert json.loads((smoke_run / "stages" / f"{st}.json").read_text())["status"] == "done"
    res = pd.read_csv(smoke_run / "report" / "results.csv")
    assert list(res.columns) == ["task", "regime", "metric", "value", "ci_low", "ci_high", "n"]
    acc = res[res["metric"] == "accuracy"]
    assert sorted(acc["regime"]) == ["base", "rlvr", "sft", "sft_rlvr"]
    assert ((acc["ci_low"] <= acc["value"]) & (acc["value"] <= acc["ci_high"])).all()
    assert (smoke_run / "report" / "regimes.png").stat().st_size > 1000
    # paired differences agree with the per-regime accuracies they are computed from
    cmp = pd.read_csv(smoke_run / "report" / "comparisons.csv").set_index("comparison")
    assert list(cmp.index) == ["sft - base", "sft_rlvr - sft", "rlvr - base", "sft_rlvr - base"]
    a = acc.set_index("regime")["value"]
    for comp, row in cmp.iterrows():
        assert abs(row["diff"] - (a[row["regime"]] - a[row["baseline"]])) < 1e-9, comp
        assert row["ci_low"] <= row["diff"] <= row["ci_high"] and row["n"] == acc["n"].iloc[0]
    assert list((smoke_run / "rl" / "sft_rlvr").rglob("events.out.tfevents*")), "TensorBoard events expected"
    modes = pd.read_csv(smoke_run / "pilot" / "failure_modes.csv")
    assert list(modes.columns[:7]) == ["unit", "unit_name", "group", "n", "pass_at_1", "pass_at_k", "mode"]
    assert set(modes["mode"]) <= {"solved", "misapplied", "missing"}
    assert (smoke_run / "report" / "pilot_pass_vs_passk.png").exists()


def test_rerun_resumes_a_half_done_run(smoke_run):
    # Forget the last two stages, as if the run had stopped after RLVR: a rerun must skip the finished stages
    # and redo only these two, reproducing the same results.
    before = pd.read_csv(smoke_run / "report" / "results.csv")
    for st in ("50_evaluate", "20_pilot_sft_rlvr", "60_report"):
        (smoke_run / "stages" / f"{st}.json").unlink()
    (smoke_run / "report" / "results.csv").unlink()
    p = run_cli("pipeline", "configs/smoke.yaml", "--run-id", "smoke", "--runs-root", smoke_run.parent, "--no-progress")
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    for st in ("10_data", "15_pretrain", "20_pilot", "30_sft", "40_rlvr_base", "40_rlvr_sft"):
        assert f"{st}: done earlier with the same inputs, skipped" in out
    assert "50_evaluate: running" in out and "60_report: running" in out
    pd.testing.assert_frame_equal(before, pd.read_csv(smoke_run / "report" / "results.csv"))


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_resolves_against_the_stages(config, tmp_path):
    from ehr_rlvr.pipeline import load_run_config
    if "../shared/data" in (ROOT / "configs" / config).read_text() and not (ROOT.parent / "shared" / "data").exists():
        pytest.skip(f"{config} reads ../shared/data, absent here: the config check refuses a missing input path")
    cfg = load_run_config(ROOT / "configs" / config, root=ROOT)  # the runner's loader: `launcher:` keys checked too
    stages = resolve_stages(cfg, pipeline_dir(ROOT), tmp_path / "run")
    assert stages and all(s["path"].exists() for s in stages)
    if cfg["requires"] == "gpu":
        assert cfg["params"]["model_id"] != "tiny" and "15_pretrain" not in [s["notebook"] for s in stages]


def test_two_seed_run_writes_the_cross_seed_report(smoke_run, tmp_path):
    # seed 0 is the session's smoke run, copied in: its stages are recognised as done (same config, seed and code),
    # so only seed 1 trains; then the cross-seed report
    top = tmp_path / "seeds"
    shutil.copytree(smoke_run, top / "seed-0")
    p = run_cli("pipeline", "configs/smoke.yaml", "--seeds", "0", "1", "--run-id", "seeds", "--runs-root", tmp_path,
                "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("done earlier with the same inputs, skipped") == 9  # all of seed 0
    assert "70_cross_seed: running" in p.stdout
    assert json.loads((top / "seed-1" / "manifest.json").read_text())["seed"] == 1
    res = pd.read_csv(top / "report" / "results.csv")
    assert list(res.columns) == ["task", "regime", "metric", "value", "ci_low", "ci_high", "n", "n_seeds"]
    acc = res[res["metric"] == "accuracy"].set_index("regime")
    assert sorted(acc.index) == ["base", "rlvr", "sft", "sft_rlvr"] and (acc["n_seeds"] == 2).all()
    per_seed = pd.read_csv(top / "report" / "per_seed.csv").query("metric == 'accuracy'")
    for regime, row in acc.iterrows():  # the value is the mean of the seeds' own accuracies
        own = []
        for s in (0, 1):
            r = pd.read_csv(top / f"seed-{s}" / "report" / "results.csv")
            own.append(r.loc[(r["metric"] == "accuracy") & (r["regime"] == regime), "value"].item())
        assert row["value"] == pytest.approx(sum(own) / 2, abs=1e-12)
        assert sorted(per_seed.loc[per_seed["regime"] == regime, "value"]) == pytest.approx(sorted(own), abs=1e-12)
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    cmp = pd.read_csv(top / "report" / "comparisons.csv")
    assert list(cmp.columns) == ["task", "comparison", "diff", "ci_low", "ci_high", "seeds_positive", "n_seeds"]
    assert list(cmp["comparison"]) == ["sft - base", "sft_rlvr - sft", "rlvr - base", "sft_rlvr - base"]
    assert (cmp["seeds_positive"].between(0, 2)).all() and (cmp["n_seeds"] == 2).all()
    assert (top / "report" / "seeds.png").stat().st_size > 5000 and (top / "70_cross_seed.ipynb").exists()
    # a rerun finds everything done, the report included
    again = run_cli("pipeline", "configs/smoke.yaml", "--seeds", "0", "1", "--run-id", "seeds", "--runs-root", tmp_path,
                    "--no-progress")
    assert again.returncode == 0 and "running" not in again.stdout
