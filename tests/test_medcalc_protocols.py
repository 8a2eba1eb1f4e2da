"Two scoring protocols over one verifier, gold modes, label noise, and the MedCalc-Bench GPU evaluation recipe."
import json, os, warnings
from pathlib import Path

import pytest

from ehr_rlvr.medcalc.verify import (HACK_PROBES, PROTOCOLS, STRICT_ONLY_PROBES, get_medcalc_reward, read_bench_value,
                                     score_completion)
from ehr_rlvr.rewards import format_completion

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EHR_RLVR_DATA", ROOT.parent / "shared" / "data")) / "medcalc_bench"
DEV_CSV, RELABEL = DATA / "test_data_v1.0_dev.csv", DATA / "test_relabeled_dev_junzeye.csv"
needs_data = pytest.mark.skipif(not DEV_CSV.exists(), reason=f"MedCalc dev CSV not found at {DEV_CSV} (set EHR_RLVR_DATA)")

GT_DEC = {"answer": "38.12", "lower": "36.214", "upper": "40.026", "output_type": "decimal", "calculator_id": "2"}
GT_INT = {"answer": "3", "lower": "3", "upper": "3", "output_type": "integer", "calculator_id": "4"}
GT_DATE = {"answer": "01/09/2007", "lower": "01/09/2007", "upper": "01/09/2007", "output_type": "date", "calculator_id": "13"}
GT_GA = {"answer": "('14 weeks', '1 days')", "lower": "('14 weeks', '1 days')", "upper": "('14 weeks', '1 days')",
         "output_type": "integer", "calculator_id": "69"}


def bench(answer):
    "An answer in MedCalc-Bench's own zero-shot format."
    return json.dumps({"step_by_step_thinking": "step by step ...", "answer": answer})


# (answer as the model wrote it, gold): correct by MedCalc-Bench's rules
BENCH_CORRECT = [("38 mL/min", GT_DEC), ("approximately 38", GT_DEC), ("~38.5 mL/min", GT_DEC), (38, GT_DEC),
                 ("The creatinine clearance is 38.1 mL/min.", GT_DEC), ("3 points", GT_INT), ("Score: 3", GT_INT),
                 ("3 out of 9", GT_INT), ("CHA2DS2-VASc = 3", GT_INT), ("01/09/2007.", GT_DATE), ("1/9/2007", GT_DATE),
                 ("(14, 1)", GT_GA), ("14 weeks 1 days", GT_GA), ("14 weeks and 1 day", GT_GA), ("14w1d", GT_GA),
                 ("['14 weeks', '1 days']", GT_GA), (["14 weeks", "1 days"], GT_GA)]
# what the official code counts correct (or evaluates) but is malformed or ambiguous: 0 under both protocols
BENCH_REFUSED = [("19.47 to 38.94", GT_DEC), ("36-40", GT_DEC), ("38 or 39", GT_DEC), ("< 40", GT_DEC),
                 ("str(38.12)", GT_DEC), ("38.12 +/- 2", GT_DEC),
                 ("1, 1, 1", GT_INT), ("at least 3", GT_INT), ("3, not 4", GT_INT), ("٣", GT_INT),
                 ("01/09/2007 or 01/10/2007", GT_DATE), ("(14, 1, 2)", GT_GA), ("14 weeks", GT_GA), ("141", GT_GA),
                 ([38, 39], GT_DEC), (True, GT_INT), ("", GT_DEC)]


@pytest.mark.parametrize("answer,gold", BENCH_CORRECT)
def test_benchmark_spellings_count_only_under_medcalc_bench(answer, gold):
    lenient = score_completion(bench(answer), gold, protocol="medcalc-bench")
    assert lenient["correct"] and lenient["reward"] == 1.1, (answer, lenient)
    assert not score_completion(bench(answer), gold)["correct"]     # the RL reward wants the tag format
    tagged = format_completion("x", answer)
    assert score_completion(tagged, gold, protocol="medcalc-bench")["correct"], answer


@pytest.mark.parametrize("answer,gold", BENCH_REFUSED)
def test_ambiguous_or_malformed_answers_score_zero_under_both(answer, gold):
    for proto in PROTOCOLS:
        for text in (bench(answer), format_completion("x", answer)):
            s = score_completion(text, gold, protocol=proto)
            assert not s["correct"], (proto, text, s)


