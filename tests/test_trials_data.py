"""The `trials` data layer on the real TREC CT / EHRMIND files, broken copies of them, the verifier, and the synthetic generator."""
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ehr_rlvr.trials.data import (EHRMIND_RELEASED_LABELS, LABEL_NAMES, PAIR_COLUMNS, TRIALS_HACK_PROBES, build_prompt,
                                  ehrmind_sft_examples, format_answer, load_trec_pairs, parse_trials_answer,
                                  read_qrels, read_queries, read_trials, score_trials, trials_ground_truth)
from ehr_rlvr.trials.synthetic import (CONDITIONS, generate_cohort, generate_pairs, evaluate, lab_text)

ROOT = Path(__file__).resolve().parents[1]
_env = os.environ.get("EHR_RLVR_SHARED_DATA") or os.environ.get("EHR_RLVR_DATA")
TREC = Path(_env or ROOT.parent / "shared" / "data") / "trec_ct"
Y2021, SIGIR, PARQUET = TREC / "trec_2021", TREC / "sigir", TREC / "ehrmind_matching_sft_val.parquet"
TRIALS_2021 = Y2021 / "trials_parsed_from_ehrmind_prompts.jsonl"
EXCERPT_2022 = TREC / "trec_2022" / "corpus_subset_100trials.jsonl"
needs_data = pytest.mark.skipif(not (Y2021 / "qrels" / "test.tsv").exists() or not PARQUET.exists(),
                                reason=f"TREC CT data not found under {TREC} (set EHR_RLVR_SHARED_DATA to the shared data root)")


