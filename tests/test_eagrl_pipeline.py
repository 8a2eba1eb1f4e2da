"""EAG-RL as a run (issue 17): multi-expert guidance, the permuted test view and cross-dataset splits, task parameters
reaching the SFT / RL / evaluation stages, the attention measures, SFT rows from a file (the MCTS hand-over), and the
smoke pipeline end to end with its robustness contrasts."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DATA_ROOT, run_cli
from ehr_rlvr.eagrl.format import format_eagrl_answer
from ehr_rlvr.eagrl.rewards import get_eagrl_text_alignment_reward
from ehr_rlvr.eagrl.task import EHRPredictionTask, combine_scores

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- multi-expert guidance
def test_combine_scores_mean_rank_max():
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    assert np.allclose(combine_scores([a, b], "mean"), [[0.4, 0.4, 0.2], [0.15, 0.15, 0.7]])
    r = combine_scores([a, b], "rank")  # Borda: feature 1 is 2nd and 1st -> most salient in row 0
    assert r[0].argmax() == 1 and r[1].argmax() == 2 and np.allclose(r.sum(1), 1)
    m = combine_scores([a, b], "max")
    assert np.allclose(m[0], np.array([0.7, 0.6, 0.3]) / 1.6)
    assert np.allclose(combine_scores([a], "mean"), a)  # one expert: its own saliency
    with pytest.raises(ValueError, match="ensemble_combine"):
        combine_scores([a], "median")


def test_ensemble_guidance_rows_and_reward_column():
    "Rows carry the ensemble's saliency next to the single expert's; `guidance` decides which one the rewards read."
    t = EHRPredictionTask(expert="oracle", n_patients=120, n_features=8, n_planted=2, ensemble_experts=["gru", "transformer"],
                          expert_epochs=3, permuted_split=True)
    dd = t.build_splits(seed=0)
    r = dd["test"][0]
    ens = json.loads(r["ensemble_saliency"])
    assert set(ens) == set(json.loads(r["expert_saliency"])) and abs(sum(ens.values()) - 1) < 1e-6
    assert r["ensemble_top"] == sorted(ens, key=lambda f: -ens[f])[:3]
    assert set(t.load_info["ensemble"]) == {"gru", "transformer"} and 0 <= t.load_info["ensemble_planted_recall"] <= 1
    c = format_eagrl_answer([("q", "a")], r["ensemble_top"], 0.7)
    by_ens = get_eagrl_text_alignment_reward(EHRPredictionTask(guidance="ensemble"))
    by_one = get_eagrl_text_alignment_reward(EHRPredictionTask())
    kw = dict(expert_top=[r["expert_top"]], ensemble_top=[r["ensemble_top"]])
    assert by_ens([c], **kw) == [1.0]
    iou = len(set(r["ensemble_top"]) & set(r["expert_top"])) / len(set(r["ensemble_top"]) | set(r["expert_top"]))
    assert by_one([c], **kw) == [pytest.approx(iou)]
    with pytest.raises(ValueError, match="task_params.guidance"):
        EHRPredictionTask(guidance="oracle").build_splits()
    with pytest.raises(ValueError, match="ensemble_experts"):
        EHRPredictionTask(ensemble_experts=["gru"], saliency="x.json").build_splits()


def test_permuted_view_holds_the_test_rows_with_shuffled_feature_lines():
    t = EHRPredictionTask(expert="oracle", n_patients=80, n_features=10, n_planted=2, permuted_split=True, permutation_seed=3)
    dd = t.build_splits(seed=1)
    assert t.view_splits == {"test_permuted": "test"} and dd["test_permuted"]["id"] == dd["test"]["id"]
    moved = 0
    for a, b in zip(dd["test"], dd["test_permuted"]):
        ua, ub = a["prompt"][1]["content"], b["prompt"][1]["content"]
        la, lb = [x for x in ua.splitlines() if x.startswith("- ")], [x for x in ub.splitlines() if x.startswith("- ")]
        assert sorted(la) == sorted(lb) and a["label"] == b["label"]  # same values, same patient, other order
        moved += la != lb
        for f, (s, e) in json.loads(b["feature_spans"]).items():
            assert ub[s:e].startswith(f"- {f}")  # the spans follow the lines
    assert moved >= 0.9 * len(dd["test"])


@pytest.mark.skipif(not ((DATA_ROOT / "tjh").exists() and (DATA_ROOT / "mimic_iv_demo").exists()),
                    reason=f"TJH and the MIMIC-IV demo not found under {DATA_ROOT} (set EHR_RLVR_DATA)")
def test_cross_dataset_split_holds_the_other_dataset():
    "Train on TJH, test on MIMIC-IV mortality: the cross split has every MIMIC admission, none of TJH's ids."
    t = EHRPredictionTask(source="tjh", data=str(DATA_ROOT / "tjh"), expert="none",
                          cross=[{"source": "mimic-iv", "data": str(DATA_ROOT / "mimic_iv_demo")}])
    dd = t.build_splits(seed=0)
    cross = dd["cross_mimic_iv"]
    assert all(i.startswith("mimic-iv:") for i in cross["id"]) and not set(cross["id"]) & set(dd["train"]["id"])
    assert set(cross["outcome"]) == {"mortality"} and len(cross) > 100
    with pytest.raises(ValueError, match=r"task_params.cross\[0\]"):
        EHRPredictionTask(source="tjh", data="x", cross=[{"source": "eicu", "data": "y"}]).build_splits()


@pytest.mark.skipif(not ((DATA_ROOT / "tjh").exists() and (DATA_ROOT / "mimic_iv_demo").exists()),
                    reason=f"TJH and the MIMIC-IV demo not found under {DATA_ROOT} (set EHR_RLVR_DATA)")
def test_max_features_keeps_the_most_measured_features_for_prompts_and_expert():
    "TJH's 74 labs cut to the 16 measured in the most training patients: prompts, the expert and the cross rows agree."
    from ehr_rlvr.ehr.cohorts import load_cohort, split_indices, split_patients
    from ehr_rlvr.eagrl.task import most_measured
    tjh = str(DATA_ROOT / "tjh")
    full = EHRPredictionTask(source="tjh", data=tjh, expert="none").build_splits(seed=0)
    t = EHRPredictionTask(source="tjh", data=tjh, expert="gru", expert_epochs=2, max_features=16,
                          cross=[{"source": "mimic-iv", "data": str(DATA_ROOT / "mimic_iv_demo")}])
    dd = t.build_splits(seed=0)
    coh = load_cohort("tjh", "mortality", tjh)
    train = split_indices(coh, split_patients(coh.patient_ids, coh.y, 0, (0.7, 0.1, 0.2)))["train"]
    keep = most_measured(coh, train, 16)
    counts = coh.mask[train].any(1).sum(0)
    assert len(keep) == 16 and min(counts[coh.feature_names.index(f)] for f in keep) >= np.sort(counts)[-16]
    shown = set()
    for r in dd["train"]:
        shown |= set(json.loads(r["feature_spans"]))
        assert set(r["expert_top"]) <= set(keep)  # the expert was trained on the kept features only
    assert shown <= set(keep) and len(shown) >= 12
    assert {s: len(dd[s]) for s in ("train", "val", "test")} == {s: len(full[s]) for s in ("train", "val", "test")}
    assert set(dd["test"]["id"]) == set(full["test"]["id"])  # the same split
    size = lambda d: np.mean([len(r["prompt"][1]["content"]) for r in d])
    assert size(dd["train"]) < 0.5 * size(full["train"])
    assert max(len(json.loads(r["feature_spans"])) for r in dd["cross_mimic_iv"]) <= 16
    with pytest.raises(ValueError, match="max_features would hide features"):
        EHRPredictionTask(source="tjh", data=tjh, saliency="x.json", max_features=8).build_splits(seed=0)


# ------------------------------------------------------------------------------------------- measures, SFT file
def test_model_measures_are_attention_shares_on_the_first_rows():
    from ehr_rlvr.models import build_tiny_model, train_tokenizer
    t = EHRPredictionTask(expert="oracle", n_patients=40, n_features=6, n_planted=2, measure_rows=3)
    rows = t.build_splits(seed=0)["test"]
    tok = train_tokenizer([r["prompt"][1]["content"] for r in rows] * 3, vocab_size=400)
    model = build_tiny_model(tok, "nano", max_position_embeddings=2048, seed=0).eval()
    comps = [t.sft_completion(r) for r in rows]
    m = t.model_measures(model, tok, rows, comps)
    assert set(m) == {"attention_share_planted", "attention_share_expert_top"}
    v = np.array(m["attention_share_planted"])
    assert len(v) == len(rows) and np.isfinite(v[:3]).all() and np.isnan(v[3:]).all() and ((v[:3] > 0) & (v[:3] < 1)).all()
    # the oracle's top-3 holds the 2 planted features: at least their share
    assert (np.array(m["attention_share_expert_top"])[:3] >= v[:3] - 1e-9).all()
    # a record with no measured feature (TJH has a few) has no spans: NaN, not an error
    from ehr_rlvr.eagrl.rewards import attention_shares
    sh = attention_shares(model, tok, [rows[0]["prompt"]] * 2, comps[:2], ["{}", rows[0]["feature_spans"]],
                          {"planted": [rows[0]["planted"]] * 2})
    assert np.isnan(sh["planted"][0]) and sh["planted"][1] == pytest.approx(v[0], abs=1e-4)  # batching: float32 noise


def test_sft_rows_from_a_file_are_checked_against_the_training_rows(tmp_path):
    from ehr_rlvr.train import sft_dataset_from_file
    t = EHRPredictionTask(expert="oracle", n_patients=40, n_features=6, n_planted=2)
    dd = t.build_splits(seed=0)
    tr, r = dd["train"], dd["train"][0]
    good = {"id": r["id"], "prompt": r["prompt"], "completion": t.sft_completion(r)}
    f = tmp_path / "sft_rows.jsonl"
    f.write_text(json.dumps(good) + "\n\n" + json.dumps(good | {"id": tr[1]["id"], "prompt": tr[1]["prompt"]}) + "\n")
    ds = sft_dataset_from_file(f, tr)
    assert ds["id"] == [r["id"], tr[1]["id"]] and ds[0]["completion"][0]["content"] == good["completion"]
    cases = [(good | {"id": dd["test"][0]["id"]}, "is not a training row"),
             (good | {"prompt": [*r["prompt"][:1], {"role": "user", "content": r["prompt"][1]["content"] + "\nHint: died"}]},
              "differs from the training row"),
             ({k: v for k, v in good.items() if k != "completion"}, "field 'completion'")]
    for bad, msg in cases:
        f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=f"sft_rows.jsonl:2: .*{msg}"):
            sft_dataset_from_file(f, tr)
    f.write_text("{not json\n")
    with pytest.raises(ValueError, match="sft_rows.jsonl:1: not JSON"):
        sft_dataset_from_file(f, tr)


# ------------------------------------------------------------------------------------------- the smoke pipeline
@pytest.fixture(scope="module")
def eagrl_run(eagrl_smoke_run):
    "configs/smoke-eagrl.yaml, run once per session (conftest): read it, never change it (copy it first)."
    return eagrl_smoke_run


def test_eagrl_smoke_pipeline_reports_permutation_contrasts(eagrl_run):
    "MCTS arms, three RL variants from one config (stage task_overrides reach the trainer), the permuted view paired."
    run = eagrl_run
    summary = json.loads((run / "mcts" / "summary.json").read_text())
    assert set(summary["arms"]) == {"guided", "unguided", "multi"} and all("calls_per_accepted" in a for a in summary["arms"].values())
    res = pd.read_csv(run / "report" / "results.csv")
    for regime in ("base", "sft", "rl_outcome", "rl_text", "rl_attention"):
        assert {"auroc", "auprc"} <= set(res.loc[res["regime"] == regime, "metric"])
        assert "auroc" in set(res.loc[res["regime"] == f"{regime}@test_permuted", "metric"])
    cmp = pd.read_csv(run / "report" / "comparisons.csv").set_index("comparison")
    assert {"rl_text - rl_outcome", "rl_attention - rl_outcome", "rl_text@test_permuted - rl_text"} <= set(cmp.index)
    a, b = (pd.read_parquet(run / d / "rl_text" / "predictions.parquet") for d in ("eval", "eval_test_permuted"))
    assert sorted(a["id"]) == sorted(b["id"])
    hist = {k: json.loads((run / "rl" / k / "log_history.json").read_text()) for k in ("rl_outcome", "rl_attention")}
    # the stage's task_overrides reached the trainer: the entropy-aware clip and the attention reward ran in rl_attention only
    assert any("eagrl/clip_high_bound" in h for h in hist["rl_attention"])
    assert not any("eagrl/clip_high_bound" in h for h in hist["rl_outcome"])
    assert any("rewards/eagrl_attention_alignment_reward/mean" in h for h in hist["rl_attention"])
    nb = json.loads((run / "40_rl_attention.ipynb").read_text())
    params = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert '"guidance": "ensemble"' in "".join(params["source"]) and "ensemble_experts" in "".join(params["source"])


@pytest.mark.skipif(not (DATA_ROOT / "tjh").exists(), reason=f"TJH not found under {DATA_ROOT} (set EHR_RLVR_DATA)")
def test_tjh_records_without_measured_features_have_no_sft_target():
    "9 one-visit TJH patients have no measured feature: no target (dropped and counted by sft_dataset), never a crash."
    t = EHRPredictionTask(source="tjh", data=str(DATA_ROOT / "tjh"), expert="none")
    rows = t.build_splits(seed=0)["train"]
    empty = [r for r in rows if not r["abnormal_top"]]
    assert empty and all(t.sft_completion(r) is None for r in empty)
    assert all(t.score(t.sft_completion(r), r["ground_truth"])["correct"] for r in rows if r["abnormal_top"])


def test_sft_stage_trains_on_searched_trajectories(eagrl_run, tmp_path):
    "30_sft with `sft_from` trains on the rows of a JSONL (the 25_mcts hand-over) instead of the task's targets."
    import datasets
    import papermill as pm
    from conftest import ROOT
    import shutil
    run = Path(shutil.copytree(eagrl_run, tmp_path / "e"))  # the session's run is shared: this test writes into a copy
    t = EHRPredictionTask(expert="oracle", n_patients=60, n_features=6, n_planted=2)
    train = datasets.load_from_disk(str(run / "data" / "rows"))["train"]
    picked = [train[i] for i in (0, 3, 5)]
    (run / "mcts").mkdir(exist_ok=True)
    (run / "mcts" / "rows.jsonl").write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "completion": t.sft_completion(r)}) + "\n"
                                                     for r in picked))
    pm.execute_notebook(str(ROOT / "nbs" / "pipeline" / "30_sft.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False,
                        parameters=dict(run_dir=str(run), task="ehr_prediction", out_name="sft_mcts", sft_from="mcts/rows.jsonl",
                                        sft_max_steps=1, sft_batch_size=3, max_length=1024))
    assert (run / "models" / "sft_mcts" / "model.safetensors").exists()
    out = json.loads((tmp_path / "out.ipynb").read_text())
    text = "".join("".join(o["text"]) if isinstance(o["text"], list) else o["text"]
                   for c in out["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "3 SFT rows (all)" in text, text[-500:]
