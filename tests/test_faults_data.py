"""Fault injection on the EHR loaders, MEDS labelers and expert training (issue 28, "no silent wrong result").

Each test copies a real file from the data root to tmp_path, breaks ONE thing, and asserts the exact outcome: an error
naming the file and the line / patient / subject and what to do, nothing written. The last tests check that the real
files still give the same cohorts and labels.

| case | broken input | outcome now |
|---|---|---|
| 1 non-finite | TJH CSV: one patient's `age` NaN; `experts train --dataset tjh` | exit 2: file, line, PATIENT_ID, `age nan is not an age in years in [0, 125]`; no output folder |
| 1 non-finite | TJH CSV: one lab cell `inf`, another `1e308` | `InputFileError`: file, line, PATIENT_ID, column, `inf` / `1e+308 is not a plausible lab value` |
| 1 non-finite | MIMIC patients: `anchor_age` NaN for 10 subjects; `train_expert` | `InputFileError`: patients.csv.gz, line, subject_id, `10 row(s) like this`; nothing written |
| 1 non-finite | training diverges (lr 1e30) | `fit: epoch 0: 38 of 38 validation predictions are not finite`; nothing written |
| 1 non-finite | a model that outputs NaN after training | `train_expert` refuses before writing: split, count, first sample ids |
| 1 non-finite | an `inf` put into a loaded cohort's X | `Preprocessor.fit` refuses, naming the feature; the real table normalises to finite values |
| 7 MEDS | one event at 2999-01-01 per subject; `diagnosis labels` | exit 2: file, subject, code, `949 years after the subject's MEDS_BIRTH`, `100 event(s) of 100 subject(s)` |
| 7 MEDS | admission and discharge times swapped | `ValueError`: subject, `discharge #1 at ... comes before admission #1 at ...` |
| 7 MEDS | `--discharge-prefix DISCHARGE` (matches nothing); an empty parquet | exit 2: no timed event with that prefix (code families listed); `no events`; no CSV |
| 7 MEDS | `--discharge-prefix ""` | exit 2: `discharge_prefix must be a non-empty code prefix` |
| 7 MEDS | `--codes FILE --task readmission_30d` | exit 2: codes apply to the new-diagnosis tasks only (refused, not applied) |
| 7 MEDS | a null `time` on one diagnosis event | `InputFileError`: file, subject, code, `DIAGNOSIS events are timed` |
| 7 MEDS | labels written to the MEDS input path | `write_labels` refuses; the parquet is unchanged |
| 8 loaders | TJH: every lab cell empty; every RE_DATE `not a date` | `no lab value in any dated row`; line 2: `RE_DATE 'not a date' is not a date-time` |
| 8 loaders | TJH negative age; MIMIC dischtime before admittime | file, line, PATIENT_ID / hadm_id |
| 8 loaders | header-only TJH CSV; header-only TREC qrels; a corrupt .xlsx; MIMIC admittime `yesterday` | file-named errors (no crash) |
| 8 loaders | `P1` as PATIENT_ID; one outcome class; the first 20 rows only | `line 2: PATIENT_ID 'P1' is not an integer id`; `every patient has the same outcome label`; `too few patients per class` |
| (none) | the real TJH / MIMIC-IV / MEDS / qrels files | unchanged: 375 (174 deaths), 220 (13) and 260 (53), readmission labels 51 / 176, 275 prediction times |
"""
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import DATA_ROOT, run_cli

TJH_CSV = DATA_ROOT / "tjh" / "time_series_375_en.csv"
TJH_XLSX = DATA_ROOT / "tjh" / "time_series_375_prerpocess_en.xlsx"
HOSP = DATA_ROOT / "mimic_iv_demo" / "mimic-iv-clinical-database-demo-2.2" / "hosp"
MEDS = DATA_ROOT / "mimic_iv_demo" / "meds_events_with_chartevents" / "mimic_iv_demo_meds_events.parquet"
Y2021 = DATA_ROOT / "trec_ct" / "trec_2021"
need_tjh = pytest.mark.skipif(not TJH_CSV.exists(), reason=f"TJH table not found at {TJH_CSV} (set EHR_RLVR_DATA)")
need_mimic = pytest.mark.skipif(not (HOSP / "admissions.csv.gz").exists(), reason=f"MIMIC-IV demo not found at {HOSP} (set EHR_RLVR_DATA)")
need_meds = pytest.mark.skipif(not MEDS.exists(), reason=f"MIMIC-IV demo MEDS parquet not found at {MEDS} (set EHR_RLVR_DATA)")
need_trec = pytest.mark.skipif(not (Y2021 / "qrels" / "test.tsv").exists(), reason=f"TREC 2021 folder not found at {Y2021} (set EHR_RLVR_DATA)")