def _load(*a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_trec_pairs(*a, **kw)


# ---------------------------------------------------------------- real data
@needs_data
def test_trec_2021_counts():
    with pytest.warns(UserWarning, match="35578 of 35832 judged pairs skipped"):
        pairs, info = load_trec_pairs(Y2021)
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert info["n_judged"] == 35_832 and info["n_judged_by_label"] == {0: 24_243, 1: 6_019, 2: 5_570}
    assert info["n_queries"] == info["n_judged_queries"] == 75
    assert info["n_trials_judged"] == 26_162 and info["n_trials_with_text"] == 99
    # this copy has text for the 99 trials of EHRMIND's prompts only
    assert info["n_with_text"] == len(pairs) == 254 and info["n_with_text_by_label"] == {0: 156, 1: 43, 2: 55}
    assert info["n_skipped_no_text"] == 35_832 - 254
    assert info["n_skipped_no_text_by_label"] == {0: 24_243 - 156, 1: 6_019 - 43, 2: 5_570 - 55}
    assert [Path(p).name for p in info["trial_files"]] == [TRIALS_2021.name]
    assert pairs["pair_id"].is_unique and pairs["pair_id"].str.fullmatch(r"trec-2021\d+:NCT\d{8}").all()
    assert pairs["label"].dtype == "int64" and pairs["note"].str.len().min() > 100
    assert (pairs[["title", "inclusion", "exclusion"]].apply(lambda s: (s == s.str.strip()).all())).all()
    assert pairs.iloc[0]["pair_id"] == "trec-20211:" + pairs.iloc[0]["corpus_id"]


@pytest.mark.skipif(not EXCERPT_2022.exists(), reason=f"TREC-2022 corpus excerpt not in this copy ({EXCERPT_2022})")
def test_trec_2021_with_the_2022_excerpt():
    "SOURCE.md: with the 19 TREC-2021 trials of the TREC-2022 corpus excerpt, 276 pairs (0: 167, 1: 48, 2: 61)."
    pairs, info = _load(Y2021, trials=[TRIALS_2021, EXCERPT_2022])
    assert info["n_with_text"] == 276 and info["n_with_text_by_label"] == {0: 167, 1: 48, 2: 61}


@needs_data
def test_qrels_reader_is_fast():
    t = time.perf_counter()
    q = read_qrels(Y2021 / "qrels" / "test.tsv")
    assert len(q) == 35_832 and time.perf_counter() - t < 3.0
    assert q["line"].iloc[0] == 2 and q["line"].iloc[-1] == 35_833


@needs_data
def test_sigir_has_no_trial_text_and_says_so():
    with pytest.warns(UserWarning, match="3835 of 3835 judged pairs skipped.*none found"):
        pairs, info = load_trec_pairs(SIGIR)
    assert len(pairs) == 0 and list(pairs.columns) == list(PAIR_COLUMNS)
    assert info["n_judged"] == info["n_skipped_no_text"] == 3_835
    assert info["n_skipped_no_text_by_label"] == {0: 2_733, 1: 681, 2: 421}
    assert (info["n_queries"], info["n_judged_queries"], info["trial_files"]) == (59, 58, {})


@needs_data
def test_ehrmind_sft_examples():
    sft = ehrmind_sft_examples(PARQUET, Y2021 / "qrels" / "test.tsv")
    assert len(sft) == 100 and sft["label"].value_counts().to_dict() == {0: 38, 1: 32, 2: 30}
    # labels equal the qrels scores (checked inside) and the released answers name the swapped class
    assert (sft["released_idx"] == sft["label"]).all()
    assert (sft["released_answer"] == sft["label"].map(lambda l: EHRMIND_RELEASED_LABELS[l])).all()
    assert (sft["consistent"] == (sft["label"] == 2)).all()          # False exactly for labels 0 and 1
    # the rationales argue the swapped class, by the conclusion heuristic
    says = pd.crosstab(sft["label"], sft["rationale_says"])
    assert says.loc[0].idxmax() == "Excluded" and says.loc[1].idxmax() == "Irrelevant" and says.loc[2].idxmax() == "Eligible"
    # note and trial text are the loader's
    pairs, _ = _load(Y2021)
    m = sft.merge(pairs, on="pair_id", suffixes=("", "_l"))
    assert len(m) == 100 and all((m[c] == m[c + "_l"]).all() for c in ("note", "title", "inclusion", "exclusion", "label"))
    # the SFT target (TREC names) is correct; under EHRMIND's released names it is a name/index mismatch for 0 and 1
    for c, l in zip(sft["sft_completion"], sft["label"]):
        assert score_trials(c, trials_ground_truth(l))["correct"]
        swapped = score_trials(c, trials_ground_truth(l), label_names=EHRMIND_RELEASED_LABELS)
        assert swapped["correct"] == (l == 2) and (l == 2 or swapped["reason"] == "name_index_mismatch")
    # EHRMIND's released outputs (minus the <|eot_id|> tail) are well formed, but wrong-named for TREC labels 0 and 1
    raw = pd.read_parquet(PARQUET)
    for out, l in zip(raw["output"], raw["label"]):
        s = score_trials(out.removesuffix("<|eot_id|>"), trials_ground_truth(l))
        assert (s["correct"], s["reason"]) == ((True, "correct") if l == 2 else (False, "name_index_mismatch"))
        assert score_trials(out, trials_ground_truth(l))["reason"] == "text_outside_tags"   # the special token is text to us


@needs_data
def test_ehrmind_sft_examples_refuse_bad_rows(tmp_path):
    raw = pd.read_parquet(PARQUET)
    bad = raw.copy(); bad.loc[6, "label"] = (bad.loc[6, "label"] + 1) % 3
    bad.to_parquet(tmp_path / "bad_label.parquet")
    with pytest.raises(ValueError, match=rf"bad_label.parquet: row 7 \({raw.loc[6, 'query_id']}:{raw.loc[6, 'corpus_id']}\): label .* differs from the qrels score"):
        ehrmind_sft_examples(tmp_path / "bad_label.parquet", Y2021 / "qrels" / "test.tsv")
    ehrmind_sft_examples(tmp_path / "bad_label.parquet")   # without qrels nothing to check against
    bad = raw.copy(); bad.loc[3, "input"] = bad.loc[3, "input"].replace("Exclusion Criteria:", "Exclusions:")
    bad.to_parquet(tmp_path / "bad_input.parquet")
    with pytest.raises(ValueError, match=r"bad_input.parquet: row 4 .*not in EHRMIND's matching prompt layout"):
        ehrmind_sft_examples(tmp_path / "bad_input.parquet")
    bad = raw.copy(); bad.loc[0, "output"] = bad.loc[0, "output"].replace("</think>", "")
    bad.to_parquet(tmp_path / "bad_output.parquet")
    with pytest.raises(ValueError, match=r"bad_output.parquet: row 1 .*not a well-formed"):
        ehrmind_sft_examples(tmp_path / "bad_output.parquet")


# ---------------------------------------------------------------- broken copies
@pytest.fixture
def year(tmp_path):
    "A writable copy of trec_2021."
    if not (Y2021 / "qrels" / "test.tsv").exists(): pytest.skip(f"TREC CT data not found under {TREC}")
    dst = tmp_path / "parent" / "trec_2021"
    shutil.copytree(Y2021, dst)
    for p in dst.rglob("*"): p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _edit_line(path: Path, n: int, fn):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[n - 1] = fn(lines[n - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize("file, line, edit, message", [
    ("queries.jsonl", 10, lambda s: s[:-1], r"queries.jsonl:10: not valid JSON"),
    ("queries.jsonl", 12, lambda s: s.replace('"_id"', '"id"', 1), r"queries.jsonl:12: missing field '_id'"),
    ("queries.jsonl", 3, lambda s: json.dumps({**json.loads(s), "text": 5}), r"queries.jsonl:3: field 'text' must be a string"),
    ("qrels/test.tsv", 100, lambda s: s[:-1] + "3", r"test.tsv:100: field 'score' is '3', not one of 0, 1, 2"),
    ("qrels/test.tsv", 101, lambda s: s[:-1] + "2.0", r"test.tsv:101: field 'score' is '2.0'"),
    ("qrels/test.tsv", 200, lambda s: s.replace("\t", " ", 1), r"test.tsv:200: expected 3 tab-separated fields"),
    ("qrels/test.tsv", 300, lambda s: s + "\textra", r"test.tsv:300: expected 3 tab-separated fields .* got 4"),
    ("qrels/test.tsv", 1, lambda s: "query\tcorpus\tscore", r"test.tsv:1: expected the header"),
    ("qrels/test.tsv", 400, lambda s: "trec-2021999\t" + s.split("\t", 1)[1], r"test.tsv:400: query-id 'trec-2021999' is not in"),
    ("trials_parsed_from_ehrmind_prompts.jsonl", 5, lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "_id"}),
     r"trials_parsed_from_ehrmind_prompts.jsonl:5: missing field '_id'"),
    ("trials_parsed_from_ehrmind_prompts.jsonl", 7, lambda s: json.dumps({**json.loads(s), "exclusion_criteria": None}),
     r"trials_parsed_from_ehrmind_prompts.jsonl:7: field 'exclusion_criteria' must be a string"),
    ("trials_parsed_from_ehrmind_prompts.jsonl", 9, lambda s: s[:40], r"trials_parsed_from_ehrmind_prompts.jsonl:9: not valid JSON"),
])
def test_broken_files_name_file_and_line(year, file, line, edit, message):
    _edit_line(year / file, line, edit)
    with pytest.raises(ValueError, match=message):
        _load(year)


def test_conflicting_duplicate_judgment(year):
    q = year / "qrels" / "test.tsv"
    lines = q.read_text().splitlines()
    qid, cid, s = lines[50].split("\t")
    q.write_text("\n".join(lines + [f"{qid}\t{cid}\t{(int(s) + 1) % 3}"]) + "\n")
    with pytest.raises(ValueError, match=rf"test.tsv:{len(lines) + 1}: conflicting judgments of {qid} / {cid}: .* on line 51"):
        _load(year)
    q.write_text("\n".join(lines + [lines[50]]) + "\n")   # an identical repeat is kept once and counted
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, info = load_trec_pairs(year)
    assert any("1 identical repeated judgment" in str(x.message) for x in w)
    assert info["n_duplicate_judgments"] == 1 and info["n_judged"] == 35_832


def test_bad_encoding_names_the_file(year):
    p = year / "queries.jsonl"
    data = p.read_bytes().split(b"\n")
    data[20] = data[20].replace(b"year", "y\xe9ar".encode("latin-1"), 1)
    p.write_bytes(b"\n".join(data))
    with pytest.raises(ValueError, match=r"queries.jsonl: not valid utf-8 text at line 21"):
        read_queries(p)


def test_trial_file_layouts_and_precedence(year):
    "corpus.jsonl (TrialGPT) wins over other files; trial_info.json one level up is found; conflicts are counted."
    some = [json.loads(l) for l in (year / TRIALS_2021.name).read_text().splitlines()[:3]]
    corpus = [{"_id": t["_id"], "title": "long title", "text": "Summary: ...", "metadata": {
        "brief_title": t["brief_title"] + " (corpus)", "inclusion_criteria": t["inclusion_criteria"],
        "exclusion_criteria": t["exclusion_criteria"], "phase": "2"}} for t in some]
    (year / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    info_json = {"NCT99999999": {"brief_title": "T", "inclusion_criteria": "a", "exclusion_criteria": "b"}}
    (year.parent / "trial_info.json").write_text(json.dumps(info_json))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pairs, info = load_trec_pairs(year)
    assert [Path(p).name for p in info["trial_files"]] == ["corpus.jsonl", "trial_info.json", TRIALS_2021.name]
    assert info["n_trial_text_conflicts"] == 3 and any("different text in two trial files" in str(x.message) for x in w)
    ids = {t["_id"] for t in some}
    assert pairs.loc[pairs["corpus_id"].isin(ids), "title"].str.endswith("(corpus)").all()
    assert not pairs.loc[~pairs["corpus_id"].isin(ids), "title"].str.endswith("(corpus)").any()
    # explicit trial files replace discovery
    _, info2 = _load(year, trials=year.parent / "trial_info.json")
    assert list(info2["trial_files"]) == [str(year.parent / "trial_info.json")] and info2["n_with_text"] == 0
    assert read_trials(year.parent / "trial_info.json") == {"NCT99999999": {"title": "T", "inclusion": "a", "exclusion": "b"}}


# ---------------------------------------------------------------- verifier
REALISTIC = {
    "multi-line, pretty JSON": ("<think>\n1. Inclusion: the patient has type 2 diabetes (met).\n2. Exclusion: none apply.\n</think>\n"
                                "<answer>\n{\n    \"prediction\": \"Eligible\",\n    \"idx\": 2\n}\n</answer>\n", 2, "correct"),
    "empty think": ('<think></think><answer>{"prediction": "Irrelevant", "idx": 0}</answer>', 0, "correct"),
    "wrong class": ('<think>on warfarin</think>\n<answer>{"prediction": "Excluded", "idx": 1}</answer>', 2, "wrong"),
    "keys in other order": ('<think>x</think><answer>{"idx": 1, "prediction": "Excluded"}</answer>', 1, "correct"),
    "EHRMIND prefill echoed": ('Let me solve this step by step.\n<think>x</think><answer>{"prediction": "Eligible", "idx": 2}</answer>', 2, "text_outside_tags"),
    "answer with trailing period": ('<think>x</think><answer>{"prediction": "Eligible", "idx": 2}</answer>.', 2, "text_outside_tags"),
    "free text": ("The patient is eligible for the trial.", 2, "no_tags"),
    "too long": ("<think>" + "x" * 60_000 + '</think><answer>{"prediction": "Eligible", "idx": 2}</answer>', 2, "too_long"),
}


@pytest.mark.parametrize("name", list(REALISTIC))
def test_verifier_on_realistic_completions(name):
    text, gold, reason = REALISTIC[name]
    s = score_trials(text, trials_ground_truth(gold))
    assert s["reason"] == reason
    assert s["reward"] == {"correct": 1.0, "wrong": 0.0}.get(reason, -1.0)
    assert s["gold"] == gold and (s["pred"] is None) == (reason not in ("correct", "wrong"))
    assert score_trials([{"role": "user", "content": "q"}, {"role": "assistant", "content": text}], {"label": str(gold)}) == s


@pytest.mark.parametrize("gold", [0, 1, 2])
@pytest.mark.parametrize("probe", list(TRIALS_HACK_PROBES))
def test_hack_probes_are_malformed_for_every_gold(probe, gold):
    s = score_trials(TRIALS_HACK_PROBES[probe], trials_ground_truth(gold))
    assert (s["format_ok"], s["correct"], s["reward"], s["pred"]) == (False, False, -1.0, None), s


@pytest.mark.parametrize("gt", [{}, {"label": ""}, {"label": "3"}, {"label": "-1"}, {"label": "two"}, {"label": True}, None, "x", {"target": "2"}])
def test_unusable_gold(gt):
    s = score_trials(format_answer("x", 2), gt)
    assert (s["reward"], s["reason"], s["gold"], s["format_ok"]) == (None, "gold_unusable", None, True)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.builds(lambda t, b: f"<think>{t}</think><answer>{b}</answer>", st.text(max_size=50), st.text(max_size=80))),
       st.sampled_from([0, 1, 2]))
