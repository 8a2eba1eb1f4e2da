"Integration test of the MedCalc-Bench label audit (`ehr_rlvr.medcalc.audit`) on the real dev CSV."
import json, os
from pathlib import Path

import pytest

from ehr_rlvr.medcalc.audit import KNOWN_LABEL_ERRORS, audit_csv

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
def test_agreement_and_every_disagreement_is_a_reviewed_label_error(audited):
    summary, out = audited
    # The brief's target was agree_rate >= 0.90 against the v1.0 gold. It is unreachable without
    # reproducing label errors: 91 of 525 dev rows carry reviewed v1.0 label errors (70 of them in
    # point-sum calculators), capping agreement at 434/525 = 0.827. We assert the measured rate and that
    # recomputation agrees with every row whose label is not a reviewed error.
    assert summary["agree_rate"] >= 0.82, summary["agree_rate"]
    assert summary["unexplained_disagreements"] == 0
    assert summary["agree_or_known_label_error_rate"] >= 0.90
    recs = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    bad = [(r["row"], r["calc_id"], r["recomputed"], r["gold"]) for r in recs
           if r["verdict"] == "disagree" and r["row"] not in KNOWN_LABEL_ERRORS]
    assert not bad, bad


@needs_data
def test_jsonl_has_one_line_per_row(audited):
    summary, out = audited
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == summary["rows"] == 525
    rec = json.loads(lines[0])
    assert {"row", "calc_id", "name", "recomputed", "gold", "lower", "upper", "verdict", "error"} <= set(rec)


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
