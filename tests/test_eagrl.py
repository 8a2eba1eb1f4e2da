"""EAG-RL stage 2 (ehr_rlvr.eagrl): the strict answer parser, the `ehr_prediction` task (person-level splits shared
with the expert, on the synthetic cohort, a saliency export and MIMIC-IV / TJH when present), the reward terms, and
training steps of `EAGRLTrainer` with real generation."""
import json
import math
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch

from ehr_rlvr.eagrl.format import format_eagrl_answer, parse_eagrl_answer
from ehr_rlvr.eagrl.rewards import (get_eagrl_attention_alignment_reward, get_eagrl_outcome_reward,
                                    get_eagrl_text_alignment_reward, score_outcome)
from ehr_rlvr.eagrl.task import EHRPredictionTask
from ehr_rlvr.rewards import REWARDS
from ehr_rlvr.tasks import get_task

torch.set_num_threads(1)
DATA = Path(os.environ.get("EHR_RLVR_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
GOOD = format_eagrl_answer([("Is lactate rising?", "Yes, from 2.1 to 4.3."), ("Is BP low?", "No.")], ["Lactate", "Systolic BP"], 0.73)


# ---------------------------------------------------------------------------------------------------- parser
def test_parser_accepts_layout_and_rejects_tricks():
    p = parse_eagrl_answer(GOOD)
    assert p.format_ok and p.value.prob == 0.73 and p.value.features == ["Lactate", "Systolic BP"] and len(p.value.steps) == 2
    tricks = [GOOD.replace("0.73", "0.73</Final answer><Final answer>0.9"),  # two finals
              GOOD.replace("<Important Features>", "<Subquestion>x</Subquestion><Answer>y</Answer><Important Features>", 1)
              .replace("</Important Features>", "</Important Features><Important Features>Lactate</Important Features>"),
              "<Important Features>Lactate</Important Features><Final answer>0.7</Final answer>",  # no step
              GOOD.replace("Yes, from", "<Subquestion>nested</Subquestion>"),
              GOOD.replace("0.73", "0.73 "), GOOD.replace("0.73", "inf"), GOOD.replace("0.73", "NaN"),
              GOOD.replace("0.73", "1.0000001"), GOOD.replace("0.73", "0,73"), GOOD.replace("0.73", "+0.7"),
              GOOD.replace("<Final answer>", "<final answer>"), GOOD.replace("Systolic BP", "Lactate"),
              "Sure! " + GOOD, GOOD + "\nDone.", None, 42, [{"role": "user", "content": GOOD}]]
    for t in tricks[:4] + tricks[5:]:
        assert not parse_eagrl_answer(t).format_ok, t
    assert parse_eagrl_answer(tricks[4]).format_ok  # whitespace inside the final tag body is stripped
    many = "".join("<Subquestion>q</Subquestion><Answer>a</Answer>" for _ in range(13))
    assert parse_eagrl_answer(many + GOOD[GOOD.index("\n<Important"):]).reason == "too_many_steps"


def test_parser_never_raises_on_mutations():
    rng = random.Random(0)
    verdicts = []
    for _ in range(400):
        s = list(GOOD)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4: del s[i]
            elif op < 0.8: s.insert(i, rng.choice("<>/, .0123456789aZ\n"))
            else: s[i:i] = list(rng.choice(["<Answer>", "</Final answer>", "<Subquestion>", "nan", "1e9"]))
        p = parse_eagrl_answer("".join(s))
        verdicts.append(p.format_ok)
        if p.format_ok: assert 0 <= p.value.prob <= 1 and math.isfinite(p.value.prob)
        else: assert p.value is None and isinstance(p.reason, str) and p.reason and p.reason != "ok", p
    assert 0 < sum(verdicts) < len(verdicts)  # the mutations reach both verdicts: the checks above ran on each


# ---------------------------------------------------------------------------------------------------- rewards
def test_outcome_reward_is_proper_and_penalises_format():
    r = get_eagrl_outcome_reward(EHRPredictionTask(outcome_bonus=0.0))
    probs = np.linspace(0.05, 0.95, 19)
    comps = [format_eagrl_answer([("q", "a")], ["Lactate"], float(p)) for p in probs]
    # expected reward under a true probability of 0.3 is highest at a stated 0.3
    exp = [0.3 * a + 0.7 * b for a, b in zip(r(comps, ground_truth=[{"label": "1"}] * 19), r(comps, ground_truth=[{"label": "0"}] * 19))]
    assert abs(probs[int(np.argmax(exp))] - 0.3) < 1e-9
    bad = r(["<Final answer>0.5</Final answer>"], ground_truth=[{"label": "1"}])[0]
    assert bad < min(score_outcome(p, y) for p in (0, 1) for y in (0, 1))
    assert get_eagrl_text_alignment_reward()([GOOD], expert_top=[["lactate", "Creatinine"]]) == [1 / 3]
    assert {"eagrl_outcome", "eagrl_text_alignment", "eagrl_attention_alignment"} <= set(REWARDS)


# ---------------------------------------------------------------------------------------------------- task
def _persons(dd):
    return {s: set(dd[s]["group_id"]) for s in dd}


def test_task_registry_rows_and_targets():
    t = get_task("ehr_prediction", expert="oracle", n_patients=150, n_features=10, n_planted=3, sft_target="expert")
    dd = t.build_splits(seed=3, style="eagrl")
    ps = _persons(dd)
    assert not (ps["train"] & ps["val"] or ps["train"] & ps["test"] or ps["val"] & ps["test"])
    assert sum(len(dd[s]) for s in dd) == 150
    for r in dd["test"]:
        user = r["prompt"][1]["content"]
        spans = json.loads(r["feature_spans"])
        assert all(user[a:b].startswith(f"- {f}") and "\n" not in user[a:b] for f, (a, b) in spans.items())
        assert set(r["expert_top"]) == set(r["planted"])  # oracle: the top 3 are the 3 planted features
        c = t.sft_completion(r)
        v = t.score(c, r["ground_truth"])
        assert v["format_ok"] and v["correct"] and parse_eagrl_answer(c).value.features == r["expert_top"]
    # a seeded permutation changes the line order, not the spans' content
    tp = get_task("ehr_prediction", expert="oracle", n_patients=150, n_features=10, n_planted=3, order_seed=7)
    r0, r1 = dd["test"][0], tp.build_splits(seed=3, style="eagrl")["test"][0]
    assert r0["id"] == r1["id"] and r0["prompt"] != r1["prompt"]
    assert set(json.loads(r0["feature_spans"])) == set(json.loads(r1["feature_spans"]))


def test_every_target_parses_with_comma_feature_names():
    for target in ("label", "expert"):
        t = EHRPredictionTask(expert="oracle", n_patients=60, n_features=20, n_planted=4, sft_target=target, top_k=5)
        rows = t.build_splits(seed=0)["train"]
        feats = [parse_eagrl_answer(t.sft_completion(r)).value.features for r in rows]
        assert any("Calcium, Total" in f or "Bilirubin, Total" in f for f in feats)
        assert all(set(f) <= set(json.loads(r["feature_spans"])) for f, r in zip(feats, rows))


def test_splits_follow_a_saliency_export(tmp_path):
    from ehr_rlvr.ehr.synthetic import cohort_saliency_payload, synthetic_cohort, train_cohort_expert
    coh = synthetic_cohort(150, 8, 2, seed=0)
    ex = train_cohort_expert(coh, "gru", seed=5, split_seed=5, epochs=2, n_boot=10)
    path = tmp_path / "saliency.json"
    path.write_text(json.dumps(cohort_saliency_payload(ex, coh, method="ig")))
    t = EHRPredictionTask(saliency=str(path), n_patients=150, n_features=8, n_planted=2)
    dd = t.build_splits(seed=0)  # another seed: the export's splits win
    ps = _persons(dd)
    assert {s: sorted(ps[s]) for s in ps} == {s: sorted(ex["splits"][s]) for s in ps}
    assert t.load_info["splits_from_export"] is True
    r = dd["train"][0]
    sal = json.loads(r["expert_saliency"])
    assert r["expert_top"] == sorted(sal, key=lambda f: -sal[f])[:3]
    # two experts combined (weighted mean of their scores): same splits, scores between the two
    ex2 = train_cohort_expert(coh, "transformer", seed=5, split_seed=5, epochs=2, n_boot=10)
    path2 = tmp_path / "saliency2.json"
    path2.write_text(json.dumps(cohort_saliency_payload(ex2, coh, method="ig")))
    rows = {s: EHRPredictionTask(saliency=[str(x)], n_patients=150, n_features=8, n_planted=2).build_splits(seed=0)["train"][0]
            for s, x in (("a", path), ("b", path2))}
    both = EHRPredictionTask(saliency=[str(path), str(path2)], saliency_weights=[3.0, 1.0], n_patients=150, n_features=8,
                             n_planted=2).build_splits(seed=0)
    assert {s: sorted(set(both[s]["group_id"])) for s in both} == {s: sorted(ex["splits"][s]) for s in both}
    a, b, c = (json.loads(x["expert_saliency"]) for x in (rows["a"], rows["b"], both["train"][0]))
    assert all(abs(c[f] - (0.75 * a[f] + 0.25 * b[f])) < 1e-9 for f in c)


@pytest.mark.skipif(not (DATA / "mimic_iv_demo").exists(), reason=f"MIMIC-IV demo not found under {DATA} (set EHR_RLVR_DATA)")
@pytest.mark.parametrize("outcome", ["mortality", "readmission"])
def test_mimic_no_subject_crosses_splits(outcome):
    t = get_task("ehr_prediction", source="mimic-iv", outcome=outcome, data=str(DATA / "mimic_iv_demo"), expert="none")
    dd = t.build_splits(seed=0)
    ps = _persons(dd)
    assert not (ps["train"] & ps["val"] or ps["train"] & ps["test"] or ps["val"] & ps["test"])
    n = sum(len(dd[s]) for s in dd)
    assert n > len(set().union(*ps.values()))  # several admissions per subject: the split is by person
    r = dd["test"][0]
    assert "mg/dL" in r["prompt"][1]["content"] and r["expert_top"] == []
    assert t.score(t.sft_completion(r), r["ground_truth"])["correct"]


@pytest.mark.skipif(not (DATA / "tjh").exists(), reason=f"TJH not found under {DATA} (set EHR_RLVR_DATA)")
def test_tjh_rows():
    t = get_task("ehr_prediction", source="tjh", data=str(DATA / "tjh"), expert="none")
    dd = t.build_splits(seed=0)
    assert sum(len(dd[s]) for s in dd) == 375 and not (_persons(dd)["train"] & _persons(dd)["test"])
    with pytest.raises(ValueError, match="TJH has no 'readmission'"):
        get_task("ehr_prediction", source="tjh", outcome="readmission", data=str(DATA / "tjh"), expert="none").build_splits()


def test_task_errors_name_the_parameter():
    with pytest.raises(ValueError, match="task_params.source"):
        EHRPredictionTask(source="eicu").build_splits()
    with pytest.raises(ValueError, match="task_params.data"):
        EHRPredictionTask(source="tjh").build_splits()
    with pytest.raises(TypeError, match="unknown ehr_prediction parameter"):
        EHRPredictionTask(bogus=1)


# ---------------------------------------------------------------------------------------------------- trainer
def test_training_step_with_generation_aux_loss_and_entropy_clip(tmp_path):
    from ehr_rlvr.eagrl.trainer import EAGRLTrainer
    from ehr_rlvr.models import build_tiny_model, train_tokenizer
    from ehr_rlvr.train import build_grpo_config, changed, trainable_snapshot
    task = EHRPredictionTask(expert="oracle", n_patients=40, n_features=6, n_planted=2)
    dd = task.build_splits(seed=0)
    rows = dd["train"].select(range(4))
    tok = train_tokenizer([r["prompt"][1]["content"] for r in dd["train"]] + [task.sft_completion(r) for r in dd["train"]], vocab_size=700)
    model = build_tiny_model(tok, "nano", max_position_embeddings=2048)
    cfg = build_grpo_config(str(tmp_path), num_generations=2, prompts_per_step=2, max_completion_length=24, beta=0.0,
                            learning_rate=1e-3, max_steps=2, precision="fp32", report_to="none", log_completions=False,
                            num_completions_to_print=0, save_steps=100, seed=0,
                            mask_truncated_completions=False)  # an untrained model rarely stops: keep its tokens in the loss
    names = ["eagrl_outcome", "eagrl_text_alignment", "eagrl_attention_alignment"]
    funcs = task.reward_funcs(names)
    funcs[2].require_format = False  # untrained model: measure attention on whatever it writes
    cfg.reward_weights = [1.0, 0.5, 0.5]
    tr = EAGRLTrainer(model=model, processing_class=tok, reward_funcs=funcs, args=cfg, train_dataset=rows,
                      attention_aux_coef=1.0, aux_layers=None, entropy_clip_power=1.0, entropy_clip_max=0.5)
    assert funcs[2].model is tr.model
    before = trainable_snapshot(tr.model)
    tr.train()
    logs = {k: v for h in tr.state.log_history for k, v in h.items()}
    assert changed(before, tr.model) > 0
    assert logs["eagrl/attention_aux_kl"] > 0 and 0.2 <= logs["eagrl/clip_high_bound"] <= logs["eagrl/clip_high_bound_max"] <= 0.5
    assert "rewards/eagrl_attention_alignment_reward/mean" in logs and "eagrl/planted_attention_share" in logs
    assert tr.epsilon_high == 0.2 and tr.epsilon_low == 0.2  # restored after each loss