# ---- helpers -------------------------------------------------------------------------------------------------------
def _tjh_with(tmp_path, edit=None, name="time_series_375_en.csv"):
    "The real TJH table with `edit(df)` applied (in place, or returning the new frame), written as tmp_path/tjh/<name>."
    df = pd.read_csv(TJH_CSV)
    got = edit(df) if edit else None
    if got is not None: df = got
    (tmp_path / "tjh").mkdir(exist_ok=True)
    path = tmp_path / "tjh" / name
    df.to_csv(path, index=False)
    return path


def _patient_rows(df, k):
    "(first row index, row indices, PATIENT_ID) of the k-th patient block (PATIENT_ID is on its first row only)."
    first = df.index[df["PATIENT_ID"].notna()]
    stop = first[k + 1] if k + 1 < len(first) else len(df)
    return first[k], list(range(first[k], stop)), int(df.loc[first[k], "PATIENT_ID"])


def _hosp_with(tmp_path, table=None, edit=None):
    "A MIMIC-IV demo folder with hosp/{admissions,patients,d_labitems,labevents} copied and `edit` applied to `table`."
    hosp = tmp_path / "mimic" / "hosp"; hosp.mkdir(parents=True)
    for t in ("admissions", "patients", "d_labitems", "labevents"):
        if t != table: shutil.copy(HOSP / f"{t}.csv.gz", hosp)
    if table:
        df = pd.read_csv(HOSP / f"{table}.csv.gz")
        edit(df)
        df.to_csv(hosp / f"{table}.csv.gz", index=False, compression="gzip")
    return tmp_path / "mimic"


def _meds_with(tmp_path, edit=None, name="events.parquet"):
    "The real MEDS demo parquet (its own columns) with `edit(df) -> df` applied, written to tmp_path/name."
    df = pd.read_parquet(MEDS)
    if edit: df = edit(df)
    path = tmp_path / name
    df.to_parquet(path, index=False)
    return path


def _labels_cli(meds, out, *extra, task="new_hypertension"):
    return run_cli("diagnosis", "labels", "--meds", meds, "--task", task, "--out", out, *extra, timeout=300)


# ---- finding 1: non-finite inputs ----------------------------------------------------------------------------------
@need_tjh
def test_cli_experts_train_refuses_a_nan_age_and_writes_nothing(tmp_path):
    def edit(df):
        edit.first, rows, edit.pid = _patient_rows(df, 3)
        edit.n = len(rows)
        df.loc[rows, "age"] = np.nan
    path, out = _tjh_with(tmp_path, edit), tmp_path / "out"
    p = run_cli("experts", "train", "--dataset", "tjh", "--task", "mortality", "--model", "gru", "--data", path.parent,
                "--out", out, timeout=600)
    assert p.returncode == 2, p.stderr[-2000:]
    assert (f"ehr-rlvr experts: error: {path}: line {edit.first + 2} (PATIENT_ID {edit.pid}): age nan is not an age in years "
            f"in [0, 125] (static features must be finite); fix or remove the patient; {edit.n} row(s) like this "
            f"(1 PATIENT_ID value(s))") in p.stderr, p.stderr[-2000:]
    assert not out.exists()


