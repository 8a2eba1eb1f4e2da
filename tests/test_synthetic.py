"Integration tests of the synthetic MedCalc notes: determinism, schema, gold/limits, solvable notes, splits."
import ast, os
from pathlib import Path

import pandas as pd
import pytest

from ehr_rlvr.medcalc.base import CALCULATORS, compute
from ehr_rlvr.medcalc.data import MEDCALC_COLUMNS, medcalc_rows, read_medcalc_csv, validate_medcalc_frame
from ehr_rlvr.medcalc.synthetic import (SPECS, Num, check_row, generate_notes, gold_strings, missing_mentions, save_notes,
                                        supported_calculators)

DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL_CSV = DATA / "medcalc_bench" / "test_data_v1.0_dev.csv"


@pytest.fixture(scope="module")
def notes() -> pd.DataFrame:
    return generate_notes(n_per_calculator=15, seed=0, missing_value_rate=0.3, unit_conversion_rate=0.5)


@pytest.fixture(scope="module")
def long_notes() -> pd.DataFrame:
    return generate_notes(n_per_calculator=8, seed=1, style="long", missing_value_rate=1.0, unit_conversion_rate=1.0,
                          distractor_rate=1.0)


def test_some_calculators_supported():
    ids = supported_calculators()
    assert ids, "no calculator has both a note spec and a registered calculator"
    assert set(ids) <= set(SPECS) and set(ids) <= set(CALCULATORS)


def test_deterministic_by_seed():
    a = generate_notes(n_per_calculator=4, seed=3)
    pd.testing.assert_frame_equal(a, generate_notes(n_per_calculator=4, seed=3))
    assert a["Patient Note"].tolist() != generate_notes(n_per_calculator=4, seed=4)["Patient Note"].tolist()


def test_calculator_rows_do_not_depend_on_the_other_calculators():
    ids = supported_calculators()[:3]
    one = generate_notes(ids[-1:], n_per_calculator=3, seed=5)
    many = generate_notes(ids, n_per_calculator=3, seed=5)
    cols = [c for c in MEDCALC_COLUMNS if c != "Row Number"]
    pd.testing.assert_frame_equal(one[cols], many[many["Calculator ID"] == ids[-1]][cols].reset_index(drop=True))


def test_schema_is_the_medcalc_csv(notes):
    assert list(notes.columns) == list(MEDCALC_COLUMNS)
    assert notes["Note ID"].is_unique and notes["Row Number"].is_unique
    assert set(notes["Note Type"]) == {"Synthetic"}
    assert set(notes["Calculator ID"]) == set(supported_calculators())
    for c in ("Ground Truth Answer", "Lower Limit", "Upper Limit", "Relevant Entities", "Patient Note"):
        assert notes[c].map(lambda v: isinstance(v, str) and v != "").all(), c


@pytest.mark.skipif(not REAL_CSV.exists(), reason=f"real MedCalc-Bench CSV not found at {REAL_CSV} (set EHR_RLVR_DATA)")
def test_columns_and_entity_keys_match_the_real_csv(notes):
    real = pd.read_csv(REAL_CSV, dtype=str, keep_default_na=False)
    assert list(notes.columns) == list(real.columns)
    real_keys = real.groupby("Calculator ID")["Relevant Entities"].apply(lambda s: set().union(*map(ast.literal_eval, s)))
    for cid, grp in notes.groupby("Calculator ID"):
        keys = set().union(*map(ast.literal_eval, grp["Relevant Entities"]))
        assert keys <= real_keys[str(cid)], (cid, keys - real_keys[str(cid)])
        assert grp["Calculator Name"].iloc[0] == real[real["Calculator ID"] == str(cid)]["Calculator Name"].iloc[0]


@pytest.mark.parametrize("frame", ["notes", "long_notes"])
def test_gold_recomputes_lies_in_limits_and_note_is_solvable(frame, request):
    df = request.getfixturevalue(frame)
    problems = {r["Note ID"]: p for _, r in df.iterrows() if (p := check_row(r))}
    assert problems == {}
    for _, r in df.iterrows():
        ents = ast.literal_eval(r["Relevant Entities"])
        gold = gold_strings(compute(r["Calculator ID"], ents).answer, r["Output Type"])
        assert gold == (r["Ground Truth Answer"], r["Lower Limit"], r["Upper Limit"])
        if r["Output Type"] == "decimal":
            assert float(r["Lower Limit"]) <= float(r["Ground Truth Answer"]) <= float(r["Upper Limit"])
        else:
            assert r["Ground Truth Answer"] == r["Lower Limit"] == r["Upper Limit"]