def test_score_trials_never_raises(text, gold):
    s = score_trials(text, trials_ground_truth(gold))
    assert set(s) == {"format_ok", "pred", "gold", "correct", "reward", "reason"}
    assert s["reward"] in (-1.0, 0.0, 1.0) and (s["reward"] == 1.0) == s["correct"]
    if s["format_ok"]: assert s["pred"] in (0, 1, 2)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200).filter(lambda t: "<" not in t and ">" not in t), st.sampled_from([0, 1, 2]))
def test_format_answer_round_trip(think, label):
    assert parse_trials_answer(format_answer(think, label)).value == label


def test_prompt_styles():
    for style in ("ehrmind", "compact"):
        msgs = build_prompt("Note.", "Title", "- a", "- b", style)
        assert [m["role"] for m in msgs] == ["system", "user"]
        u = msgs[1]["content"]
        assert "Note." in u and "- a" in u and "- b" in u and "Title" in u
    u = build_prompt("Note.", "Title", "- a", "- b")[1]["content"]
    assert [u.index(f"{i}) {n}") for i, n in enumerate(LABEL_NAMES)] == sorted(u.index(f"{i}) {n}") for i, n in enumerate(LABEL_NAMES))
    assert "clinical trial recruitment" in u and "Do not output anything after the </answer> tag." in u