@need_tjh
def test_tjh_inf_and_huge_lab_cells_are_refused_naming_line_and_column(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    from ehr_rlvr.io import InputFileError
    df = pd.read_csv(TJH_CSV)
    c1, c2 = "Hypersensitive cardiac troponinI", "ferritin"
    r1 = int(df.index[df[c1].notna()][4]); r2 = int(df.index[df[c2].notna()][9])
    pid = lambda r: int(df["PATIENT_ID"].ffill()[r])
    def edit(d): d.loc[r1, c1] = np.inf; d.loc[r2, c2] = 1e308
    path = _tjh_with(tmp_path, edit)
    with pytest.raises(InputFileError) as e:
        load_tjh(path)
    assert str(e.value) == (f"{path}: line {r1 + 2} (PATIENT_ID {pid(r1)}): column {c1!r}: inf is not a plausible lab value "
                            f"(inf or |value| > 1e+09); fix or blank the cell; 1 row(s) like this (1 PATIENT_ID value(s))")
    path = _tjh_with(tmp_path, lambda d: d.__setitem__(c2, d[c2].where(d.index != r2, 1e308)))
    with pytest.raises(InputFileError, match=rf"line {r2 + 2} \(PATIENT_ID {pid(r2)}\): column 'ferritin': 1e\+308 is not a plausible"):
        load_tjh(path)


@need_mimic
def test_mimic_nan_anchor_age_for_10_subjects_is_refused_before_training(tmp_path):
    from ehr_rlvr.experts import train_expert
    from ehr_rlvr.io import InputFileError
    pat = pd.read_csv(HOSP / "patients.csv.gz")
    data = _hosp_with(tmp_path, "patients", lambda df: df.__setitem__("anchor_age", df["anchor_age"].where(df.index >= 10)))
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as e:
        train_expert("mimic-iv", "mortality", "gru", str(data), out_dir=str(out), epochs=1)
    assert str(e.value) == (f"{data / 'hosp' / 'patients.csv.gz'}: line 2 (subject_id {pat['subject_id'][0]}): anchor_age nan is "
                            f"not an age in years in [0, 125] (static features must be finite); 10 row(s) like this "
                            f"(10 subject_id value(s))")
    assert not out.exists()


@need_tjh
def test_diverging_training_is_refused_not_written(tmp_path):
    from ehr_rlvr.experts import train_expert
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"^fit: epoch 0: 38 of 38 validation predictions are not finite \(train loss nan\): "
                                         r"training diverged; lower lr \(now 1e\+30\)$"):
        train_expert("tjh", "mortality", "gru", str(TJH_CSV), out_dir=str(out), epochs=1, lr=1e30, n_boot=10)
    assert not out.exists()


@need_tjh
def test_nan_probabilities_are_never_written(tmp_path, monkeypatch):
    import torch
    import ehr_rlvr.experts as ex
    real_fit = ex.fit
    def fit_then_break(net, *a, **kw):  # a trained model whose output is NaN (e.g. a corrupted weight)
        hist = real_fit(net, *a, **kw)
        with torch.no_grad(): net.head[-1].bias.fill_(float("nan"))
        return hist
    monkeypatch.setattr(ex, "fit", fit_then_break)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        ex.train_expert("tjh", "mortality", "gru", str(TJH_CSV), out_dir=str(out), epochs=1, n_boot=10)
    msg = str(e.value)
    assert msg.startswith(f"{TJH_CSV}: the gru expert gave 262 non-finite probabilities on the train split (first samples ['"), msg
    assert msg.endswith("training diverged or an input is not finite; nothing was written (try a smaller lr)")
    assert not out.exists()


@need_tjh
def test_normalisation_is_finite_and_refuses_a_late_inf():
    from ehr_rlvr.ehr.cohorts import Preprocessor, load_tjh, split_indices, split_patients
    c = load_tjh(TJH_CSV)
    train = split_indices(c, split_patients(c.patient_ids, c.y, seed=0))["train"]
    X, S = Preprocessor.fit(c, train).transform(c)
    assert np.isfinite(X).all() and np.isfinite(S).all()
    j = c.feature_names.index("ferritin")
    n, t = map(int, np.argwhere(c.mask[train, :, j])[0])
    c.X[train[n], t, j] = np.inf                    # arrays edited after loading: the fit still refuses
    with pytest.raises(ValueError, match=rf"^{TJH_CSV}: the training statistics of \['ferritin'\] are not finite"):
        Preprocessor.fit(c, train)


# ---- finding 7: MEDS labels --------------------------------------------------------------------------------------
@need_meds
def test_far_future_event_per_subject_is_refused(tmp_path):
    ev = pd.read_parquet(MEDS)
    sid = int(ev["subject_id"].min())
    birth = ev.loc[(ev["subject_id"] == sid) & (ev["code"] == "MEDS_BIRTH"), "time"].min()
    def edit(df):
        late = pd.DataFrame({"subject_id": df["subject_id"].unique(), "time": pd.Timestamp("2999-01-01"),
                             "code": "LAB//50912//mg/dL", "table": "condition", "value": np.float32(1.0)})
        return pd.concat([df, late.astype(df.dtypes.to_dict())], ignore_index=True)
    meds, out = _meds_with(tmp_path, edit), tmp_path / "labels.csv"
    p = _labels_cli(meds, out)
    years = (pd.Timestamp("2999-01-01") - birth).days / 365.25
    assert p.returncode == 2, p.stderr[-2000:]
    assert (f"ehr-rlvr diagnosis: error: {meds}: subject {sid}: event 'LAB//50912//mg/dL' at 2999-01-01 00:00:00 is "
            f"{years:.0f} years after the subject's MEDS_BIRTH ({birth.date()}), more than 125 (100 event(s) of 100 "
            f"subject(s)); a far-future time makes a record look longer than it is") in p.stderr, p.stderr[-2000:]
    assert not out.exists()


