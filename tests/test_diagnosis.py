"""EHRSHOT-style prediction from MEDS timelines: the labeler CLI on the MIMIC-IV demo, bad MEDS files, no future in any
prompt, the weighted reward, and the pipeline on the task."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA_ROOT, ROOT, run_cli

DEMO_MEDS = DATA_ROOT / "mimic_iv_demo" / "meds_events_with_chartevents" / "mimic_iv_demo_meds_events.parquet"
MIMIC = DATA_ROOT / "mimic_iv_demo" / "mimic-iv-clinical-database-demo-2.2"
need_demo = pytest.mark.skipif(not DEMO_MEDS.exists(), reason=f"MIMIC-IV demo MEDS file not found at {DEMO_MEDS} "
                               "(set EHR_RLVR_DATA to the shared data folder)")


@need_demo
@pytest.mark.parametrize("task", ["new_hypertension", "readmission_30d"])
def test_labels_cli_on_the_mimic_demo(tmp_path, task):
    "`ehr-rlvr diagnosis labels` writes subject_id,prediction_time,label and prints the counts as its last line."
    out = tmp_path / "labels.csv"
    p = run_cli("diagnosis", "labels", "--meds", DEMO_MEDS, "--task", task, "--out", out)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout.strip().splitlines()[-1])
    df = pd.read_csv(out)
    assert list(df.columns) == ["subject_id", "prediction_time", "label"]
    assert len(df) == s["n_positive"] + s["n_negative"] and df["label"].sum() == s["n_positive"]
    dropped = s["n_prior"] + s["n_censored"] + s["n_same_day_admission"] + s["n_death_before"]
    assert s["n_prediction_times"] == 275 == len(df) + dropped  # one per discharge day of the demo's 275 discharges
    assert (pd.to_datetime(df["prediction_time"]).dt.strftime("%H:%M:%S") == "23:59:59").all()
    if task == "readmission_30d":
        assert s["n_positive"] > 0 and s["n_death_before"] > 0
    else:
        assert s["n_prior"] > 0 and s["n_positive"] > 0


def test_labels_cli_names_the_file_and_column_of_a_bad_meds_file(tmp_path):
    "A MEDS file without `time`, or with a non-numeric value, is refused with the file, column and row."
    pd.DataFrame({"subject_id": [1], "code": ["MEDS_BIRTH"], "numeric_value": [np.nan]}).to_parquet(tmp_path / "a.parquet")
    p = run_cli("diagnosis", "labels", "--meds", tmp_path / "a.parquet", "--task", "readmission_30d", "--out", tmp_path / "o.csv")
    assert p.returncode == 2 and "a.parquet: MEDS file lacks column(s) ['time']" in p.stderr
    pd.DataFrame({"subject_id": [1, 2], "time": pd.to_datetime(["2100-01-01", "2100-01-02"]), "code": ["X", "Y"],
                  "value": ["1.0", "n/a"]}).to_parquet(tmp_path / "b.parquet")
    p = run_cli("diagnosis", "labels", "--meds", tmp_path / "b.parquet", "--task", "readmission_30d", "--out", tmp_path / "o.csv")
    assert p.returncode == 2 and "b.parquet: column 'numeric_value' row 1: not a number" in p.stderr
    assert not (tmp_path / "o.csv").exists()


@need_demo
def test_no_prompt_reads_past_its_prediction_time():
    "Every demo prompt is the same whether or not the events after its prediction time exist."
    from ehr_rlvr.diagnosis.labels import label_task
    from ehr_rlvr.diagnosis.meds import read_meds
    from ehr_rlvr.diagnosis.timeline import mimic_codebook, timeline_text
    ev = read_meds(DEMO_MEDS)
    book = mimic_codebook(MIMIC) if MIMIC.exists() else None
    labels = pd.concat([label_task(ev, t)[0] for t in ("readmission_30d", "new_hypertension")]).drop_duplicates(
        ["subject_id", "prediction_time"])
    by = dict(tuple(ev.groupby("subject_id", observed=True)))
    checked = 0
    for r in labels.itertuples(index=False):
        sub = by[r.subject_id]
        past = sub[sub["time"].isna() | (sub["time"] <= r.prediction_time)]
        assert len(past) < len(sub) or r.label == 0  # a positive label always has a future
        assert timeline_text(sub, r.prediction_time, book, 400) == timeline_text(past, r.prediction_time, book, 400)
        checked += 1
    assert checked > 200


def test_a_planted_future_event_never_shows():
    "A diagnosis dated one second after the prediction time is invisible; one second before, it shows."
    from ehr_rlvr.diagnosis.synthetic import generate_meds, synthetic_codebook
    from ehr_rlvr.diagnosis.timeline import timeline_text
    ev, _ = generate_meds(3, seed=5)
    sub = ev[ev.subject_id == 1]
    t = sub.loc[sub["code"].astype(str).str.startswith("HOSPITAL_DISCHARGE"), "time"].iloc[0].normalize() + pd.Timedelta("23:59:59")
    book = synthetic_codebook()
    book.names["ICD10//Q999"] = "Marker of the future"
    for dt, seen in ((pd.Timedelta(seconds=1), False), (pd.Timedelta(seconds=-1), True)):
        marker = pd.DataFrame({"subject_id": [1], "time": [t + dt], "code": ["DIAGNOSIS//ICD//10//Q999"], "numeric_value": [np.nan]})
        text = timeline_text(pd.concat([sub, marker]).sort_values("time"), t, book, 2000)
        assert ("Marker of the future" in text) is seen


def test_answer_reward_is_weighted_by_inverse_class_frequency():
    "The TRL `answer` reward of a correct answer is scaled by its class weight; wrong and malformed are not."
    from ehr_rlvr.diagnosis.task import DiagnosisTask, format_diagnosis_answer
    t = DiagnosisTask(n_subjects=150, max_times_per_subject=1)
    dd = t.build_splits(seed=0)
    w = t.load_info["class_weights"]
    y = np.array(dd["train"]["label"])
    assert w[1] == pytest.approx(len(y) / (2 * (y == 1).sum())) and w[1] > 1 > w[0]
    reward = t.reward_funcs(["answer"], correct=1.1, wrong=0.1, malformed=-2.0)[0]
    rows = [dd["train"][int(np.flatnonzero(y == c)[0])] for c in (0, 1)]
    comps = [format_diagnosis_answer("x", r["label"], None) for r in rows] + [format_diagnosis_answer("x", 1 - rows[0]["label"]), "no tags"]
    got = reward(comps, ground_truth=[r["ground_truth"] for r in rows] + [rows[0]["ground_truth"]] * 2)
    assert got == pytest.approx([1.1 * w[0], 1.1 * w[1], 0.1, -2.0])
    unweighted = DiagnosisTask(n_subjects=150, max_times_per_subject=1, class_weighting="none")
    unweighted.build_splits(seed=0)
    assert unweighted.load_info["class_weights"] == {0: 1.0, 1: 1.0}


def test_diagnosis_pipeline_reports_auroc_auprc_and_balanced_metrics(diagnosis_smoke_run):
    "The stages run the third task unchanged; every metric in results.csv can be recomputed from the predictions."
    run = diagnosis_smoke_run  # configs/smoke-diagnosis.yaml, run once per session (conftest)
    res = pd.read_csv(run / "report" / "results.csv")
    for regime in ("base", "sft", "sft_rlvr"):
        got = set(res.loc[res["regime"] == regime, "metric"])
        assert {"auroc", "auprc", "accuracy", "balanced_accuracy", "macro_f1", "brier", "format_valid_rate"} <= got
    from ehr_rlvr.metrics import compute_metrics, row_arrays
    pred = pd.read_parquet(run / "eval" / "sft" / "predictions.parquet")
    assert {"gold", "pred", "prob", "correct"} <= set(pred.columns)
    m = compute_metrics("probability", row_arrays(pred, "probability"))
    top = res[res["regime"] == "sft"].set_index("metric")["value"]
    for k in ("auroc", "balanced_accuracy", "macro_f1"):
        assert m[k] == pytest.approx(top[k], nan_ok=True)
    assert json.loads((run / "eval" / "sft" / "metrics.json").read_text())["main_metric"] == "auroc"
    labels = pd.read_csv(run / "data" / "labels.csv")
    assert set(labels["label"]) <= {0, 1} and len(labels) == sum(json.loads((run / "data" / "summary.json").read_text())["rows"].values())


@need_demo
def test_the_gpu_recipe_data_builds_from_the_mimic_demo():
    "configs/gpu-diagnosis-qwen2.5-1.5b.yaml's task and data settings give subject-disjoint splits of real prompts."
    import yaml
    from ehr_rlvr.tasks import get_task
    cfg = yaml.safe_load((ROOT / "configs" / "gpu-diagnosis-qwen2.5-1.5b.yaml").read_text())
    params = {**cfg["task_params"], "source": str(DEMO_MEDS), "codebook": str(MIMIC) if MIMIC.exists() else ""}
    t = get_task(cfg["task"], **params)
    dd = t.build_splits(seed=0, style=cfg["prompt_style"], val_frac=cfg["val_frac"], test_frac=cfg["test_frac"])
    assert sum(len(dd[s]) for s in dd) == t.load_info["n_positive"] + t.load_info["n_negative"] == 227
    groups = [set(dd[s]["group_id"]) for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    text = dd["test"][0]["prompt"][-1]["content"]
    assert "readmitted" in text and "Patient:" in text and t.sft_completion(dd["test"][0]) is None  # no gold rationale


@need_demo
def test_evaluate_completions_scores_diagnosis_answers_on_the_mimic_demo(tmp_path):
    "External completions keyed `<subject>:<prediction time>` are scored by the task's verifier; AUROC from the probabilities."
    from ehr_rlvr.diagnosis.task import DiagnosisTask, format_diagnosis_answer
    rows = DiagnosisTask(label_task="readmission_30d").load_rows(DEMO_MEDS)
    rng = np.random.default_rng(0)
    lines, ranked = [], []  # ranked: the score each row is ranked by (a missing or malformed answer: its worst rank)
    for i, r in enumerate(rows):
        worst = -1.0 if r["label"] == 1 else 2.0
        if i % 10 == 9:
            ranked.append(worst)
            continue  # a missing answer: counted, scored as malformed
        if i % 10 == 8:
            lines.append({"row": r["id"], "completion": '<answer>{"prediction": "Yes"}</answer>'})  # malformed
            ranked.append(worst)
            continue
        p = float(np.clip(0.5 * r["label"] + 0.5 * rng.random(), 0, 1))  # informative probabilities
        lines.append({"row": r["id"], "completion": format_diagnosis_answer("x", int(p >= 0.5), p)})
        ranked.append(round(p, 2))  # the answer carries two decimals
    comp = tmp_path / "c.jsonl"
    comp.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    p = run_cli("evaluate-completions", "--task", "diagnosis", "--data", DEMO_MEDS, "--completions", comp,
                "--task-param", "label_task=readmission_30d", "--predictions", tmp_path / "v.jsonl")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["n_rows"] == len(rows) == 227 and res["main_metric"] == "auroc"
    from sklearn.metrics import roc_auc_score
    assert res["auroc"] == pytest.approx(roc_auc_score([r["label"] for r in rows], ranked), abs=1e-9)
    assert 0.5 < res["auroc"] < 0.8 and res["format_valid_rate"] == pytest.approx(0.8, abs=0.02)
    v = pd.read_json(tmp_path / "v.jsonl", lines=True)
    assert (v.loc[v["reason"] == "missing", "format_ok"] == False).all() and (v["reason"] == "missing").sum() == 22
    bad = run_cli("evaluate-completions", "--task", "diagnosis", "--data", DEMO_MEDS, "--completions", comp,
                  "--task-param", "label_task=new_gout")
    assert bad.returncode == 2 and "new_gout" in bad.stderr
