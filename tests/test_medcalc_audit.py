"Integration test of the MedCalc-Bench label audit (`ehr_rlvr.medcalc.audit`) on the real dev CSV."
import json, os
from pathlib import Path

import pytest

import inspect

from ehr_rlvr.medcalc.audit import audit_csv
from ehr_rlvr.medcalc.base import CALCULATORS, CONVENTIONS, compute

DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "medcalc_bench"
DEV, RELABEL = DATA / "test_data_v1.0_dev.csv", DATA / "test_relabeled_dev_junzeye.csv"
needs_data = pytest.mark.skipif(not DEV.exists(), reason=f"MedCalc-Bench dev CSV not found at {DEV} (set EHR_RLVR_DATA)")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "dev.jsonl"
    return audit_csv(str(DEV), str(out)), out


@needs_data
def test_all_55_calculators_covered_without_errors(audited):
    summary, _ = audited
    assert summary["covered_calculators"] == 55  # final state: formulas (36) + scores (19)
    assert summary["errors"] == 0
    assert len(summary["by_calculator"]) == 55 and all(b["rows"] > 0 for b in summary["by_calculator"].values())


@needs_data
def test_agreement_under_medcalc_v1_and_label_errors(audited):
    summary, out = audited
    # The audit compares with v1.0 labels, so its default convention reproduces v1.0's reference code.
    assert summary["convention"] == "medcalc_v1"
    assert summary["agree_rate"] >= 0.90, summary["agree_rate"]          # measured: 525/525
    assert summary["agree_rate_clinical"] >= 0.82, summary["agree_rate_clinical"]  # measured: 434/525
    assert summary["label_errors"] > 0                                   # measured: 91
    assert summary["label_errors"] == summary["agree"] - summary["agree_clinical"]  # every v1-only agreement is a label error here
    assert summary["label_error_rate"] == round(summary["label_errors"] / summary["rows"], 4)
    assert sum(b["label_errors"] for b in summary["by_calculator"].values()) == summary["label_errors"]
    recs = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    for r in recs:
        assert r["label_error"] == (r["verdict"] == "agree" and not r["agree_clinical"]), r["row"]
        if r["label_error"]: assert r["recomputed_clinical"] != r["recomputed"] and r["convention_note"].startswith("Convention medcalc_v1"), r["row"]


@needs_data
def test_clinical_convention_audit(tmp_path):
    s = audit_csv(DEV, tmp_path / "c.jsonl", convention="clinical")
    assert s["convention"] == "clinical" and s["agree"] == s["agree_clinical"]
    assert s["label_errors"] > 0 and s["unexplained_disagreements"] == s["disagree"] - s["label_errors"]
    with pytest.raises(ValueError, match="medcalc_v1"): audit_csv(DEV, convention="v1.0")


def test_clinical_is_the_default_of_compute():
    assert CONVENTIONS == ("clinical", "medcalc_v1")
    assert inspect.signature(compute).parameters["convention"].default == "clinical"
    e = {"Best eye response": "eye opening to pain", "Best verbal response": "inappropriate words", "Best motor response": "withdrawal from pain"}
    assert (compute(21, e).answer, compute(21, e, convention="medcalc_v1").answer) == (9, 12)   # v1.0 adds the verbal response twice
    with pytest.raises(ValueError, match="medcalc_v1"): compute(21, e, convention="mdcalc")
    declared = {cid for cid, spec in CALCULATORS.items() if spec.conventions == CONVENTIONS}
    assert declared == {2, 3, 7, 13, 15, 17, 21, 23, 27, 28, 29, 32, 36, 43, 46, 51}
    assert all(spec.conventions in (("clinical",), CONVENTIONS) for spec in CALCULATORS.values())


@needs_data
def test_train_subset(tmp_path):
    train = DATA / "train_subset_98_from_ehrmind_val.csv"
    if not train.exists(): pytest.skip(f"train subset not found at {train}")
    s = audit_csv(train, tmp_path / "t.jsonl")
    assert (s["rows"], s["errors"]) == (98, 0)
    assert s["agree_rate"] >= 0.90 and s["label_errors"] > 0


@needs_data
def test_jsonl_has_one_line_per_row(audited):
    summary, out = audited
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == summary["rows"] == 525
    rec = json.loads(lines[0])
    assert {"row", "calc_id", "name", "recomputed", "recomputed_clinical", "gold", "lower", "upper", "verdict",
            "agree_clinical", "label_error", "convention_note", "error"} <= set(rec)


@needs_data
def test_relabel_comparison(tmp_path):
    if not RELABEL.exists(): pytest.skip(f"relabel CSV not found at {RELABEL}")
    s = audit_csv(DEV, tmp_path / "a.jsonl", relabel_csv=RELABEL)
    assert s["relabel_rows"] > 300 and s["agree_relabel"] / s["relabel_rows"] > 0.8


def test_bad_rows_are_counted_errors(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text('Row Number,Calculator ID,Calculator Name,Category,Output Type,Relevant Entities,Ground Truth Answer,Lower Limit,Upper Limit\n'
                   '1,5,Mean Arterial Pressure (MAP),physical,decimal,"{\'Systolic Blood Pressure\': [120, \'mm Hg\'], \'Diastolic Blood Pressure\': [80, \'mm Hg\']}",93.333,88.667,98.0\n'
                   '2,5,Mean Arterial Pressure (MAP),physical,decimal,"{\'Systolic",93.333,88.667,98.0\n', encoding="utf-8")
    s = audit_csv(csv, tmp_path / "bad.jsonl")
    assert (s["rows"], s["agree"], s["errors"]) == (2, 1, 1)
    err = json.loads((tmp_path / "bad.jsonl").read_text().splitlines()[1])
    assert err["verdict"] == "error" and "row 2" in err["error"]
