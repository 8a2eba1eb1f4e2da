"The task-agnostic core: generic modules and stage notebooks name no task; trial matching end to end on real TREC pairs."
import json
import re

import nbformat
import pandas as pd
import pytest

from conftest import DATA_ROOT, ROOT, run_cli

# every task lives in its own package (ehr_rlvr/<task>/); these words belong to one task or another
TASK_WORDS = re.compile(r"medcalc|calculator|categor|trials?\b|trec|eligib|ehrmind_matching|diagnosis[._]|hypertension|"
                        r"readmission_30d|label_task", re.IGNORECASE)
TASK_PACKAGES = {"medcalc", "trials", "diagnosis", "eagrl"}  # (the `mixture` package is generic: it names no task either)
# the CLI hosts each task's own tools as subcommands (`ehr-rlvr medcalc audit`): its task words are those commands'
CLI_EXEMPT = {"cli.py"}
TREC = DATA_ROOT / "trec_ct" / "trec_2021"


def _generic_modules():
    lib = ROOT / "ehr_rlvr"
    return [p for p in sorted(lib.rglob("*.py"))
            if p.relative_to(lib).parts[0] not in TASK_PACKAGES and p.name not in CLI_EXEMPT | {"_modidx.py"}]


@pytest.mark.parametrize("path", _generic_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_generic_module_names_no_task(path):
    hits = [f"{i}: {l.strip()}" for i, l in enumerate(path.read_text().splitlines(), 1) if TASK_WORDS.search(l)]
    assert not hits, f"{path.relative_to(ROOT)} names a task or its columns:\n" + "\n".join(hits[:10])


@pytest.mark.parametrize("path", sorted((ROOT / "nbs" / "pipeline").glob("*.ipynb")), ids=lambda p: p.name)
def test_stage_notebook_code_names_no_task(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [l for c in nb.cells if c.cell_type == "code" for l in c.source.splitlines()]
    hits = [l.strip() for l in code if TASK_WORDS.search(l)]
    assert not hits, f"{path.name} names a task or its columns in code:\n" + "\n".join(hits[:10])


def test_the_grep_finds_what_it_is_meant_to(tmp_path):
    # the check can fail: a line naming a task's column is caught
    assert TASK_WORDS.search('df.groupby("calculator_id")') and TASK_WORDS.search("get_task('trials')")
    assert TASK_WORDS.search("from ehr_rlvr.diagnosis.labels import label_task")
    assert not TASK_WORDS.search("rows = t.build_splits(out, seed=seed)")


def test_every_task_is_found_by_the_registry_and_declares_its_kind():
    "Every `ehr_rlvr/<package>/task.py` registers its task; each builds with its defaults and declares a consistent kind."
    from ehr_rlvr.metrics import KIND_METRICS
    from ehr_rlvr.tasks import ANSWER_KINDS, all_tasks, get_task
    modules = sorted(p.parent.name for p in (ROOT / "ehr_rlvr").glob("*/task.py"))
    tasks = all_tasks()
    assert sorted({cls.__module__.split(".")[1] for cls in tasks.values()}) == modules  # no task module registers nothing
    assert set(tasks) == {"medcalc", "trials", "diagnosis", "ehr_prediction", "mixture"}
    for name, cls in tasks.items():
        t = get_task(name)
        assert type(t) is cls and t.answer_kind in ANSWER_KINDS, name
        assert t.main_metric in KIND_METRICS[t.answer_kind], (name, t.main_metric)
        if t.answer_kind != "exact":  # a label task's classes; a probability task's two outcomes
            assert len(t.labels) == (2 if t.answer_kind == "probability" else len(t.labels)) >= 2, (name, t.labels)
        assert all(k in t.PARAMS for k in t.scoring_params), name


def test_a_task_is_imported_alone_and_the_list_needs_no_import():
    "get_task imports only the package that declares the task; task_names reads every task's name from source."
    import subprocess, sys
    code = ("import sys; from ehr_rlvr.tasks import get_task, task_names; names = task_names(); get_task('trials'); "
            "print(sorted(names)); print(sorted(m.split('.')[1] for m in sys.modules if m.startswith('ehr_rlvr.') "
            "and m.endswith('.task')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names, imported = out.stdout.strip().splitlines()[-2:]
    assert names == str(["diagnosis", "ehr_prediction", "medcalc", "mixture", "trials"])
    assert imported == str(["trials"])


def _trec_completions(path, pairs, wrong_every=3):
    "Gold answers, except every `wrong_every`-th pair answered `Eligible`, and one malformed completion."
    from ehr_rlvr.trials.data import format_answer
    with open(path, "w") as f:
        for i, r in enumerate(pairs.itertuples()):
            label = 2 if i % wrong_every == 0 else int(r.label)
            text = format_answer("criteria checked one by one", label) if i != 1 else "Eligible."
            f.write(json.dumps({"row": r.pair_id, "completion": text}) + "\n")


@pytest.mark.skipif(not TREC.exists(), reason=f"TREC CT 2021 data not found at {TREC} (set EHR_RLVR_DATA)")
def test_evaluate_completions_on_trec_2021(tmp_path):
    from sklearn.metrics import cohen_kappa_score, f1_score
    from ehr_rlvr.trials.data import load_trec_pairs
    with pytest.warns(UserWarning):
        pairs, info = load_trec_pairs(TREC)
    comp = tmp_path / "c.jsonl"
    _trec_completions(comp, pairs)
    p = run_cli("evaluate-completions", "--task", "trials", "--data", TREC, "--completions", comp)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["n_rows"] == len(pairs) == 254 and res["n_skipped_no_text"] == 35832 - 254
    assert {"accuracy", "balanced_accuracy", "kappa", "macro_f1", "per_class", "confusion"} <= set(res)
    # recomputed independently: malformed is its own category, never a hit
    pred = [2 if i % 3 == 0 else l for i, l in enumerate(pairs["label"])]
    pred[1] = -1
    assert res["kappa"] == pytest.approx(cohen_kappa_score(pairs["label"], pred))
    assert res["macro_f1"] == pytest.approx(f1_score(pairs["label"], pred, labels=[0, 1, 2], average="macro"))
    cm = res["confusion"]
    assert cm["labels"] == ["Irrelevant", "Excluded", "Eligible"] and cm["columns"][-1] == "no answer"
    assert sum(map(sum, cm["matrix"])) == 254 and sum(r[-1] for r in cm["matrix"]) == 1
    from sklearn.metrics import precision_recall_fscore_support
    prec, rec, f1, sup = precision_recall_fscore_support(pairs["label"], pred, labels=[0, 1, 2], zero_division=0)
    for j, name in enumerate(["Irrelevant", "Excluded", "Eligible"]):
        got = res["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((prec[j], rec[j], f1[j], sup[j])), name


@pytest.mark.skipif(not TREC.exists(), reason=f"TREC CT 2021 data not found at {TREC} (set EHR_RLVR_DATA)")
def test_ehrmind_released_label_mapping_fails_on_the_qrels():
    "EHRMIND's released reward maps 0 -> Excluded, 1 -> Irrelevant; on the qrels that scores every TREC-correct answer of classes 0 and 1 wrong."
    from ehr_rlvr.trials.data import EHRMIND_RELEASED_LABELS, LABEL_NAMES, format_answer, read_qrels, score_trials, trials_ground_truth
    q = read_qrels(TREC / "qrels" / "test.tsv")
    answers = [format_answer("criteria checked", l) for l in q["label"]]  # the TREC-correct answer of every judged pair
    ours = [score_trials(a, trials_ground_truth(l))["correct"] for a, l in zip(answers, q["label"])]
    theirs = [score_trials(a, trials_ground_truth(l), label_names=EHRMIND_RELEASED_LABELS)["correct"]
              for a, l in zip(answers, q["label"])]
    assert all(ours)
    # under the released mapping only the eligible pairs survive: every correct answer for a 0 or 1 pair is refused
    assert sum(theirs) == int((q["label"] == 2).sum()) == 5570 and len(q) - sum(theirs) == 24243 + 6019
    assert [LABEL_NAMES[i] == EHRMIND_RELEASED_LABELS[i] for i in range(3)] == [False, False, True]


def test_bad_trial_file_is_refused_naming_file_and_line(tmp_path):
    folder = tmp_path / "year"
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "A 60-year-old man."}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tNCT1\t2\n")
    (folder / "trials.jsonl").write_text('{"_id": "NCT1", "brief_title": "T", "inclusion_criteria": "a", "exclusion_criteria": "b"}\n{"_id": \n')
    p = run_cli("evaluate-completions", "--task", "trials", "--data", folder, "--completions", tmp_path / "none.jsonl")
    assert p.returncode != 0 and "trials.jsonl" in p.stderr and ":2" in p.stderr


def test_trials_pipeline_reports_kappa_and_macro_f1_per_view(trials_smoke_run):
    "The stages run a second task unchanged: report/results.csv holds the label metrics for every regime and test view."
    run = trials_smoke_run  # configs/smoke-trials.yaml, run once per session (conftest)
    res = pd.read_csv(run / "report" / "results.csv")
    for regime in ("base", "sft", "sft_rlvr"):
        got = set(res.loc[res["regime"] == regime, "metric"])
        assert {"accuracy", "balanced_accuracy", "kappa", "macro_f1", "macro_f1/inductive", "macro_f1/transductive",
                "recall/Excluded", "format_valid_rate"} <= got, (regime, sorted(got))
    cmp = pd.read_csv(run / "report" / "comparisons.csv")
    assert set(cmp["metric"]) == {"macro_f1"} and list(cmp["comparison"]) == ["sft - base", "sft_rlvr - sft", "sft_rlvr - base"]
    # every metric can be recomputed from the saved predictions
    from ehr_rlvr.metrics import compute_metrics, row_arrays
    pred = pd.read_parquet(run / "eval" / "sft" / "predictions.parquet")
    assert {"gold", "pred", "view", "correct", "scorable"} <= set(pred.columns)
    m = compute_metrics("label", row_arrays(pred, "label"), 3)
    top = res[(res["regime"] == "sft")].set_index("metric")["value"]
    assert m["kappa"] == pytest.approx(top["kappa"]) and m["macro_f1"] == pytest.approx(top["macro_f1"])
    mj = json.loads((run / "eval" / "sft" / "metrics.json").read_text())
    assert mj["answer_kind"] == "label" and len(mj["confusion"]) == 3
    assert json.loads((run / "data" / "summary.json").read_text())["task"] == "trials"
