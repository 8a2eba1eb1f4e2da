"Property and probe tests of the verifier (`ehr_rlvr.rewards`): it never raises and cannot be gamed."
import datetime, json, math, os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from ehr_rlvr.medcalc.verify import (HACK_PROBES, get_medcalc_reward, gold_answer_value, medcalc_reward, score_completion,
                                     score_medcalc)
from ehr_rlvr.rewards import MAX_COMPLETION_CHARS, extract_answer, format_completion, get_reward, parse_completion
from ehr_rlvr.tasks import get_task

MEDCALC = get_task("medcalc")
format_reward, correct_reward = get_reward("format", MEDCALC), get_reward("correct", MEDCALC)

SCHEME = {1.1, 0.1, -2.0}
GT_DEC = {"answer": "25.238", "lower": "23.9761", "upper": "26.4999", "output_type": "decimal", "calculator_id": "2"}
GT_INT = {"answer": "3", "lower": "3", "upper": "3", "output_type": "integer", "calculator_id": "4"}
GT_DATE = {"answer": "09/23/2014", "lower": "09/23/2014", "upper": "09/23/2014", "output_type": "date", "calculator_id": "13"}
GT_GA = {"answer": "('4 weeks', '3 days')", "lower": "('4 weeks', '3 days')", "upper": "('4 weeks', '3 days')",
         "output_type": "integer", "calculator_id": "69"}
GOLDS = [GT_DEC, GT_INT, GT_DATE, GT_GA]
DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "medcalc_bench"

tag = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</Answer>", "< think >", "<think/>"])
chunk = st.one_of(st.text(max_size=20), tag, st.sampled_from(['{"answer": 3}', '{"answer": NaN}', "1e400", "٣", " ", "\n"]))
soup = st.lists(chunk, max_size=12).map("".join)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                           | st.text(max_size=30), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(st.text(), soup), gold=st.sampled_from(GOLDS))
def test_arbitrary_text_never_raises_and_stays_in_scheme(text, gold):
    assert medcalc_reward([text], [gold])[0] in SCHEME
    assert format_reward([text])[0] in {0.0, 1.0}
    assert correct_reward([text], [gold])[0] in {0.0, 1.0}


@settings(max_examples=300, deadline=None)
@given(value=json_values, gold=st.sampled_from(GOLDS), think=st.text(max_size=40).filter(lambda s: "<" not in s))
def test_any_json_answer_never_raises(value, gold, think):
    try: body = json.dumps({"answer": value})
    except (ValueError, TypeError): return
    r = medcalc_reward([f"<think>{think}</think><answer>{body}</answer>"], [gold])[0]
    assert r in SCHEME
    if isinstance(value, bool) or value is None or isinstance(value, dict): assert r == -2.0
    if isinstance(value, float) and not math.isfinite(value): assert r == -2.0


@settings(max_examples=200, deadline=None)
@given(x=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), lo=st.floats(-1e6, 1e6), width=st.floats(0, 1e3),
       ws=st.sampled_from(["", " ", "\n", "\n\n  "]), as_str=st.booleans())
def test_decimal_is_inclusive_range(x, lo, width, ws, as_str):
    hi = lo + width
    gt = {"answer": str(lo), "lower": repr(lo), "upper": repr(hi), "output_type": "decimal", "calculator_id": "2"}
    v = repr(x) if as_str else x
    r = medcalc_reward([f"{ws}<think>t</think>{ws}<answer>{ws}{json.dumps({'answer': v})}{ws}</answer>{ws}"], [gt])[0]
    assert r == (1.1 if lo <= x <= hi else 0.1)


@settings(max_examples=100, deadline=None)
@given(w=st.integers(0, 45), d=st.integers(0, 6), form=st.sampled_from(["words", "ints", "tuple_str"]))
def test_gestational_forms(w, d, form):
    gt = {**GT_GA, "answer": f"('{w} weeks', '{d} days')"}
    v = {"words": [f"{w} weeks", f"{d} days"], "ints": [w, d], "tuple_str": f"('{w} weeks', '{d} days')"}[form]
    assert score_medcalc(v, gt) == 1.0
    assert score_medcalc([w, (d + 1) % 7], gt) == 0.0


