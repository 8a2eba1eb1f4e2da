"`evaluate_completions` on the real MedCalc dev CSV: gold scores 1, out-of-range 0, garbage 0, missing rows counted."
import json, os, warnings
from pathlib import Path

import pytest

DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "medcalc_bench"
DEV_CSV = DATA / "test_data_v1.0_dev.csv"
pytestmark = pytest.mark.skipif(not DEV_CSV.exists(), reason=f"MedCalc dev CSV not found at {DEV_CSV} (set EHR_RLVR_DATA)")


@pytest.fixture(scope="module")
def dev():
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    return read_medcalc_csv(DEV_CSV)


def _write(path, lines):
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return path


def _evaluate(tmp_path, lines, **kw):
    from ehr_rlvr.completions import evaluate_completions
    comp = _write(tmp_path / "c.jsonl", lines)
    return evaluate_completions("medcalc", str(DEV_CSV), str(comp), **kw)


def _gold_value(r):
    from ehr_rlvr.medcalc.verify import gold_answer_value
    return gold_answer_value({"answer": r["Ground Truth Answer"], "lower": r["Lower Limit"], "upper": r["Upper Limit"],
                              "output_type": r["Output Type"], "calculator_id": str(r["Calculator ID"])})


def test_gold_answers_score_one(tmp_path, dev):
    from ehr_rlvr.rewards import format_completion
    lines = [{"row": int(r["Row Number"]), "completion": format_completion(r["Ground Truth Explanation"].replace("<", "&lt;"), _gold_value(r))}
             for _, r in dev.iterrows()]
    out = tmp_path / "m.json"
    res = _evaluate(tmp_path, lines, out=str(out))
    assert res["accuracy"] == 1.0 and res["format_valid_rate"] == 1.0
    assert res["n_rows"] == res["n_completions"] == res["n_correct"] == len(dev) and res["n_missing"] == 0
    assert set(res["by_category"]) == set(dev["Category"]) and set(res["by_category"].values()) == {1.0}
    assert json.loads(out.read_text()) == res


def test_chat_message_completions_and_string_rows(tmp_path, dev):
    from ehr_rlvr.rewards import format_completion
    lines = [{"row": str(r["Row Number"]), "completion": [{"role": "assistant", "content": format_completion("x", _gold_value(r))}]}
             for _, r in dev.iterrows()]
    assert _evaluate(tmp_path, lines)["accuracy"] == 1.0


def test_answers_outside_limits_score_zero(tmp_path, dev):
    from ehr_rlvr.rewards import format_completion
    lines = []
    for _, r in dev.iterrows():
        if r["Output Type"] == "decimal":
            hi = float(r["Upper Limit"]); lo = float(r["Lower Limit"])
            v = max(hi, lo) + abs(hi - lo) + 1.0
        elif r["Output Type"] == "date" or str(r["Calculator ID"]) == "69":
            continue
        else:
            v = int(r["Ground Truth Answer"]) + 1
        lines.append({"row": int(r["Row Number"]), "completion": format_completion("x", v)})
    res = _evaluate(tmp_path, lines)
    assert res["n_correct"] == 0 and res["format_valid_rate_submitted"] == 1.0
    assert res["n_missing"] == len(dev) - len(lines)


def test_garbage_scores_zero_without_crashing(tmp_path, dev):
    junk = ["", "42", "<think>", "</answer>" * 3, '<think>x</think><answer>{"answer": NaN}</answer>', "\x00\uffff", "٢٥",
            '<think>x</think><answer>{"answer": 1e400}</answer>', '<think>a</think><answer>25</think><answer>25</answer>']
    lines = [{"row": int(r), "completion": junk[i % len(junk)]} for i, r in enumerate(dev["Row Number"])]
    res = _evaluate(tmp_path, lines)
    assert res["accuracy"] == 0.0 and res["format_valid_rate"] == 0.0 and res["n_missing"] == 0


def test_missing_and_unknown_rows_are_reported(tmp_path, dev):
    from ehr_rlvr.rewards import format_completion
    rows = dev.iloc[:10]
    lines = [{"row": int(r["Row Number"]), "completion": format_completion("x", _gold_value(r))} for _, r in rows.iterrows()]
    lines.append({"row": 10**9, "completion": "x"})
    with pytest.warns(UserWarning, match="not in"):
        res = _evaluate(tmp_path, lines)
    assert res["n_correct"] == 10 and res["n_missing"] == len(dev) - 10
    assert res["accuracy"] == pytest.approx(10 / len(dev))
    assert res["unknown_rows"] == [10**9] and set(res["missing_rows"]) == set(dev["Row Number"][10:].tolist())


def test_bad_lines_and_duplicates_raise(tmp_path):
    from ehr_rlvr.completions import evaluate_completions
    p = tmp_path / "bad.jsonl"
    p.write_text('{"row": 1, "completion": "a"}\n{"row": 2, "completion": "b"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        evaluate_completions("medcalc", str(DEV_CSV), str(p))
    p.write_text('{"row": 1, "completion": "a"}\n{"row": 1, "completion": "b"}\n')
    with pytest.raises(ValueError, match=r"duplicate row 1"):
        evaluate_completions("medcalc", str(DEV_CSV), str(p))
    p.write_text('{"row": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        evaluate_completions("medcalc", str(DEV_CSV), str(p))
