"""A newcomer's view of the CLI (issue "No silent wrong result", findings 5, 8 and 11): help that says what each task
reads, errors that say something, an --encoding option wherever an error suggests one, outputs that never replace an
input.

| case | outcome now |
|---|---|
| `evaluate-completions --help` | names every task's data file, row key and required `--task-param` (label_task, source) |
| `evaluate-completions --task mixture` | exit 2: a mixture has no data file of its own, score each of its tasks on its own file |
| a Latin-1 MedCalc CSV without, then with `--encoding latin-1` | exit 2 with the hint `--encoding latin-1`; with it: scored |
| `diagnosis labels --out` equal to `--meds` | exit 2; the parquet is unchanged |
| a Latin-1 `--codes` concept list | `InputFileError` naming the file and the line (it was a bare UnicodeDecodeError) |
"""
import json

import pytest

from conftest import DATA_ROOT, ROOT, run_cli

DEMO_MEDS = DATA_ROOT / "mimic_iv_demo" / "meds_events_with_chartevents" / "mimic_iv_demo_meds_events.parquet"
SAMPLE = ROOT / "data" / "medcalc_synthetic_sample.csv"


def test_evaluate_completions_help_says_what_each_task_reads():
    p = run_cli("evaluate-completions", "--help")
    assert p.returncode == 0
    for words in ("medcalc         a MedCalc-Bench CSV", 'row = "<query id>:<NCT id>"', "needs --task-param label_task=",
                  "needs --task-param source=tjh | mimic-iv", "--encoding", "never left out"):
        assert words in p.stdout, words


def test_a_mixture_is_refused_with_what_to_do(tmp_path):
    comp = tmp_path / "c.jsonl"
    comp.write_text('{"row": 1, "completion": "x"}\n')
    p = run_cli("evaluate-completions", "--task", "mixture", "--data", SAMPLE, "--completions", comp)
    assert p.returncode == 2
    assert "has no data file of its own: score each of its tasks on its own data file (--task one of" in p.stderr


def test_a_latin1_csv_names_the_option_that_reads_it(tmp_path):
    text = SAMPLE.read_text(encoding="utf-8")
    first = text.splitlines()[1]
    data = tmp_path / "latin1.csv"
    data.write_bytes(text.replace(first, first.replace("attends", "attends the café", 1), 1).encode("latin-1", errors="replace"))  # one é in row 1
    comp = tmp_path / "c.jsonl"
    comp.write_text('{"row": 1, "completion": "x"}\n')
    p = run_cli("evaluate-completions", "--task", "medcalc", "--data", data, "--completions", comp)
    assert p.returncode == 2 and "latin1.csv: not valid utf-8 text at line 2" in p.stderr and "--encoding latin-1" in p.stderr
    ok = run_cli("evaluate-completions", "--task", "medcalc", "--data", data, "--completions", comp, "--encoding", "latin-1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    res = json.loads(ok.stdout.strip().splitlines()[-1])
    assert res["n_rows"] == 110 and res["n_scored"] == 1 and res["n_missing"] == 109


@pytest.mark.skipif(not DEMO_MEDS.exists(), reason=f"MIMIC-IV demo MEDS file not found at {DEMO_MEDS} (set EHR_RLVR_DATA)")
def test_diagnosis_labels_never_write_over_the_meds_input(tmp_path):
    meds = tmp_path / "events.parquet"
    meds.write_bytes(DEMO_MEDS.read_bytes())
    before = meds.read_bytes()
    p = run_cli("diagnosis", "labels", "--meds", meds, "--task", "readmission_30d", "--out", meds)
    assert p.returncode == 2 and "is the MEDS input" in p.stderr, p.stderr[-2000:]
    assert meds.read_bytes() == before


def test_a_non_utf8_code_list_names_the_file_and_line(tmp_path):
    from ehr_rlvr.diagnosis.labels import read_code_list
    from ehr_rlvr.io import InputFileError
    codes = tmp_path / "codes.txt"
    codes.write_bytes("ICD10CM/I10\n# hypertension, caf\u00e9\nICD10CM/I11\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=r"codes.txt: not valid utf-8 text at line 2"):
        read_code_list(codes)
    codes.write_text("ICD10CM/I10\n# hypertension\nICD10CM/I11\n")
    assert read_code_list(codes) == ["ICD10CM/I10", "ICD10CM/I11"]