@settings(max_examples=100, deadline=None)
@given(date=st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 12, 31)), pad=st.booleans())
def test_dates_ignore_zero_padding(date, pad):
    gt = {**GT_DATE, "answer": date.strftime("%m/%d/%Y")}
    v = f"{date.month:02d}/{date.day:02d}/{date.year:04d}" if pad else f"{date.month}/{date.day}/{date.year:04d}"
    assert score_medcalc(v, gt) == 1.0


@pytest.mark.parametrize("name", list(HACK_PROBES))
def test_hack_probes_never_score_correct(name):
    for gold in GOLDS:
        assert medcalc_reward([HACK_PROBES[name]], [gold])[0] in {0.1, -2.0}, name


@pytest.mark.parametrize("text,reason", [
    ("", "no_tags"), ("   ", "no_tags"),
    ('<think>a</think><answer>{"answer": 99999999999999}</answer>', "number_too_large"),
    ('<think>a</think><answer>{"answer": -Infinity}</answer>', "bad_json"),
    ('<think>a</think><answer>{"answer": 1}</answer>\nExplanation: ...', "text_outside_tags"),
    ('<think>a</think><answer>{"answer": 1}</answer><answer>{"answer": 1}</answer>', "bad_tags"),
    ('<think><think>a</think><answer>{"answer": 1}</answer>', "bad_tags"),
    ('<think>a</think><answer>{"answer": 1}</think></answer>', "bad_tags"),
    ("<think>" + "9" * 5000 + '</think><answer>{"answer": ' + "9" * 5000 + "}</answer>", "answer_too_long"),
    ('<think>a</think><answer>{"answer": ' + "9" * 1900 + "}</answer>", "number_too_large"),
    ('<think>a</think><answer>' + "[" * 999 + "]" * 999 + "</answer>", "bad_json"),
])
def test_malformed_reasons(text, reason):
    p = parse_completion(text)
    assert (p.format_ok, p.reason) == (False, reason)
    assert medcalc_reward([text], [GT_DEC]) == [-2.0]


def test_long_and_odd_inputs():
    long = "<think>" + "x" * (2 * MAX_COMPLETION_CHARS) + '</think><answer>{"answer": 25}</answer>'
    assert medcalc_reward([long], [GT_DEC]) == [-2.0]
    lt = '<think>age < 65, a<b, <thinking> and </br> are text</think><answer>{"answer": 25}</answer>'
    assert medcalc_reward([lt], [GT_DEC]) == [1.1]
    deep = '<think>a</think><answer>{"answer": ' + "[" * 990 + "]" * 990 + "}</answer>"
    assert medcalc_reward([deep], [GT_DEC]) == [-2.0]   # deep nesting: malformed (recursion or shape), never a crash
    ok = '<think>x</think><answer>{"answer": 25}</answer>' + " \n" * (3 * MAX_COMPLETION_CHARS)
    assert medcalc_reward([ok], [GT_DEC]) == [1.1]   # trailing whitespace is stripped before the length check
    assert medcalc_reward([None, 5, {"role": "assistant"}, [], [{"role": "user", "content": "x"}]], [GT_DEC] * 5) == [-2.0] * 5


def test_chat_message_completions():
    msg = [{"role": "assistant", "content": '<think>x</think>\n<answer>{"answer": "3"}</answer>'}]
    assert medcalc_reward([msg], [GT_INT]) == [1.1]
    assert extract_answer(msg) == "3"


def test_gold_unusable_is_none_and_missing_gold_does_not_raise():
    good = '<think>x</think><answer>{"answer": 3}</answer>'
    assert medcalc_reward([good], [{"answer": "", "output_type": "integer"}]) == [None]
    assert medcalc_reward([good], [None]) == [None]
    assert medcalc_reward([good]) == [None]
    assert medcalc_reward(["junk"], [{"answer": ""}]) == [-2.0]   # malformed does not depend on the gold
    assert medcalc_reward([good, good], [GT_INT]) == [None, None]  # length mismatch: no reward, no exception


def test_scheme_and_registry():
    f = get_medcalc_reward(correct=1.0, wrong=0.0, malformed=-1.0)
    assert f.__name__ == "medcalc_reward"
    assert f(['<think>a</think><answer>{"answer": 3}</answer>', '<think>a</think><answer>{"answer": 4}</answer>', "x"],
             [GT_INT] * 3) == [1.0, 0.0, -1.0]
    assert format_reward.__name__ == "format_reward" and correct_reward.__name__ == "correct_reward"
    with pytest.raises(KeyError, match="known rewards"): get_reward("nope", MEDCALC)
    answer = get_reward("answer", MEDCALC)  # the generic scheme reward equals MedCalc's own on every probe
    probes = list(HACK_PROBES.values()) + [format_completion("x", 25.0), format_completion("x", 30)]
    assert answer(probes, [GT_DEC] * len(probes)) == medcalc_reward(probes, [GT_DEC] * len(probes))