# ---------------------------------------------------------------- synthetic
def test_synthetic_determinism():
    a, b, c = generate_pairs(40, 3, seed=7), generate_pairs(40, 3, seed=7), generate_pairs(40, 3, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c) and a["note"].iloc[0] != c["note"].iloc[0]


@pytest.mark.parametrize("balance", [(1/3, 1/3, 1/3), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5), (1, 1, 2)])
def test_synthetic_class_balance(balance):
    n = 301
    pairs = generate_pairs(100, n_pairs=n, seed=3, class_balance=balance)
    got = pairs["label"].value_counts().reindex(range(3), fill_value=0) / n
    want = pd.Series(balance) / sum(balance)
    assert (got - want).abs().max() <= 1 / n + 1e-9, (got.tolist(), want.tolist())
    assert len(pairs) == n and pairs["query_id"].nunique() == 100


def test_synthetic_bad_balance():
    with pytest.raises(ValueError, match="class_balance"): generate_pairs(5, class_balance=(1, 1))
    with pytest.raises(ValueError, match="class_balance"): generate_pairs(5, class_balance=(1, -1, 1))


def test_synthetic_labels_facts_and_rationales():
    pairs, patients, trials = generate_cohort(150, 4, seed=11)
    assert pairs["pair_id"].is_unique and (pairs["pair_id"] == pairs["query_id"] + ":" + pairs["corpus_id"]).all()
    assert pairs["query_id"].str.fullmatch(r"syn-p\d{4}").all() and pairs["corpus_id"].str.fullmatch(r"SYN-T\d{4}").all()
    assert pairs.groupby("query_id")["note"].nunique().max() == 1
    assert pairs["corpus_id"].value_counts().max() > 1          # some trials are judged for several patients
    words = pairs["note"].str.split().str.len()
    assert words.min() >= 35 and words.max() <= 100
    for r in pairs.itertuples():
        p, t = patients[r.query_id], trials[r.corpus_id]
        label, steps = evaluate(p, t)
        assert label == r.label                                  # the evaluator is the source of truth
        assert t.render() == {"title": r.title, "inclusion": r.inclusion, "exclusion": r.exclusion}
        assert r.rationale.endswith(LABEL_NAMES[r.label])
        assert score_trials(format_answer(r.rationale, r.label), trials_ground_truth(r.label))["correct"]
        # the note states every fact of the record ...
        assert str(p.age) in r.note and all(m in r.note for m in p.meds)
        assert all(any(s in r.note for s in CONDITIONS[c].say) for c in p.conditions)
        assert all(f"{n}" in r.note and lab_text(n, v) in r.note for n, v in p.labs)
        assert ("pregnant" in r.note) == p.pregnant
        # ... and names an absent condition only in a family-history sentence
        for c in set(CONDITIONS) - set(p.conditions):
            for sent in r.note.split(". "):
                if any(re.search(rf"(?<!\w){re.escape(s)}(?!\w)", sent) for s in CONDITIONS[c].say):
                    assert sent.startswith("Family history:"), (r.pair_id, c, sent)
        for section, crit, holds, fact in steps:
            if section == "exclusion" and holds:                 # an exclusion that applies is stated in the note
                if crit.kind == "condition": assert any(s in r.note for s in CONDITIONS[crit.name].say), (r.pair_id, crit.text)
                elif crit.kind == "medication": assert crit.name in r.note, (r.pair_id, crit.text)
                elif crit.kind == "pregnancy": assert "pregnant" in r.note, r.pair_id
                else: assert crit.kind == "lab" and crit.name in r.note and fact in r.note, (r.pair_id, crit.text)


def test_synthetic_label_zero_has_inclusion_failures_of_several_kinds():
    pairs, patients, trials = generate_cohort(200, 3, seed=1)
    kinds = set()
    for r in pairs[pairs["label"] == 0].itertuples():
        _, steps = evaluate(patients[r.query_id], trials[r.corpus_id])
        kinds |= {(c.kind, f == "not reported") for s, c, h, f in steps if s == "inclusion" and not h}
    assert {("condition", False), ("age", False), ("lab", False), ("lab", True), ("sex", False)} <= kinds
