"""Cross-task generalization: a mixture run trains on one task alone and on the mixture from one base model, evaluates
every model on every task, and writes the matrix; rewards are routed per sample."""
import json

import pandas as pd

from conftest import run_cli


def test_xtask_pipeline_writes_the_matrix_for_every_model_and_task(tmp_path):
    "Two seeds: each seed's matrix from 55_xtask, then the pooled one (two-level bootstrap) from 70_cross_seed."
    p = run_cli("pipeline", "configs/smoke-xtask.yaml", "--run-id", "x", "--seeds", "0", "1", "--runs-root", tmp_path,
                "--no-progress")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    run = tmp_path / "x" / "seed-0"
    mat = pd.read_csv(run / "report" / "xtask_matrix.csv")
    assert list(mat.columns)[:7] == ["train_task", "eval_task", "regime", "metric", "value", "ci_low", "ci_high"]
    assert set(zip(mat["train_task"], mat["eval_task"])) == {(a, b) for a in ("trials", "mixture")
                                                             for b in ("medcalc", "trials", "diagnosis")}
    assert dict(zip(mat["eval_task"], mat["metric"])) == {"medcalc": "accuracy", "trials": "macro_f1", "diagnosis": "auroc"}
    assert (mat["ci_low"] <= mat["value"] + 1e-12).all() and (mat["value"] <= mat["ci_high"] + 1e-12).all()
    assert (mat["value"] - (mat["model_value"] - mat["base_value"])).abs().max() < 1e-9
    assert (run / "report" / "xtask_matrix.png").stat().st_size > 10_000
    # each task's rows are evaluated alone, by its own verifier and metrics
    for model in ("base", "sft_rlvr_trials", "sft_rlvr_mix"):
        for task in ("medcalc", "trials", "diagnosis"):
            m = json.loads((run / "xtask" / model / task / "metrics.json").read_text())
            assert m["task"] == task
    # the model trained on trials alone saw only trials rows and logged only the trials reward; the mixture, all three
    alone = json.loads((run / "rl" / "sft_rlvr_trials" / "log_history.json").read_text())
    mixed = json.loads((run / "rl" / "sft_rlvr_mix" / "log_history.json").read_text())
    keys = lambda hist: {k for h in hist for k in h if k.startswith("rewards/answer_reward")}
    assert keys(alone) == {"rewards/answer_reward_trials/mean", "rewards/answer_reward_trials/std"}
    assert {f"rewards/answer_reward_{t}/mean" for t in ("medcalc", "trials", "diagnosis")} <= keys(mixed)
    sel = pd.read_csv(run / "sft_data" / "sft_trials_selection.csv")
    assert sel["rows"].sum() >= 1

    pooled = pd.read_csv(tmp_path / "x" / "report" / "xtask_matrix.csv")
    assert (pooled["n_seeds"] == 2).all() and len(pooled) == len(mat)
    one = pd.read_csv(tmp_path / "x" / "seed-1" / "report" / "xtask_matrix.csv")
    both = mat.merge(one, on=["train_task", "eval_task"], suffixes=("_0", "_1")).merge(pooled, on=["train_task", "eval_task"])
    assert ((both["value"] - (both["value_0"] + both["value_1"]) / 2).abs() < 1e-9).all()  # the mean of the seeds' changes
    assert (tmp_path / "x" / "report" / "xtask_matrix.png").exists()
    assert not (tmp_path / "x" / "report" / "results.csv").exists()  # no regime evaluation in a cross-task run