@need_meds
def test_discharges_before_admissions_are_refused():
    from ehr_rlvr.diagnosis.labels import label_task
    from ehr_rlvr.diagnosis.meds import read_meds
    ev = read_meds(MEDS)
    code = ev["code"].astype(str)
    adm, dis = code.str.startswith("HOSPITAL_ADMISSION"), code.str.startswith("HOSPITAL_DISCHARGE")
    a_t = ev.loc[adm].sort_values(["subject_id", "time"]); d_t = ev.loc[dis].sort_values(["subject_id", "time"])
    ev.loc[a_t.index, "time"] = d_t["time"].to_numpy(); ev.loc[d_t.index, "time"] = a_t["time"].to_numpy()  # stay by stay
    sid = int(a_t["subject_id"].iloc[0])
    with pytest.raises(ValueError) as e:
        label_task(ev, "readmission_30d")
    assert str(e.value).startswith(f"{MEDS}: subject {sid}: discharge #1 at {a_t['time'].iloc[0]} comes before admission #1 at "
                                   f"{d_t['time'].iloc[0]} ("), str(e.value)
    assert "inconsistent stay(s) of 100 subject(s); admissions 'HOSPITAL_ADMISSION', discharges 'HOSPITAL_DISCHARGE'): fix the event times" in str(e.value)


@need_meds
def test_a_discharge_prefix_matching_nothing_or_an_empty_file_gives_no_labels_file(tmp_path):
    out = tmp_path / "labels.csv"
    p = _labels_cli(MEDS, out, "--discharge-prefix", "DISCHARGE")
    assert p.returncode == 2 and not out.exists(), p.stderr[-2000:]
    assert (f"ehr-rlvr diagnosis: error: {MEDS}: no timed event has a code starting with the discharge prefix 'DISCHARGE', so "
            f"there is no prediction time (916166 events, 100 subjects; code families: LAB (776411), MEDICATION (63696)") in p.stderr
    empty = _meds_with(tmp_path, lambda df: df.iloc[:0], "empty.parquet")
    p = _labels_cli(empty, out)
    assert p.returncode == 2 and not out.exists(), p.stderr[-2000:]
    assert f"ehr-rlvr diagnosis: error: {empty}: no events: the MEDS file(s) hold no rows" in p.stderr


@need_meds
def test_an_empty_discharge_prefix_is_refused(tmp_path):
    out = tmp_path / "labels.csv"
    p = _labels_cli(MEDS, out, "--discharge-prefix", "", task="readmission_30d")
    assert p.returncode == 2 and not out.exists(), p.stderr[-2000:]
    assert ("ehr-rlvr diagnosis: error: discharge_prefix must be a non-empty code prefix, got '': an empty prefix matches "
            "every event") in p.stderr


@need_meds
def test_codes_with_readmission_are_refused_not_ignored(tmp_path):
    codes, out = tmp_path / "htn.txt", tmp_path / "labels.csv"
    codes.write_text("DIAGNOSIS//ICD//10//I10\n")
    p = _labels_cli(MEDS, out, "--codes", codes, task="readmission_30d")
    assert p.returncode == 2 and not out.exists(), p.stderr[-2000:]
    assert (f"ehr-rlvr diagnosis: error: codes={str(codes)!r} applies to the new-diagnosis tasks only; readmission_30d is "
            f"defined by the admission and discharge prefixes") in p.stderr


@need_meds
def test_a_null_time_on_a_timed_event_is_refused(tmp_path):
    from ehr_rlvr.diagnosis.meds import read_meds
    from ehr_rlvr.io import InputFileError
    ev = pd.read_parquet(MEDS)
    i = int(ev.index[ev["code"].str.startswith("DIAGNOSIS//")][0])
    meds = _meds_with(tmp_path, lambda df: df.assign(time=df["time"].where(df.index != i)))
    with pytest.raises(InputFileError) as e:
        read_meds(meds)
    assert str(e.value) == (f"{meds}: subject {ev['subject_id'][i]}: event {ev['code'][i]!r} has no time, but 'DIAGNOSIS' events "
                            f"are timed (elsewhere, or by definition); only static facts (e.g. GENDER//F) may lack a time "
                            f"(1 such event(s) of 1 subject(s)): give the event its time or drop it")


