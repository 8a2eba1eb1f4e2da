"""EAG-RL experts: patient-level splits without leakage, train-only preprocessing, a short training run, saliency JSON.

Needs the real data under $EHR_RLVR_DATA (default <repo>/../shared/data); skips cleanly when absent.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ehr_rlvr.ehr.cohorts import Preprocessor, load_cohort, split_indices, split_patients
from ehr_rlvr.tasks import assert_disjoint, load_split_ids as load_splits, save_split_ids as save_splits

DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
TJH, MIMIC = DATA / "tjh", DATA / "mimic_iv_demo"
need_tjh = pytest.mark.skipif(not (TJH / "time_series_375_en.csv").exists(), reason=f"TJH data not found under {TJH} (set EHR_RLVR_DATA)")
need_mimic = pytest.mark.skipif(not (MIMIC / "mimic-iv-clinical-database-demo-2.2").exists(), reason=f"MIMIC-IV demo not found under {MIMIC} (set EHR_RLVR_DATA)")


@pytest.fixture(scope="module")
def tjh():
    return load_cohort("tjh", "mortality", TJH)


def _check_no_leak(cohort, splits):
    assert_disjoint(splits)
    ix = split_indices(cohort, splits)
    persons = {k: {cohort.patient_ids[i] for i in v} for k, v in ix.items()}
    assert not persons["train"] & persons["val"] and not persons["train"] & persons["test"] and not persons["val"] & persons["test"]
    assert sum(len(v) for v in ix.values()) == len(cohort)  # every sample in exactly one split
    return ix


@need_tjh
@pytest.mark.parametrize("seed", [0, 1])
def test_tjh_split_no_patient_in_two_splits(tjh, seed):
    sp = split_patients(tjh.patient_ids, tjh.y, seed=seed)
    ix = _check_no_leak(tjh, sp)
    assert [len(ix[k]) for k in ("train", "val", "test")] == [262, 38, 75]
    assert sp == split_patients(tjh.patient_ids, tjh.y, seed=seed)  # seeded


@need_mimic
@pytest.mark.parametrize("task", ["mortality", "readmission"])
def test_mimic_split_by_subject_not_admission(task):
    c = load_cohort("mimic-iv", task, MIMIC)
    assert len(set(c.patient_ids)) < len(c)  # several admissions per subject: the split unit matters
    sp = split_patients(c.patient_ids, c.y, seed=0, fracs=(0.6, 0.2, 0.2))
    _check_no_leak(c, sp)
    assert set(sum(sp.values(), [])) == set(c.patient_ids)


def test_split_json_roundtrip_and_overlap_guard(tmp_path):
    sp = {"train": ["1", "2"], "val": ["3"], "test": ["4"]}
    p = save_splits(sp, tmp_path / "splits.json", seed=0)
    assert load_splits(p) == sp
    p.write_text(json.dumps({"train": ["1", "2"], "val": ["2"], "test": ["4"]}))
    with pytest.raises(ValueError, match="both train and val"):
        load_splits(p)


@need_tjh
def test_preprocessor_fitted_on_train_only(tjh):
    ix = split_indices(tjh, split_patients(tjh.patient_ids, tjh.y, seed=0))
    base = Preprocessor.fit(tjh, ix["train"]).to_dict()
    leaked = tjh.subset(np.arange(len(tjh)))
    leaked.X[ix["test"]] = leaked.X[ix["test"]] * 10 + 5  # change every test (and val) value
    leaked.X[ix["val"]] = -leaked.X[ix["val"]]
    leaked.static[ix["test"]] += 40
    assert Preprocessor.fit(leaked, ix["train"]).to_dict() == base
    moved = tjh.subset(np.arange(len(tjh)))
    moved.X[ix["train"]] = moved.X[ix["train"]] * 2  # sanity: train values do move the statistics
    assert Preprocessor.fit(moved, ix["train"]).to_dict() != base


@need_tjh
def test_tjh_has_no_readmission():
    from ehr_rlvr.experts import train_expert
    with pytest.raises(ValueError, match="no 'readmission' label"):
        train_expert("tjh", "readmission", "concare", str(TJH))


@need_tjh
def test_train_smoke_and_saliency_schema(tmp_path):
    from ehr_rlvr.experts import load_expert
    from ehr_rlvr.experts import train_expert
    from ehr_rlvr.saliency import export_saliency, load_saliency, validate_saliency
    r = train_expert("tjh", "mortality", "concare", str(TJH), seed=0, out_dir=str(tmp_path / "cc"), epochs=2, n_boot=50)
    for k in ("test_auroc", "test_auprc"):
        lo, hi = r[f"{k}_ci"]
        assert 0 <= lo <= r[k] <= hi <= 1
    assert (r["n_train"], r["n_val"], r["n_test"]) == (262, 38, 75)
    assert r["test_auroc"] > 0.8  # two epochs already separate TJH deaths well
    for p in r["paths"].values():
        assert Path(p).exists(), p
    assert Path(r["paths"]["weights"]).suffix == ".safetensors"
    load_expert(r["out_dir"])
    sal = load_saliency(export_saliency(r["out_dir"]))
    meta = sal["metadata"]
    assert (meta["dataset"], meta["task"], meta["model"], meta["method"]) == ("tjh", "mortality", "concare", "attention")
    assert len(sal["patients"]) == 375
    ranked = sal["patients"]["1"]
    assert len(ranked) == 73 and all(set(e) == {"feature", "score"} for e in ranked)
    assert [e["score"] for e in ranked] == sorted((e["score"] for e in ranked), reverse=True)
    assert not set(meta["splits"]["train"]) & set(meta["splits"]["test"])
    with pytest.raises(ValueError):
        validate_saliency({"metadata": meta, "patients": {"1": [{"feature": "not a lab", "score": 1.0}]}})


@need_mimic
def test_mimic_end_to_end_gru_ig(tmp_path):
    from ehr_rlvr.experts import train_expert
    from ehr_rlvr.saliency import export_saliency, load_saliency
    r = train_expert("mimic-iv", "readmission", "gru", str(MIMIC), seed=0, out_dir=str(tmp_path / "g"), epochs=2, n_boot=50)
    assert r["n_train"] + r["n_val"] + r["n_test"] == 260 and r["pos_test"] > 0
    splits = json.loads(Path(r["paths"]["splits"]).read_text())
    assert splits["unit"] == "subject_id"
    sal = load_saliency(export_saliency(r["out_dir"], top_k=10))
    assert sal["metadata"]["method"] == "ig" and sal["metadata"]["id"] == "hadm_id"
    assert all(len(v) == 10 for v in sal["patients"].values())
