"""ehr_rlvr.ehr.serialize and ehr_rlvr.ehr.synthetic: exact feature-line spans on real and synthetic cohorts, seeded
permutation, the planted-feature cohort and an expert's recall of its planted features, and the path serialize ->
chat prompt -> feature_attention that the attention reward will take."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ehr_rlvr.ehr.cohorts import Cohort, load_mimic, load_tjh
from ehr_rlvr.ehr.serialize import MIMIC_UNITS, serialize_cohort, serialize_patient
from ehr_rlvr.ehr.synthetic import (cohort_saliency, cohort_saliency_payload, planted_recall, synthetic_cohort,
                                    train_cohort_expert)

torch.set_num_threads(1)
DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LINE = re.compile(r"^- (?P<name>.+?)(?: \((?:Unit: [^)]*?\.)? ?(?:Reference range: [^)]*\.)?\))?: \[(?P<vals>[^\]]*)\]$")


def check_exact(cohort: Cohort, ser):
    "Every span is its feature's line, the lines are the text's lines after the header, and the values are the data."
    col = {f: j for j, f in enumerate(cohort.feature_names)}
    for r in ser:
        i = cohort.ids.index(r.id)
        L = int(cohort.lengths[i])
        body = r.text[r.block[0]:r.block[1]].split("\n")[3:]
        assert [r.text[a:b] for a, b in r.spans.values()] == body
        for f, (a, b) in r.spans.items():
            m = LINE.match(r.text[a:b])
            assert m and m["name"] == f, r.text[a:b]
            vals = m["vals"].split(", ")
            assert len(vals) == L
            x = cohort.X[i, :L, col[f]]
            assert [v == "nan" for v in vals] == np.isnan(x).tolist()
            np.testing.assert_allclose([float(v) for v in vals if v != "nan"], x[~np.isnan(x)], atol=0.0051, rtol=1e-6)


def test_synthetic_spans_and_permutation():
    syn = synthetic_cohort(n_patients=60, seed=3)
    plain = serialize_cohort(syn)
    perm = serialize_cohort(syn, order_seed=11, prefix="Task: predict mortality.\n\n", suffix="\n\nAnswer:")
    check_exact(syn, plain)
    check_exact(syn, perm)
    for a, b in zip(plain, perm):
        assert sorted(a.line(f) for f in a.features) == sorted(b.line(f) for f in b.features)
        assert b.text.startswith("Task: predict mortality.\n\nThe patient is") and b.text.endswith("\n\nAnswer:")
    assert sum(a.features != b.features for a, b in zip(plain, perm)) == len(syn)  # 16! orders: never the identity here
    again = serialize_cohort(syn, order_seed=11, prefix="Task: predict mortality.\n\n", suffix="\n\nAnswer:")
    assert [r.text for r in again] == [r.text for r in perm]
    # the permutation is that of the patient, not of its position in the batch
    assert serialize_patient(syn, 17, order_seed=11).features == perm[17].features


@pytest.mark.skipif(not (DATA / "tjh" / "time_series_375_en.csv").exists(), reason=f"TJH data not found under {DATA}")
def test_tjh_spans_exact():
    tjh = load_tjh(DATA / "tjh")
    ser = serialize_cohort(tjh, range(0, len(tjh), 15), order_seed=0)
    check_exact(tjh, ser)
    some = serialize_cohort(tjh, range(0, len(tjh), 15), skip_unmeasured=True)
    for r in some:
        i = tjh.ids.index(r.id)
        measured = {f for j, f in enumerate(tjh.feature_names) if np.isfinite(tjh.X[i, :tjh.lengths[i], j]).any()}
        assert set(r.features) == measured
    assert ser[0].text.startswith("The patient is a male, aged 73 years.\nThe patient had 5 visits, at days 1, 7, 11, 16, 17 since admission.")


@pytest.mark.skipif(not (DATA / "mimic_iv_demo").exists(), reason=f"MIMIC-IV demo not found under {DATA}")
def test_mimic_readmission_units_and_time_origin():
    c = load_mimic(DATA / "mimic_iv_demo", "readmission")
    ser = serialize_cohort(c, range(0, len(c), 20), units=MIMIC_UNITS, skip_unmeasured=True)
    check_exact(c, ser)
    r = next(r for r in ser if "Lactate" in r.spans or "Creatinine" in r.spans)
    f = "Lactate" if "Lactate" in r.spans else "Creatinine"
    assert r.line(f).startswith(f"- {f} (Unit: {MIMIC_UNITS[f]}.): [")
    assert "hours before discharge" in r.text.split("\n")[1]


def test_bad_input():
    syn = synthetic_cohort(n_patients=20, seed=0)
    with pytest.raises(ValueError, match=r"not in the cohort: \['Troponin'\]"):
        serialize_patient(syn, 0, feature_order=["Troponin"])
    with pytest.raises(ValueError, match="not both"):
        serialize_patient(syn, 0, feature_order=syn.feature_names[:2], order_seed=1)
    with pytest.raises(IndexError, match="out of range"):
        serialize_patient(syn, 20)
    with pytest.raises(ValueError, match="n_planted"):
        synthetic_cohort(n_planted=0)


def test_synthetic_truth_and_expert_recall():
    "The outcome depends on the planted features only, and a quickly trained expert's top-k saliency finds them."
    syn = synthetic_cohort(seed=0)
    planted = syn.info["planted_features"]
    assert 0.2 < syn.y.mean() < 0.4 and len(set(syn.patient_ids)) == len(syn)
    # logistic regression on per-patient means: the planted features get the largest coefficients
    from sklearn.linear_model import LogisticRegression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # patients without any value of a feature
        mv = np.nanmean(syn.X, 1)
    mv = np.where(np.isnan(mv), np.nanmean(mv, 0), mv)
    coef = np.abs(LogisticRegression(max_iter=1000).fit((mv - mv.mean(0)) / mv.std(0), syn.y).coef_[0])
    assert {syn.feature_names[j] for j in np.argsort(-coef)[:3]} == set(planted)
    # experts: GRU (integrated gradients) and ConCare (integrated gradients)
    for model, hp in (("gru", dict(hidden=32, epochs=30, patience=8)), ("concare", dict(hidden=16, attn_hidden=16, epochs=30, patience=8))):
        e = train_cohort_expert(syn, model, seed=0, **hp)
        assert e["test"]["auroc"] > 0.8, (model, e["test"])
        sc, idx, method = cohort_saliency(e, syn, method="ig")
        np.testing.assert_allclose(sc.sum(1), 1, atol=1e-5)
        rec = planted_recall(sc, syn.feature_names, planted)
        assert rec["cohort"] == 1.0, (model, rec)
        assert rec["per_patient"] > 0.75, (model, rec)  # chance: 3/16
    # the splits are by patient, disjoint, and the export validates and carries the truth
    pay = cohort_saliency_payload(e, syn, method="ig", top_k=5)
    sp = pay["metadata"]["splits"]
    assert not (set(sp["train"]) & set(sp["test"])) and sorted(sum(sp.values(), [])) == sorted(syn.ids)
    assert pay["metadata"]["planted_features"] == planted


def test_serialized_prompt_to_feature_attention():
    "serialize -> chat template -> spans_in -> feature_attention on a tiny Llama: the reward's path, end to end."
    from ehr_rlvr.attention import attention_share, feature_attention
    from ehr_rlvr.models import build_tiny_model, train_tokenizer
    syn = synthetic_cohort(n_patients=10, n_features=6, n_planted=2, max_visits=4, seed=5)
    ser = serialize_patient(syn, 0, order_seed=1)
    tok = train_tokenizer([r.text for r in serialize_cohort(syn)] * 5, vocab_size=600)
    model = build_tiny_model(tok, "nano", seed=0)
    prompt = tok.apply_chat_template([{"role": "user", "content": ser.text}], tokenize=False, add_generation_prompt=True)
    spans = ser.spans_in(prompt)
    assert {f: prompt[a:b] for f, (a, b) in spans.items()} == {f: ser.line(f) for f in ser.features}
    att = feature_attention(model, tok, prompt + "The risk is high. <Final answer>0.8</Final answer>", spans, len(prompt))
    assert list(att) == ser.features and abs(sum(att.values()) - 1) < 1e-6 and min(att.values()) > 0
    assert 0 < attention_share(att, syn.info["planted_features"]) < 1
