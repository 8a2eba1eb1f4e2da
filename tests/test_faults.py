"""Fault injection: bad input never gives a silent result. Each test breaks ONE thing in a real file (copied from the
data root to tmp_path) or in the project's synthetic rows, and asserts the exact outcome: a correct (counted) result,
or an error that names the file and the line / row / patient.

| case | broken input | expected outcome |
|---|---|---|
| 1 encodings | MedCalc CSV saved as Latin-1 | `InputFileError` naming file, line, byte offset, byte and `encoding='latin-1'`; that encoding reads it |
| 1 encodings | MedCalc CSV / TJH CSV gzipped under a `.csv` name | read exactly as the plain file |
| 1 encodings | a raw 0xff byte on one line of a completions JSONL | `InputFileError` naming file, line and byte offset |
| 1 encodings | a non-UTF-8 byte in the TJH CSV; MIMIC labevents read in chunks | error naming file and line; chunked read == whole read |
| 2 one completion | a lone surrogate (`"\\ud800"`) in one completion | one row `format_ok=False`, `reason='unencodable_text'`, stored with U+FFFD; the rest scored |
| 2 one completion | a verifier that raises on one row | one row `reason='score_error: ...'`; the evaluation finishes |
| 3 unusable gold | 2 of 5 real MedCalc rows with gold `''` / `'nan'` | accuracy 1.0 on the 3 scorable rows, `n_unscorable_gold` 2, a warning naming them |
| 3 unusable gold | verifier returns `reward: None` (gold_unusable) in `score_rows` | no `float(None)` crash; reward NaN; left out of accuracy and CIs |
| 4 MedCalc rows | Lower Limit > Upper Limit in one row of the real dev CSV | `ValueError` naming the file and the Row Number |
| 4 MedCalc rows | Calculator ID 999 in one row | `ValueError` naming the file and the Row Number |
| 4 MedCalc rows | (none) the real dev / train CSVs and data/medcalc_synthetic_sample.csv | load unchanged (525 / 98 / 110 rows) |
| 5 expert cohorts | TJH outcome 2 for one patient | `ValueError` naming the file and the patient |
| 5 expert cohorts | a TJH PATIENT_ID reused for a person with another age / sex | `ValueError` naming the file and the patient |
| 5 expert cohorts | MIMIC patients: one subject_id with two anchor_age values; expire flag 2 | `ValueError` naming the file and the subject_id / hadm_id |
| 5 expert cohorts | (none) the real TJH table | 375 patients, 174 deaths (per-day rows repeat age/sex: no error) |
"""
import gzip
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import DATA_ROOT, ROOT

MEDCALC = DATA_ROOT / "medcalc_bench"
DEV_CSV, TRAIN_CSV = MEDCALC / "test_data_v1.0_dev.csv", MEDCALC / "train_subset_98_from_ehrmind_val.csv"
TJH_CSV = DATA_ROOT / "tjh" / "time_series_375_en.csv"
HOSP = DATA_ROOT / "mimic_iv_demo" / "mimic-iv-clinical-database-demo-2.2" / "hosp"
SAMPLE_CSV = ROOT / "data" / "medcalc_synthetic_sample.csv"  # made by the project, versioned
need_dev = pytest.mark.skipif(not DEV_CSV.exists(), reason=f"MedCalc dev CSV not found at {DEV_CSV} (set EHR_RLVR_DATA)")
need_tjh = pytest.mark.skipif(not TJH_CSV.exists(), reason=f"TJH table not found at {TJH_CSV} (set EHR_RLVR_DATA)")
need_mimic = pytest.mark.skipif(not (HOSP / "admissions.csv.gz").exists(), reason=f"MIMIC-IV demo not found at {HOSP} (set EHR_RLVR_DATA)")


def _dev_frame(n=None) -> pd.DataFrame:
    "The real dev CSV as strings (the published cells, nothing normalised)."
    df = pd.read_csv(DEV_CSV, dtype=str, keep_default_na=False)
    return df if n is None else df.iloc[:n].copy()


def _gold_value(r):
    from ehr_rlvr.medcalc.verify import gold_answer_value
    return gold_answer_value({"answer": r["Ground Truth Answer"], "lower": r["Lower Limit"], "upper": r["Upper Limit"],
                              "output_type": r["Output Type"], "calculator_id": str(r["Calculator ID"])})