def test_scientific_notation_is_one_number():
    # the official code reads "1.2e-5" as -5 (its last number); here it is 1.2e-5 and scores by its value
    gold = {"answer": "0.000012", "lower": "0.0000114", "upper": "0.0000126", "output_type": "decimal", "calculator_id": "2"}
    assert read_bench_value("1.2e-5", "decimal") == (1.2e-5, "ok")
    assert score_completion(bench("1.2e-5"), gold, protocol="medcalc-bench")["correct"]
    trap = {**gold, "answer": "-5", "lower": "-5.25", "upper": "-4.75"}
    assert not score_completion(bench("1.2e-5"), trap, protocol="medcalc-bench")["correct"]


@pytest.mark.parametrize("name", list(HACK_PROBES))
def test_reward_hacking_probes_score_zero_under_both_protocols(name):
    for gold in (GT_DEC, {**GT_DEC, "answer": "25", "lower": "23.75", "upper": "26.25"}):
        assert not score_completion(HACK_PROBES[name], gold)["correct"]
        lenient = score_completion(HACK_PROBES[name], gold, protocol="medcalc-bench")
        if name in STRICT_ONLY_PROBES: continue
        assert not lenient["correct"], (name, lenient)
        assert get_medcalc_reward(protocol="medcalc-bench")([HACK_PROBES[name]], [gold])[0] in (0.1, -2.0)


def test_strict_only_probe_is_a_benchmark_correct_answer():
    assert STRICT_ONLY_PROBES == ("units in string",)
    gold = {**GT_DEC, "answer": "25", "lower": "23.75", "upper": "26.25"}
    assert score_completion(HACK_PROBES["units in string"], gold, protocol="medcalc-bench")["correct"]


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="expected one of"): score_completion("x", GT_DEC, protocol="lenient")
    with pytest.raises(ValueError, match="expected one of"): get_medcalc_reward(protocol="loose")


def test_task_views_and_protocol_parameter():
    from ehr_rlvr.tasks import get_task
    row_gt = {**GT_INT, "original_answer": "4", "original_lower": "4", "original_upper": "4", "corrected_answer": "3",
              "corrected_lower": "3", "corrected_upper": "3", "label_status": "disputed"}
    views = get_task("medcalc").score_views(bench("3 points"), row_gt)
    assert views == {"strict/original": False, "strict/corrected": False, "medcalc-bench/original": False, "medcalc-bench/corrected": True}
    assert get_task("medcalc", protocol="medcalc-bench").score(bench("3 points"), row_gt)["correct"]
    assert not get_task("medcalc").score(bench("3 points"), row_gt)["correct"]


def test_label_noise_and_gold_modes_on_synthetic_rows():
    import datasets; datasets.disable_progress_bars()
    from ehr_rlvr.tasks import get_task
    from ehr_rlvr.train import sft_dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dd = {g: get_task("medcalc", calculator_ids=[21, 33], n_per_calculator=40, label_noise_rate=0.4, gold=g)
              .build_splits(seed=1, style="compact") for g in ("original", "recomputed", "drop_disputed")}
    corrupted = {r["id"] for r in dd["original"]["train"] if "label corrupted" in r["note_type"]}
    assert 0.2 * len(dd["original"]["train"]) < len(corrupted) < 0.6 * len(dd["original"]["train"])
    assert not any("label corrupted" in r["note_type"] for r in dd["original"]["test"])
    wrong = {r["id"] for r in dd["original"]["train"] if r["ground_truth"]["answer"] != r["ground_truth"]["corrected_answer"]}
    assert wrong == corrupted                                                   # the recomputation finds every corrupted label
    assert all(r["ground_truth"]["answer"] == r["ground_truth"]["corrected_answer"] for r in dd["recomputed"]["train"])
    task = get_task("medcalc")
    kept = set(sft_dataset(task, dd["drop_disputed"]["train"])["id"])
    assert kept == {r["id"] for r in dd["drop_disputed"]["train"]} - corrupted  # disputed rows: no SFT target
    reward = task.reward_funcs(["answer"])[0]
    r = next(x for x in dd["drop_disputed"]["train"] if x["id"] in corrupted)
    assert reward([task.sft_completion(next(y for y in dd["recomputed"]["train"] if y["id"] == r["id"]))], [r["ground_truth"]]) == [None]