@need_meds
def test_labels_are_never_written_over_the_meds_input(tmp_path):
    from ehr_rlvr.diagnosis.labels import label_task, write_labels
    from ehr_rlvr.diagnosis.meds import read_meds
    meds = tmp_path / "events.parquet"; shutil.copy(MEDS, meds)
    labels, _ = label_task(read_meds(meds), "readmission_30d")
    with pytest.raises(ValueError, match=r"is the MEDS input .* writing the labels there would replace the events"):
        write_labels(labels, meds, meds)
    assert meds.read_bytes() == MEDS.read_bytes()
    assert len(pd.read_csv(write_labels(labels, tmp_path / "labels.csv", meds))) == len(labels) == 227


# ---- finding 8: loaders ------------------------------------------------------------------------------------------
@need_tjh
def test_tjh_without_lab_values_or_readable_dates_is_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import TJH_META, load_tjh
    df = pd.read_csv(TJH_CSV)
    labs = [c for c in df.columns if c not in TJH_META]
    path = _tjh_with(tmp_path, lambda d: d.loc.__setitem__((slice(None), labs), np.nan))
    with pytest.raises(ValueError, match=rf"^{path}: no lab value in any dated row \(the 73 lab column\(s\) are empty or hold "
                                         r"only missing-value codes < 0\): an expert would learn from age and sex alone$"):
        load_tjh(path)
    dated = df["RE_DATE"].notna()
    path = _tjh_with(tmp_path, lambda d: d.__setitem__("RE_DATE", d["RE_DATE"].where(d["RE_DATE"].isna(), "not a date")))
    with pytest.raises(ValueError) as e:
        load_tjh(path)
    assert str(e.value) == (f"{path}: line 2 (PATIENT_ID 1): RE_DATE 'not a date' is not a date-time (e.g. '2020-01-31 01:09:00'); "
                            f"{int(dated.sum())} row(s) like this ({df['PATIENT_ID'].ffill()[dated].nunique()} PATIENT_ID value(s))")