def _synthetic_rows(n=5):
    "Task rows from the project's synthetic note generator (no data root needed)."
    from ehr_rlvr.medcalc.synthetic import generate_notes
    from ehr_rlvr.tasks import get_task
    task = get_task("medcalc")
    rows = task.build_splits(source=generate_notes([5, 39], 6, seed=1), style="compact", seed=0, val_frac=0.0, test_frac=0.0)["train"]
    return task, [dict(r) for r in rows.select(range(n))]


# ---- case 1: encodings ---------------------------------------------------------------------------------------------
@need_dev
def test_latin1_medcalc_csv_names_file_line_byte_and_fix(tmp_path):
    from ehr_rlvr.io import InputFileError
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    df = _dev_frame()
    df = df[df.apply(lambda r: all(v.isascii() for v in r), axis=1)].iloc[:20].copy()  # the é below is the only non-ASCII
    df.iloc[3, df.columns.get_loc("Patient Note")] = "Café owner. " + df.iloc[3]["Patient Note"]
    path = tmp_path / "dev_latin1.csv"
    df.to_csv(path, index=False, encoding="latin-1")
    raw = path.read_bytes()
    off = raw.index(b"Caf\xe9") + 3
    line = raw[:off].count(b"\n") + 1
    with pytest.raises(InputFileError) as e:
        read_medcalc_csv(path)
    msg = str(e.value)
    assert f"{path}: not valid utf-8 text at line {line}, byte offset {off} (byte 0xe9)" in msg, msg
    assert "encoding='latin-1'" in msg and isinstance(e.value, ValueError)
    got = read_medcalc_csv(path, encoding="latin-1")
    assert len(got) == 20 and got["Patient Note"][3].startswith("Café owner.")


@need_dev
def test_gzip_named_csv_reads_like_the_plain_file(tmp_path):
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    path = tmp_path / "dev.csv"                                     # gzip bytes, a plain .csv name
    path.write_bytes(gzip.compress(DEV_CSV.read_bytes()))
    pd.testing.assert_frame_equal(read_medcalc_csv(path), read_medcalc_csv(DEV_CSV))


@need_dev
def test_invalid_utf8_in_completions_jsonl_names_file_and_line(tmp_path):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.io import InputFileError
    from ehr_rlvr.rewards import format_completion
    dev = _dev_frame(4)
    lines = [json.dumps({"row": int(r["Row Number"]), "completion": format_completion("...", _gold_value(r))}).encode()
             for _, r in dev.iterrows()]
    lines[2] = lines[2].replace(b"...", b".\xff.")                  # one bad byte on line 3
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    off = len(lines[0]) + len(lines[1]) + 2 + lines[2].index(b"\xff")
    with pytest.raises(InputFileError, match=rf"c\.jsonl: not valid utf-8 text at line 3, byte offset {off} \(byte 0xff\)"):
        evaluate_completions("medcalc", str(DEV_CSV), str(path))


