"""No silent wrong metric (issue "No silent wrong result", findings 2, 3 and 9): rows missing from a completions file
count against every answer kind, a malformed probability takes the worst rank, a completions file that matches no row
is an error, and an unbounded input is refused at once. Built on the real TREC 2021 pairs and the MIMIC-IV demo.

| case | broken input | outcome now |
|---|---|---|
| 2 missing rows, label kind | a perfect TREC 2021 completions file without 40 of its 55 Eligible pairs | accuracy 214/254, Eligible recall 15/55, support 55; the 40 are `no answer` and `n_missing` 40 |
| 2 missing rows, probability kind | MIMIC-IV demo readmission, perfect probabilities, every positive left out | AUROC 0.0 (each missing positive ranks below every answer), Brier counts them as 1 |
| 2 no match | an empty completions file; a file whose row keys all belong to another data file | `ValueError` naming the file (and a key of each side) |
| 3 malformed probability | 0.1 on every negative, "no idea" on every positive (diagnosis) | AUROC 0.0, not 1.0 |
| 5 paths | `evaluate-completions --out` or `--predictions` equal to `--data` or `--completions` | `ValueError`: an output may not overwrite an input; both files unchanged |
| 9 unbounded input | `--completions /dev/zero` | exit 2 within one 16 MB read: "line longer than 16,000,000 bytes" |
"""
import json

import numpy as np
import pytest

from conftest import DATA_ROOT, ROOT, run_cli

TREC = DATA_ROOT / "trec_ct" / "trec_2021"
DEMO_MEDS = DATA_ROOT / "mimic_iv_demo" / "meds_events_with_chartevents" / "mimic_iv_demo_meds_events.parquet"
need_trec = pytest.mark.skipif(not TREC.exists(), reason=f"TREC CT 2021 data not found at {TREC} (set EHR_RLVR_DATA)")
need_demo = pytest.mark.skipif(not DEMO_MEDS.exists(), reason=f"MIMIC-IV demo MEDS file not found at {DEMO_MEDS} "
                               "(set EHR_RLVR_DATA)")


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def trec_pairs():
    from ehr_rlvr.trials.data import load_trec_pairs
    with pytest.warns(UserWarning):  # pairs without trial text are skipped, with a warning
        pairs, _ = load_trec_pairs(TREC)
    return pairs


@need_trec
def test_missing_eligible_pairs_count_against_the_label_metrics(tmp_path, trec_pairs):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.trials.data import format_answer
    eligible = trec_pairs.index[trec_pairs["label"] == 2]
    assert len(trec_pairs) == 254 and len(eligible) == 55
    dropped = set(eligible[:40])
    comp = _write(tmp_path / "c.jsonl", [{"row": r.pair_id, "completion": format_answer("checked", int(r.label))}
                                         for i, r in zip(trec_pairs.index, trec_pairs.itertuples()) if i not in dropped])
    with pytest.warns(UserWarning):
        res = evaluate_completions("trials", str(TREC), str(comp))
    assert res["n_missing"] == 40 and res["n_scored"] == 214
    assert res["accuracy"] == pytest.approx(214 / 254) and res["kappa"] < 0.9
    eli = res["per_class"]["Eligible"]
    assert eli["support"] == 55 and eli["recall"] == pytest.approx(15 / 55) and eli["precision"] == 1.0
    cm = res["confusion"]
    assert cm["columns"][-1] == "no answer"
    rows = dict(zip(cm["labels"], cm["matrix"]))
    assert rows["Eligible"] == [0, 0, 15, 40]  # the missing pairs are booked as no answer, under their own gold
    assert [sum(r) for r in cm["matrix"]] == [int((trec_pairs["label"] == k).sum()) for k in range(3)]


@need_trec
def test_a_completions_file_that_matches_nothing_is_an_error(tmp_path, trec_pairs):
    from ehr_rlvr.completions import evaluate_completions
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl: no completions in the file"):
        evaluate_completions("trials", str(TREC), str(empty))
    other = _write(tmp_path / "other.jsonl", [{"row": f"{i}:NCT0000000{i}", "completion": "x"} for i in range(3)])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"other.jsonl: none of its 3 row key\(s\)"):
        evaluate_completions("trials", str(TREC), str(other))


@pytest.fixture(scope="module")
def readmission_rows():
    from ehr_rlvr.diagnosis.task import DiagnosisTask
    rows = DiagnosisTask(label_task="readmission_30d").load_rows(DEMO_MEDS)
    assert len(rows) == 227
    return rows


@need_demo
def test_missing_positives_take_the_worst_rank(tmp_path, readmission_rows):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.diagnosis.task import format_diagnosis_answer
    labels = np.array([r["label"] for r in readmission_rows])
    assert 0 < labels.sum() < len(labels)
    comp = _write(tmp_path / "c.jsonl", [{"row": r["id"], "completion": format_diagnosis_answer("x", 0, 0.05)}
                                         for r in readmission_rows if r["label"] == 0])  # every positive left out
    res = evaluate_completions("diagnosis", str(DEMO_MEDS), str(comp), task_params={"label_task": "readmission_30d"})
    assert res["n_missing"] == int(labels.sum())
    assert res["auroc"] == 0.0  # not 1.0 from ranking the negatives alone, not 0.5 from a neutral guess
    assert res["brier"] == pytest.approx(((1 - labels) * 0.05 ** 2 + labels * 1.0).mean())
    assert res["accuracy"] == pytest.approx(1 - labels.mean())


@need_demo
def test_no_idea_on_every_positive_is_the_worst_ranking(tmp_path, readmission_rows):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.diagnosis.task import format_diagnosis_answer
    lines = [{"row": r["id"], "completion": format_diagnosis_answer("x", 0, 0.1) if r["label"] == 0
              else "<think>hard to say</think><answer>no idea</answer>"} for r in readmission_rows]
    res = evaluate_completions("diagnosis", str(DEMO_MEDS), str(_write(tmp_path / "c.jsonl", lines)),
                               task_params={"label_task": "readmission_30d"})
    assert res["n_missing"] == 0 and res["auroc"] == 0.0 and res["auprc"] < 0.5


def test_a_stream_without_line_breaks_is_refused_at_once(tmp_path):
    p = run_cli("evaluate-completions", "--task", "medcalc", "--data", "data/medcalc_synthetic_sample.csv",
                "--completions", "/dev/zero", timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "/dev/zero:1: line longer than 16,000,000 bytes" in p.stderr


@pytest.mark.parametrize("which", ["out", "predictions"])
def test_outputs_never_overwrite_the_inputs(tmp_path, which):
    from ehr_rlvr.completions import evaluate_completions
    data = tmp_path / "notes.csv"
    data.write_bytes((ROOT / "data" / "medcalc_synthetic_sample.csv").read_bytes())
    comp = _write(tmp_path / "c.jsonl", [{"row": 1, "completion": "x"}])
    before = {p: p.read_bytes() for p in (data, comp)}
    for target, name in ((data, "--data"), (comp, "--completions")):
        with pytest.raises(ValueError, match=f"--{which} .* is the {name} file: an output may not overwrite an input"):
            evaluate_completions("medcalc", str(data), str(comp), **{which: str(target)})
    assert {p: p.read_bytes() for p in (data, comp)} == before