def test_mention_check_catches_unsolvable_notes():
    spec = SPECS[45]
    ents = {"age": [70, "years"], "Confusion": True, "Blood Urea Nitrogen (BUN)": [25.0, "mg/dL"]}
    assert missing_mentions("A 70-year-old man. No confusion. BUN 25 mg/dL.", ents, spec) == ["Confusion"]
    assert missing_mentions("A 70-year-old man. Confusion on exam. BUN 2.5 mg/dL.", ents, spec) == ["Blood Urea Nitrogen (BUN)"]
    assert missing_mentions("A 70-year-old man. Confusion on exam. BUN 25 mg/dL.", ents, spec) == []


def test_knobs(long_notes):
    for _, r in long_notes.iterrows():
        spec, ents = SPECS[r["Calculator ID"]], ast.literal_eval(r["Relevant Entities"])
        assert not set(spec.optional) & set(ents), "missing_value_rate=1 keeps no optional key"
        for k, e in spec.entities.items():
            if isinstance(e, Num) and e.alts and k in ents:
                assert ents[k][1] in {u for u, _, _ in e.alts}, (k, ents[k])
    quiet = generate_notes(n_per_calculator=8, seed=1, distractor_rate=0.0)["Patient Note"].str.split().str.len()
    noisy = generate_notes(n_per_calculator=8, seed=1, distractor_rate=1.0)["Patient Note"].str.split().str.len()
    assert quiet.mean() < noisy.mean()


MANY_INPUTS = {8, 16, 18, 28, 29, 32, 36, 43}  # scores with 10-30 inputs: their short notes run longer


def test_short_notes_are_short(notes):
    words = notes["Patient Note"].str.split().str.len()
    simple = words[~notes["Calculator ID"].isin(MANY_INPUTS)]
    assert 30 <= simple.median() <= 90 and simple.max() <= 110, simple.describe()
    assert words.max() <= 200, words.describe()


def test_bad_arguments():
    with pytest.raises(ValueError, match="999"): generate_notes([999])
    with pytest.raises(ValueError, match="style"): generate_notes(style="tiny")
    with pytest.raises(ValueError, match="missing_value_rate"): generate_notes(missing_value_rate=1.5)


def test_csv_round_trip_and_prompt_rows(notes, tmp_path):
    path = save_notes(notes, tmp_path / "sub" / "synthetic.csv")
    back = read_medcalc_csv(path)
    pd.testing.assert_frame_equal(back, validate_medcalc_frame(notes))
    ds = medcalc_rows(back.head(5), style="compact")
    assert ds[0]["ground_truth"]["answer"] == notes["Ground Truth Answer"].iloc[0]


def test_deterministic_across_processes():
    import hashlib, subprocess, sys
    code = ("from ehr_rlvr.medcalc.synthetic import generate_notes; import hashlib; "
            "print(hashlib.md5(generate_notes(n_per_calculator=3, seed=2, missing_value_rate=0.3).to_csv(index=False).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
    assert len(outs) == 1, outs


@pytest.mark.parametrize("cid,criterion,entity", [(45, "BUN", "Blood Urea Nitrogen (BUN)"),
                                                   (51, "WBC", "White blood cell count")])
def test_misapplied_variant_is_the_score_without_that_input(cid, criterion, entity):
    # CRB-65 / SIRS without the WBC criterion, computed independently: the calculator run on the entities with that
    # input removed (missing inputs count as normal) must give the rewritten row's answer.
    from ehr_rlvr.medcalc.synthetic import misapply_notes
    df = generate_notes([cid], 150, seed=11)
    m = misapply_notes(df, {cid: criterion}, rate=1.0, seed=0)
    assert m["Note Type"].str.contains("misapplied").all()
    changed = 0
    for (_, r), (_, g) in zip(m.iterrows(), df.iterrows()):
        ents = ast.literal_eval(g["Relevant Entities"])
        ents.pop(entity, None)
        assert int(r["Ground Truth Answer"]) == compute(cid, ents).answer, r["Note ID"]
        assert criterion not in r["Ground Truth Explanation"]
        changed += r["Ground Truth Answer"] != g["Ground Truth Answer"]
    assert 0.2 < changed / len(df) < 0.9        # the variant is wrong often, not always
    assert (misapply_notes(df, {cid: criterion}, rate=0.0)["Ground Truth Answer"] == df["Ground Truth Answer"]).all()