@need_tjh
def test_tjh_csv_gzip_and_bad_byte(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    from ehr_rlvr.io import InputFileError
    gz = tmp_path / "tjh.csv"
    gz.write_bytes(gzip.compress(TJH_CSV.read_bytes()))
    a, b = load_tjh(TJH_CSV), load_tjh(gz)
    assert (a.ids, a.y.tolist()) == (b.ids, b.y.tolist()) and np.array_equal(a.X, b.X, equal_nan=True)
    raw = TJH_CSV.read_bytes().splitlines(keepends=True)
    raw[101] = raw[101].replace(b",", b",\xe9", 1)                   # line 102 of the file
    bad = tmp_path / "tjh_bad.csv"
    bad.write_bytes(b"".join(raw))
    with pytest.raises(InputFileError, match=r"tjh_bad\.csv: not valid utf-8 text at line 102, byte offset \d+ \(byte 0xe9\)"):
        load_tjh(bad)


@need_mimic
def test_mimic_events_still_stream_in_chunks():
    from ehr_rlvr.ehr.cohorts import MIMIC_LABS, read_events_csv
    whole = pd.read_csv(HOSP / "labevents.csv.gz", usecols=["subject_id", "itemid", "charttime", "valuenum"])
    whole = whole[whole["itemid"].isin(list(MIMIC_LABS)) & whole["valuenum"].notna()]
    got = read_events_csv(HOSP / "labevents.csv.gz", list(MIMIC_LABS), chunksize=10_000)   # ~11 chunks
    assert len(got) == len(whole) > 1000
    assert got["value"].sum() == pytest.approx(whole["valuenum"].sum())


# ---- case 2: one completion never aborts an evaluation ------------------------------------------------------------
def test_lone_surrogate_is_one_format_failure_and_is_stored(tmp_path):
    from ehr_rlvr.evaluate import score_rows, summarize, write_eval
    task, rows = _synthetic_rows(5)
    comps = [[task.sft_completion(r)] for r in rows]
    comps[2] = [comps[2][0].replace("</think>", "\ud800</think>")]
    scored = score_rows(task, rows, comps)
    assert scored["reason"].tolist() == ["correct", "correct", "unencodable_text", "correct", "correct"]
    assert scored["format_ok"].tolist() == [True, True, False, True, True] and scored["scorable"].all()
    m = {r["metric"]: r for r in summarize(task, scored, n_boot=20)}
    assert m["accuracy"]["value"] == pytest.approx(0.8) and m["accuracy"]["n"] == 5
    write_eval(tmp_path, task, "base", scored, list(m.values()))
    back = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(back) == 5 and "\ufffd</think>" in back["completion"][2] and back["reason"][2] == "unencodable_text"
    assert back["gold"].tolist() == [r["ground_truth"]["answer"] for r in rows]


def test_a_verifier_error_is_one_row_not_a_crash():
    from ehr_rlvr.evaluate import score_rows
    task, rows = _synthetic_rows(3)

    class Flaky(type(task)):
        def score(self, completion, ground_truth):
            if ground_truth is rows[1]["ground_truth"]: raise ZeroDivisionError("division by zero")
            return super().score(completion, ground_truth)
    scored = score_rows(Flaky(), rows, [[task.sft_completion(r)] for r in rows])
    assert scored["reason"].tolist() == ["correct", "score_error: ZeroDivisionError: division by zero", "correct"]
    assert scored["format_ok"].tolist() == [True, False, True]


@need_dev
def test_lone_surrogate_in_completions_jsonl(tmp_path):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.rewards import format_completion
    dev = _dev_frame(3)
    lines = [{"row": int(r["Row Number"]), "completion": format_completion("...", _gold_value(r))} for _, r in dev.iterrows()]
    lines[1]["completion"] = format_completion("CrCl \ud800", _gold_value(dev.iloc[1]))
    data, comp, pred = tmp_path / "three.csv", tmp_path / "c.jsonl", tmp_path / "p.jsonl"
    dev.to_csv(data, index=False)
    comp.write_text("".join(json.dumps(l) + "\n" for l in lines))   # json.dumps writes the escape \ud800
    res = evaluate_completions("medcalc", str(data), str(comp), predictions=str(pred))
    got = [json.loads(l) for l in pred.read_text(encoding="utf-8").splitlines()]
    assert [g["reason"] for g in got] == ["correct", "unencodable_text", "correct"]
    assert res["accuracy"] == pytest.approx(2 / 3) and res["n_rows"] == 3 and res["n_unscorable_gold"] == 0


# ---- case 3: unusable gold ------------------------------------------------------------------------------------------
@need_dev
def test_unusable_gold_rows_are_excluded_counted_and_warned(tmp_path):
    from ehr_rlvr.completions import evaluate_completions
    from ehr_rlvr.rewards import format_completion
    dev = _dev_frame(5)
    lines = [{"row": int(r["Row Number"]), "completion": format_completion("...", _gold_value(r))} for _, r in dev.iterrows()]
    dev.loc[[1, 3], "Ground Truth Answer"] = ["", "nan"]
    broken = [int(dev["Row Number"][i]) for i in (1, 3)]
    data, comp = tmp_path / "five.csv", tmp_path / "c.jsonl"
    dev.to_csv(data, index=False)
    comp.write_text("".join(json.dumps(l) + "\n" for l in lines))
    with pytest.warns(UserWarning, match=rf"five\.csv: 2 of 5 row\(s\) have an unusable gold label .*{broken[0]}, {broken[1]}"):
        res = evaluate_completions("medcalc", str(data), str(comp), out=str(tmp_path / "m.json"))
    assert (res["accuracy"], res["n_correct"], res["n_unscorable_gold"], res["unscorable_rows"]) == (1.0, 3, 2, broken)
    assert res["format_valid_rate"] == 1.0 and json.loads((tmp_path / "m.json").read_text())["n_unscorable_gold"] == 2


def test_reward_none_from_the_verifier_does_not_crash_score_rows():
    from ehr_rlvr.evaluate import score_rows, summarize
    task, rows = _synthetic_rows(5)
    comps = [[task.sft_completion(r)] for r in rows]
    for i in (0, 4):   # limits the verifier cannot parse: score_completion gives reward None, reason gold_unusable
        rows[i]["ground_truth"] = {**rows[i]["ground_truth"], "lower": "", "upper": "", "output_type": "decimal"}
    with pytest.warns(UserWarning, match=r"score_rows: 2 of 5 row\(s\) have an unusable gold label"):
        scored = score_rows(task, rows, comps)
    assert np.isnan(scored["reward"]).tolist() == [True, False, False, False, True]
    assert scored["scorable"].tolist() == [False, True, True, True, False]
    m = {r["metric"]: r for r in summarize(task, scored, n_boot=50)}
    assert (m["accuracy"]["value"], m["accuracy"]["ci_low"], m["accuracy"]["n"]) == (1.0, 1.0, 3)
    assert m["n_unscorable_gold"]["value"] == 2 and m["format_valid_rate"]["n"] == 5
    tm = task.metrics(scored)
    assert (tm["accuracy"], tm["n"], tm["n_unscorable_gold"]) == (1.0, 5.0, 2.0)


# ---- case 4: MedCalc CSV rows ---------------------------------------------------------------------------------------
@need_dev
def test_swapped_limits_are_refused_naming_file_and_row(tmp_path):
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    df = _dev_frame()
    i = int(np.flatnonzero(df["Output Type"].eq("decimal").to_numpy())[7])
    rn, lo, hi = df.loc[i, "Row Number"], df.loc[i, "Lower Limit"], df.loc[i, "Upper Limit"]
    df.loc[i, ["Lower Limit", "Upper Limit"]] = [hi, lo]
    path = tmp_path / "dev_swapped.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError) as e:
        read_medcalc_csv(path)
    assert f"{path}: Row Number {rn}: Lower Limit {hi!r} > Upper Limit {lo!r} (swapped limits" in str(e.value)


@need_dev
def test_unknown_calculator_id_is_refused_naming_file_and_row(tmp_path):
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    df = _dev_frame()
    rn = df.loc[42, "Row Number"]
    df.loc[42, "Calculator ID"] = "999"
    path = tmp_path / "dev_999.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"dev_999\.csv: Row Number {rn}: unknown Calculator ID 999 \(no calculator"):
        read_medcalc_csv(path)


@need_dev
def test_real_medcalc_files_still_load():
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    assert len(read_medcalc_csv(DEV_CSV)) == 525
    assert len(read_medcalc_csv(TRAIN_CSV)) == 98
    assert len(read_medcalc_csv(SAMPLE_CSV)) == 110


# ---- case 5: expert cohorts -----------------------------------------------------------------------------------------
def _tjh_with(tmp_path, edit) -> "Path":
    df = pd.read_csv(TJH_CSV)
    edit(df)
    path = tmp_path / "tjh_broken.csv"
    df.to_csv(path, index=False)
    return path


def _first_rows(df) -> pd.Series:
    return df.index[df["PATIENT_ID"].notna()]


@need_tjh
def test_tjh_outcome_outside_0_1_is_refused_naming_patient(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    def edit(df):
        i = _first_rows(df)[10]; pid = int(df.loc[i, "PATIENT_ID"])
        j = _first_rows(df)[11]
        df.loc[i:j - 1, "outcome"] = 2
        edit.pid = pid
    path = _tjh_with(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"tjh_broken\.csv: outcome must be 0 \(survived\) or 1 \(died\); patient\(s\) \['{edit.pid}'\] have \['2'\]"):
        load_tjh(path)


@need_tjh
def test_tjh_reused_patient_id_with_other_demographics_is_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import load_tjh
    def edit(df):
        first = _first_rows(df)
        a, b = first[0], next(i for i in first[1:] if df.loc[i, "age"] != df.loc[first[0], "age"])
        edit.pid = int(df.loc[a, "PATIENT_ID"])
        df.loc[b, "PATIENT_ID"] = edit.pid          # patient b's block now carries a's id
    path = _tjh_with(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"tjh_broken\.csv: conflicting values within one patient \({edit.pid}: age \["):
        load_tjh(path)


@need_mimic
def test_mimic_conflicting_patient_rows_and_bad_flag_are_refused(tmp_path):
    from ehr_rlvr.ehr.cohorts import mimic_admissions
    hosp = tmp_path / "hosp"; hosp.mkdir()
    shutil.copy(HOSP / "admissions.csv.gz", hosp)
    pat = pd.read_csv(HOSP / "patients.csv.gz")
    sid = int(pat["subject_id"][5])
    twin = pat.iloc[[5]].assign(anchor_age=pat["anchor_age"][5] + 7)
    pd.concat([pat, pat.iloc[[5]], twin]).to_csv(hosp / "patients.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match=rf"patients\.csv\.gz: conflicting demographics for one subject_id \({sid}: anchor_age \["):
        mimic_admissions(hosp)
    pd.concat([pat, pat.iloc[[5]]]).to_csv(hosp / "patients.csv.gz", index=False, compression="gzip")
    assert len(mimic_admissions(hosp)) == 275                                # an exact repeat is one person
    adm = pd.read_csv(HOSP / "admissions.csv.gz")
    hadm = int(adm["hadm_id"][9]); adm.loc[9, "hospital_expire_flag"] = 2
    adm.to_csv(hosp / "admissions.csv.gz", index=False, compression="gzip")
    with pytest.raises(ValueError, match=rf"admissions\.csv\.gz: hospital_expire_flag must be 0 or 1; hadm_id\(s\) \[{hadm}\]"):
        mimic_admissions(hosp)


@need_tjh
def test_real_tjh_still_loads():
    from ehr_rlvr.ehr.cohorts import load_tjh
    c = load_tjh(TJH_CSV)
    assert (len(c), int(c.y.sum()), set(np.unique(c.y).tolist())) == (375, 174, {0, 1})


# ---- run integrity: the pipeline runner on the real stages (smoke config) ------------------------------------------
# | case | what the user does | expected outcome |
# |---|---|---|
# | stale results | rerun a run id with `sft_learning_rate` changed | refused, naming `30_sft.sft_learning_rate: old -> new`; nothing touched |
# | stale results | the same with `--rerun-changed --only 30_sft` | SFT reruns; every later stage's outputs are discarded and marked stale |
# | stale results | rerun with `task_params.n_per_calculator` changed and `--rerun-changed` | every stage reruns; every evaluated id is in the new test split |
# | foreign checkpoint | an RL checkpoint of another configuration in `rl/<name>/` | discarded, training starts from the stage's own init |
# | --only on stale upstream | `--only 40_rlvr_sft --force` after an upstream change | refused, naming the stale earlier stage |
# | killed forced rerun | SIGKILL during `--only 50_evaluate --force`, then a plain rerun | the stage reruns ("interrupted earlier"), same results |
# | late types | `task_params: {n_per_calculator: "ten"}` | refused before anything runs, naming the parameter; no run folder left |
import os
import signal
import subprocess
import time

import yaml

from conftest import CLI, run_cli


def _smoke_cfg(tmp_path, name="cfg.yaml", task_params=None, **changes):
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg.update(changes)
    cfg["task_params"].update(task_params or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _copy_run(smoke_run, tmp_path, name):
    shutil.copytree(smoke_run, tmp_path / "runs" / name)
    return tmp_path / "runs" / name


def _pipe(cfg, tmp_path, run_id, *extra):
    return run_cli("pipeline", cfg, "--run-id", run_id, "--runs-root", tmp_path / "runs", "--no-progress", *extra)


def test_changed_upstream_parameter_is_refused_or_reruns_everything_after_it(smoke_run, tmp_path):
    from ehr_rlvr.pipeline import read_record
    run = _copy_run(smoke_run, tmp_path, "r")
    before = (run / "models" / "sft" / "model.safetensors").read_bytes()
    cfg = _smoke_cfg(tmp_path, sft_learning_rate=0.002)
    p = _pipe(cfg, tmp_path, "r")
    assert p.returncode == 2 and "30_sft.sft_learning_rate: 0.001 -> 0.002" in p.stderr and "--rerun-changed" in p.stderr
    assert (run / "models" / "sft" / "model.safetensors").read_bytes() == before  # refused: nothing touched
    p = _pipe(cfg, tmp_path, "r", "--rerun-changed", "--only", "30_sft")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "30_sft: running 30_sft.ipynb (sft_learning_rate: 0.001 -> 0.002)" in p.stdout
    assert (run / "models" / "sft" / "model.safetensors").read_bytes() != before
    for stale in ("40_rlvr_base", "40_rlvr_sft", "50_evaluate", "20_pilot_sft_rlvr", "60_report"):
        assert read_record(run, stale)["status"] == "stale", stale
    for gone in ("models/sft_rlvr", "models/rlvr", "eval/sft/predictions.parquet", "report/results.csv"):
        assert not (run / gone).exists(), f"stale output {gone} survived an upstream rerun"
    # --only on a stage whose upstream is stale: refused, naming the stage
    p = _pipe(cfg, tmp_path, "r", "--only", "40_rlvr_sft", "--force")
    assert p.returncode == 2 and "the earlier stage '40_rlvr_base' is not done for this config" in p.stderr


def test_changed_data_size_reruns_every_stage_on_the_new_split(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path, "r")
    p = _pipe(_smoke_cfg(tmp_path, task_params={"n_per_calculator": 12}), tmp_path, "r", "--rerun-changed")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "10_data: running 10_data.ipynb (task_params.n_per_calculator: 10 -> 12)" in p.stdout
    assert "skipped" not in p.stdout
    test_ids = set(json.loads((run / "data" / "split_ids.json").read_text())["test"])
    for regime in ("base", "sft", "rlvr", "sft_rlvr"):
        assert set(pd.read_parquet(run / "eval" / regime / "predictions.parquet")["id"]) == test_ids, regime
    man = json.loads((run / "manifest.json").read_text())
    changes = man["invocation"]["config_changes"]  # every stage that takes the task's parameters names the change
    assert {c.split(".")[0] for c in changes} >= {"10_data", "15_pretrain", "30_sft", "50_evaluate"}, changes
    assert all(c.endswith(".task_params.n_per_calculator: 10 -> 12") for c in changes), changes
    assert all(e["action"] == "ran" for e in man["stage_log"])


def test_a_checkpoint_of_another_configuration_is_never_resumed(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path, "r")
    foreign = run / "rl" / "sft_rlvr"
    shutil.copytree(run / "rl" / "rlvr" / "checkpoint-2", foreign / "checkpoint-9")  # another run's checkpoint
    (foreign / "identity.json").write_text(json.dumps({"identity": "someone-else"}))
    p = _pipe(ROOT / "configs" / "smoke.yaml", tmp_path, "r", "--only", "40_rlvr_sft", "--force")
    assert p.returncode == 0, p.stderr[-2000:]
    executed = (run / "40_rlvr_sft.ipynb").read_text()
    assert "resume from None" in executed and "checkpoint-9" not in json.dumps(sorted(p.name for p in foreign.iterdir()))


def test_a_killed_forced_rerun_never_looks_done(smoke_run, tmp_path):
    from ehr_rlvr.pipeline import read_record
    run = _copy_run(smoke_run, tmp_path, "r")
    cfg = ROOT / "configs" / "smoke.yaml"
    args = ["pipeline", str(cfg), "--run-id", "r", "--runs-root", str(tmp_path / "runs"), "--no-progress"]
    proc = subprocess.Popen([*CLI, *args, "--only", "50_evaluate", "--force"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (read_record(run, "50_evaluate") or {}).get("status") != "running":
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)  # inside the stage's notebook
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_record(run, "50_evaluate")["status"] == "running"
    p = run_cli(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "50_evaluate: running 50_evaluate.ipynb (interrupted earlier)" in p.stdout
    assert "40_rlvr_sft: done earlier with the same inputs, skipped" in p.stdout
    pd.testing.assert_frame_equal(pd.read_csv(smoke_run / "report" / "results.csv"), pd.read_csv(run / "report" / "results.csv"))


def test_parameter_types_are_checked_before_anything_runs(tmp_path):
    p = _pipe(_smoke_cfg(tmp_path, task_params={"n_per_calculator": "ten"}), tmp_path, "typed")
    assert p.returncode == 2
    assert "task_params.n_per_calculator must be int, got 'ten' (str)" in p.stderr and "10_data" in p.stderr
    assert not (tmp_path / "runs" / "typed").exists(), "a refused config must not leave a run folder"