def test_rewards_do_not_print(capsys):
    medcalc_reward(list(HACK_PROBES.values()), [GT_DEC] * len(HACK_PROBES))
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("gold", GOLDS)
def test_gold_completion_scores_correct(gold):
    assert medcalc_reward([format_completion("reasoning", gold_answer_value(gold))], [gold]) == [1.1]


def test_gold_answers_on_real_data_score_correct():
    csvs = [p for p in (DATA / "test_data_v1.0_dev.csv", DATA / "train_subset_98_from_ehrmind_val.csv") if p.exists()]
    if not csvs: pytest.skip(f"MedCalc CSVs not found under {DATA} (set EHR_RLVR_DATA)")
    from ehr_rlvr.medcalc.data import medcalc_rows, read_medcalc_csv
    for p in csvs:
        ds = medcalc_rows(read_medcalc_csv(p), style="compact")
        gts = ds["ground_truth"]
        comps = [format_completion("x", gold_answer_value(g)) for g in gts]
        assert medcalc_reward(comps, gts) == [1.1] * len(gts), p
        # the raw gold strings, as a model might copy them, also score correct
        raw = [format_completion("x", g["answer"]) for g in gts]
        assert medcalc_reward(raw, gts) == [1.1] * len(gts), p


_dec_gold = st.floats(-1e5, 1e5, allow_nan=False).map(lambda x: {
    "answer": f"{x:.4f}", "lower": repr(x * 0.95), "upper": repr(x * 1.05), "output_type": "decimal", "calculator_id": "2"})
_int_gold = st.integers(-50, 500).map(lambda n: {"answer": str(n), "lower": str(n), "upper": str(n), "output_type": "integer", "calculator_id": "4"})
_date_gold = st.dates(datetime.date(1900, 1, 1), datetime.date(2100, 12, 31)).map(lambda d: {
    "answer": d.strftime("%m/%d/%Y"), "lower": d.strftime("%m/%d/%Y"), "upper": d.strftime("%m/%d/%Y"), "output_type": "date", "calculator_id": "13"})
_ga_gold = st.tuples(st.integers(0, 45), st.integers(0, 6)).map(lambda t: {
    **GT_GA, "answer": f"('{t[0]} weeks', '{t[1]} days')", "lower": f"('{t[0]} weeks', '{t[1]} days')", "upper": f"('{t[0]} weeks', '{t[1]} days')"})


@settings(max_examples=300, deadline=None)
@given(gold=st.one_of(_dec_gold, _int_gold, _date_gold, _ga_gold), think=st.text(max_size=200).filter(lambda s: "<" not in s),
       lead=st.sampled_from(["", " ", "\n"]), mid=st.sampled_from(["", "\n", " \n "]), tail=st.sampled_from(["", "\n", "  \n"]))
def test_correctly_formatted_gold_always_scores_correct(gold, think, lead, mid, tail):
    body = json.dumps({"answer": gold_answer_value(gold)})
    text = f"{lead}<think>{think}</think>{mid}<answer>{mid}{body}{mid}</answer>{tail}"
    assert medcalc_reward([text], [gold]) == [1.1]
    assert medcalc_reward([[{"role": "assistant", "content": text}]], [gold]) == [1.1]


def test_called_the_way_trl_calls_it():
    "GRPOTrainer passes prompts, completions, completion_ids, every dataset column and a few trainer objects as kwargs."
    from ehr_rlvr.tasks import get_task
    task = get_task("medcalc")
    comps = [[{"role": "assistant", "content": '<think>x</think><answer>{"answer": 3}</answer>'}],
             [{"role": "assistant", "content": "3"}]]
    kw = dict(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=comps, completion_ids=[[1, 2], [3]],
              ground_truth=[GT_INT, GT_INT], task=["medcalc"] * 2, id=["a", "b"], group_id=["g", "g"], split=["train"] * 2,
              category=["risk"] * 2, trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None)
    assert [f(**kw) for f in task.reward_funcs()] == [[1.1, -2.0], [1.0, 0.0], [1.0, 0.0]]
    assert task.reward_weights() == [1.0, 0.0, 0.0]