@need_tjh
@need_mimic
def test_negative_age_and_discharge_before_admission_are_refused_naming_the_row(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh, mimic_admissions
    def edit(df):
        edit.first, rows, edit.pid = _patient_rows(df, 7)
        df.loc[rows, "age"] = -df.loc[rows, "age"]
        edit.age, edit.n = int(df.loc[edit.first, "age"]), len(rows)
    path = _tjh_with(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"^{path}: line {edit.first + 2} \(PATIENT_ID {edit.pid}\): age {edit.age} is not an age "
                                         rf"in years in \[0, 125\] .*; {edit.n} row\(s\) like this \(1 PATIENT_ID value\(s\)\)$"):
        load_tjh(path)
    adm = pd.read_csv(HOSP / "admissions.csv.gz")
    def swap(df): df.loc[12, ["admittime", "dischtime"]] = df.loc[12, ["dischtime", "admittime"]].to_numpy()
    data = _hosp_with(tmp_path, "admissions", swap)
    with pytest.raises(ValueError) as e:
        mimic_admissions(data / "hosp")
    assert str(e.value) == (f"{data / 'hosp' / 'admissions.csv.gz'}: line 14 (hadm_id {adm['hadm_id'][12]}): dischtime "
                            f"{adm['admittime'][12]} is before admittime {adm['dischtime'][12]}; 1 row(s) like this "
                            f"(1 hadm_id value(s))")


@need_tjh
@need_trec
def test_header_only_files_are_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    from ehr_rlvr.io import InputFileError
    from ehr_rlvr.trials.data import load_trec_pairs
    path = _tjh_with(tmp_path, lambda df: df.iloc[:0])
    with pytest.raises(InputFileError, match=rf"^{path}: no data rows \(only the header\)"):
        load_tjh(path)
    year = tmp_path / "trec_2021"; (year / "qrels").mkdir(parents=True)
    shutil.copy(Y2021 / "queries.jsonl", year); shutil.copy(Y2021 / "trials_parsed_from_ehrmind_prompts.jsonl", year)
    header = (Y2021 / "qrels" / "test.tsv").read_text().splitlines()[0]
    (year / "qrels" / "test.tsv").write_text(header + "\n")
    with pytest.raises(InputFileError, match=rf"^{year / 'qrels' / 'test.tsv'}: the qrels file has the header \(line 1\) but no "
                                             r"judgment: nothing to evaluate$"):
        load_trec_pairs(year)


@pytest.mark.skipif(not TJH_XLSX.exists(), reason=f"TJH workbook not found at {TJH_XLSX} (set EHR_RLVR_DATA)")
def test_a_corrupt_xlsx_is_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    from ehr_rlvr.io import InputFileError
    path = tmp_path / TJH_XLSX.name
    path.write_bytes(TJH_XLSX.read_bytes()[: TJH_XLSX.stat().st_size // 2])   # a truncated download
    with pytest.raises(InputFileError, match=rf"^{path}: not a readable Excel workbook \(BadZipFile: .*\); re-export it, or use "
                                             r"the published CSV time_series_375_en\.csv$"):
        load_tjh(path)


@need_mimic
def test_mimic_admittime_yesterday_is_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_mimic
    adm = pd.read_csv(HOSP / "admissions.csv.gz")
    data = _hosp_with(tmp_path, "admissions", lambda df: df.__setitem__("admittime", df["admittime"].where(df.index != 7, "yesterday")))
    with pytest.raises(ValueError) as e:
        load_mimic(data, "mortality")
    assert str(e.value) == (f"{data / 'hosp' / 'admissions.csv.gz'}: line 9 (hadm_id {adm['hadm_id'][7]}): admittime 'yesterday' "
                            f"is not a date-time (e.g. '2180-05-06 22:23:00'); 1 row(s) like this (1 hadm_id value(s))")


@need_tjh
def test_unclear_messages_now_name_the_file_and_the_problem(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    def p1(df):
        df["PATIENT_ID"] = df["PATIENT_ID"].astype(object); df.loc[0, "PATIENT_ID"] = "P1"
    path = _tjh_with(tmp_path, p1)
    with pytest.raises(ValueError, match=rf"^{path}: line 2: PATIENT_ID 'P1' is not an integer id \(TJH numbers its patients "
                                         r"1, 2, \.\.\.\); 1 row\(s\) like this$"):
        load_tjh(path)
    path = _tjh_with(tmp_path, lambda df: df.iloc[:20])
    n = pd.read_csv(path)["PATIENT_ID"].notna().sum()
    with pytest.raises(ValueError, match=rf"^{path}: too few patients per class for a train/val/test split \(0 patient\(s\) with "
                                         rf"label 1 and {n} with label 0\); each class needs at least 3 \(one per split\)"):
        load_tjh(path)
    path, out = _tjh_with(tmp_path, lambda df: df.__setitem__("outcome", 0)), tmp_path / "out"
    p = run_cli("experts", "train", "--dataset", "tjh", "--task", "mortality", "--model", "gru", "--data", path, "--out", out,
                timeout=600)
    assert p.returncode == 2 and not out.exists(), p.stderr[-2000:]
    assert (f"ehr-rlvr experts: error: {path}: every patient has the same outcome label (0 patient(s) with label 1 and 375 "
            f"with label 0): a binary outcome needs both classes; check the label column") in p.stderr
    assert "All-NaN" not in p.stderr


# ---- the real files are unchanged ----------------------------------------------------------------------------------
@need_tjh
@need_mimic
@need_meds
def test_the_real_files_still_load_unchanged():
    from ehr_rlvr.diagnosis.labels import label_task
    from ehr_rlvr.diagnosis.meds import read_meds
    from ehr_rlvr.ehr.cohorts import load_mimic, load_tjh
    t = load_tjh(TJH_CSV)
    assert (len(t), int(t.y.sum()), t.info["skipped_rows_without_RE_DATE"]) == (375, 174, 14)
    m, r = load_mimic(DATA_ROOT / "mimic_iv_demo", "mortality"), load_mimic(DATA_ROOT / "mimic_iv_demo", "readmission")
    assert (len(m), int(m.y.sum()), len(r), int(r.y.sum())) == (220, 13, 260, 53)
    ev = read_meds(MEDS)
    _, s = label_task(ev, "readmission_30d")
    assert (s["n_prediction_times"], s["n_positive"], s["n_negative"], s["n_censored"]) == (275, 51, 176, 31)