@needs_data
def test_evaluate_completions_reports_both_protocols_and_golds(tmp_path):
    from ehr_rlvr.cli import main
    from ehr_rlvr.medcalc.data import read_medcalc_csv
    dev = read_medcalc_csv(DEV_CSV)
    lines = [{"row": int(r["Row Number"]), "completion": bench(f"about {r['Ground Truth Answer']} units" if r["Output Type"] == "decimal"
                                                                  else r["Ground Truth Answer"])} for _, r in dev.iterrows()]
    comp = tmp_path / "c.jsonl"; comp.write_text("\n".join(json.dumps(l) for l in lines))
    out = tmp_path / "m.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate-completions", "--task", "medcalc", "--data", str(DEV_CSV), "--completions", str(comp),
                     "--protocol", "medcalc-bench", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["accuracy"] == 1.0 and res["protocol"] == "medcalc-bench"
    assert res["views"]["strict/original"]["accuracy"] == 0.0
    assert res["views"]["medcalc-bench/corrected"]["accuracy"] == pytest.approx(434 / 525)
    assert main(["evaluate-completions", "--task", "medcalc", "--data", str(DEV_CSV), "--completions", str(comp),
                 "--protocol", "lenient"]) == 2


@needs_data
def test_gold_modes_on_the_dev_rows():
    from ehr_rlvr.io import read_csv_checked
    from ehr_rlvr.medcalc.audit import apply_gold
    dev = read_csv_checked(DEV_CSV, dtype=str, keep_default_na=False)
    rec = apply_gold(dev, "recomputed")
    assert (rec["Label Status"] == "disputed").sum() == 91
    assert (rec["Ground Truth Answer"] != rec["Original Ground Truth Answer"]).sum() == 91
    drop = apply_gold(dev, "drop_disputed")
    assert (drop["Ground Truth Answer"] == "").sum() == 91
    if RELABEL.exists():
        rel = apply_gold(dev, "relabeled", RELABEL)
        assert (rel["Ground Truth Answer"] == "").sum() == 37   # rows the relabel leaves without an answer


@needs_data
def test_audit_agreement_with_the_v1_gold_holds_after_the_reference_fixes():
    from ehr_rlvr.medcalc.audit import audit_csv
    s = audit_csv(DEV_CSV)
    assert (s["agree"], s["errors"], s["by_calculator"][15]["agree"], s["by_calculator"][29]["agree"]) == (525, 0, 10, 10)


def test_reference_exact_child_pugh_and_psi():
    from ehr_rlvr.medcalc.base import compute
    cp = {"Bilirubin": [1.5, "mg/dL"], "international normalized ratio": 1.2, "Albumin": [3.8, "g/dL"]}
    assert compute(15, cp, "medcalc_v1").answer == 5                   # ascites not mentioned: +1, as the reference code does
    assert compute(15, {**cp, "Ascites": "slight"}, "medcalc_v1").answer == 4   # the CSV's lower-case value scores nothing there
    assert compute(15, {**cp, "Encephalopathy": "Grade 0"}).answer == 5         # read as no encephalopathy
    assert compute(15, {**cp, "Ascites": "Not mentinoed"}, "medcalc_v1").answer == 5   # a typo of 'not mentioned' = absent
    with pytest.raises(ValueError, match="'Encephalopathy': unknown value 'Grade 9'"):
        compute(15, {**cp, "Encephalopathy": "Grade 9"})
    psi = {"age": [70.0, "years"], "sex": "Male", "Temperature": [36.8, "degrees celsisus"]}
    assert compute(29, psi).answer == 70
    assert compute(29, psi, "medcalc_v1").answer == 85                 # the misspelled Celsius read as °F: 2.7 °C, +15
    assert compute(29, {**psi, "Temperature": [36.8, "degrees celsius"]}, "medcalc_v1").answer == 70


def test_gpu_benchmark_config_validates(tmp_path):
    from ehr_rlvr.pipeline import load_config, pipeline_dir, resolve_stages
    from ehr_rlvr.tasks import get_task
    cfg = load_config(ROOT / "configs" / "gpu-medcalc-bench-eval.yaml")
    stages = resolve_stages(cfg, pipeline_dir(ROOT), tmp_path / "run")
    assert [s["notebook"] for s in stages] == ["10_data", "50_evaluate", "60_report"]
    assert cfg["requires"] == "gpu" and cfg["params"]["model_id"] != "tiny" and cfg["params"]["regimes"] == ["base"]
    get_task(cfg["params"]["task"], **cfg["params"]["task_params"])   # the task accepts its parameters
