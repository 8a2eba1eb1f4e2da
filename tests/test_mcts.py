"""EAG-RL stage 1 (ehr_rlvr.eagrl.mcts): the tree search pinned on a scripted fake LLM (UCT selection, one batched
call per expansion, max back-up, the forced final question, the best trajectory by mean node value, guided vs
unguided), the STaR loop (hint rerun kept with the hint-free prompt, filter, balance, resume), the search on a real
tiny transformers model, and the 25_mcts stage through papermill on a tiny run."""
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest

from conftest import ROOT
from ehr_rlvr.eagrl.format import parse_eagrl_answer
from ehr_rlvr.eagrl.mcts import (HFStepLLM, MCTS, MCTSConfig, Node, ScriptedLLM, StarConfig, backup, balance_classes,
                                 best_trajectory, cited_features, grounding, hint_prompt, mcts_search, star, uct_select)

PROMPT = [{"role": "system", "content": "Answer in steps."},
          {"role": "user", "content": "- Lactate (Unit: mmol/L.): [1.5, 4.2]\n- Glucose (Unit: mg/dL.): [99.0, 205.0]\n"
                                      "- pH (Unit: units.): [7.41, 7.22]\nWhat is the probability that the patient dies in hospital?"}]
FEATS, TOP = ["Lactate", "Glucose", "pH"], ["Lactate", "pH"]
QUESTIONS = {0: ["What does Lactate show?", "What does Glucose show?"], 1: ["What does pH show?", "Is death likely?"]}
ANSWERS = {"What does Lactate show?": "Lactate went from 1.5 to 4.2 (rising).",
           "What does Glucose show?": "Glucose went from 99.0 to 205.0 (rising).",
           "What does pH show?": "pH went from 7.41 to 7.22 (falling).", "Is death likely?": "Likely."}
FINALS = ["Lactate, pH</Important Features>\n<Final answer>0.9", "Glucose</Important Features>\n<Final answer>0.6"]
YES = {"Glucose": 0.9, "Lactate": 0.3, "pH": 0.5}  # the model itself prefers the Glucose step; the expert, Lactate


def scripted(finals=FINALS, questions=QUESTIONS):
    return ScriptedLLM.from_script(questions, ANSWERS, finals, YES)


def after_assistant(text):
    return text.rsplit("<|assistant|>\n", 1)[-1]


# ---------------------------------------------------------------------------------------------------- search
def test_expansion_is_one_batched_propose_for_k_candidates_then_answers_then_priors():
    llm = scripted()
    s = MCTS(llm, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=2))
    kids = s.expand(s.root)
    assert [(m, len(texts), k) for m, texts, k in llm.calls] == [("propose", 1, 2), ("propose", 2, 1), ("prob_yes", 2, 1)]
    assert llm.calls[0][1][0].endswith("<|assistant|>\n<Subquestion>")
    assert [c[1][0].endswith("<Answer>") for c in llm.calls[1:2]] == [True]
    assert [k.question for k in kids] == QUESTIONS[0] and [k.cited for k in kids] == [["Lactate"], ["Glucose"]]
    # alpha 0.5, beta 1: r0 from P(Yes), r1 grounding (both numbers are in the record), g the expert share of cited features
    assert kids[0].value == pytest.approx(0.5 * 0.3 + 0.5 * 1.0 + 1.0)
    assert kids[1].value == pytest.approx(0.5 * 0.9 + 0.5 * 1.0 + 0.0)


def test_uct_selection_picks_the_expected_child():
    root = Node(0, visits=10, expanded=True)
    a, b = Node(1, root, "a", value=0.9, visits=9, q=0.9), Node(1, root, "b", value=0.5, visits=1, q=0.5)
    root.children = [a, b]
    assert uct_select(root, c_uct=0.0) is a
    assert uct_select(root, c_uct=1.0) is b  # 0.5 + sqrt(ln 11 / 2) = 1.60 > 0.9 + sqrt(ln 11 / 10) = 1.39
    b.exhausted = True
    assert uct_select(root, c_uct=1.0) is a
    a.exhausted = True
    assert uct_select(root) is None


def test_max_backup_keeps_the_best_value_and_counts_visits():
    root = Node(0, expanded=True)
    a = Node(1, root, "a", value=0.4, expanded=True)
    t1, t2 = Node(2, a, terminal=True), Node(2, a, terminal=True)
    root.children, a.children = [a], [t1, t2]
    backup([root, a, t1], 0.8)
    backup([root, a, t2], 0.3)
    assert (root.q, a.q, t1.q, t2.q) == (0.8, 0.8, 0.8, 0.3)
    assert (root.visits, a.visits) == (2, 2)
    assert t1.exhausted and t2.exhausted and a.exhausted and root.exhausted


def test_forced_final_question_at_the_depth_limit():
    for depth in (1, 2, 3):
        llm = scripted(questions={d: QUESTIONS[d % 2] for d in range(3)})
        res = mcts_search(llm, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=depth, simulations=1))
        finals = [c[1][0] for c in llm.calls if c[0] == "propose" and c[1][0].endswith("<Important Features>")]
        assert len(finals) == 1 and after_assistant(finals[0]).count("</Answer>") == depth
        subqs = [c[1][0] for c in llm.calls if c[0] == "propose" and c[1][0].endswith("<Subquestion>")]
        assert len(subqs) == depth  # no sub-question is asked at the limit
        assert len(res.best.steps) == depth and res.llm_calls == 3 * depth + 2
        assert parse_eagrl_answer(res.best.completion).format_ok


def test_best_trajectory_is_the_highest_mean_node_value_not_the_best_leaf():
    root = Node(0)
    hi = Node(1, root, "q1", "a1", "<Subquestion>q1</Subquestion><Answer>a1</Answer>\n", value=1.0)
    lo = Node(1, root, "q2", "a2", "<Subquestion>q2</Subquestion><Answer>a2</Answer>\n", value=0.0)
    ans = lambda p: parse_eagrl_answer(f"<Subquestion>q</Subquestion><Answer>a</Answer>\n<Important Features>pH</Important Features>\n<Final answer>{p}</Final answer>").value
    t_hi = Node(2, hi, terminal=True, final=ans(0.7), value=0.5)  # mean 0.75
    t_lo = Node(2, lo, terminal=True, final=ans(0.9), value=0.9)  # the best leaf, mean 0.45
    t_bad = Node(2, hi, terminal=True, final=None, value=2.0)  # unparsable: never chosen
    best = best_trajectory([t_lo, t_bad, t_hi])
    assert best.steps == [("q1", "a1")] and best.prob == 0.7 and best.value == pytest.approx(0.75)
    assert best_trajectory([t_bad]) is None


def test_guided_and_unguided_search_choose_different_paths():
    runs = {beta: mcts_search(scripted(), PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=2, simulations=1, beta=beta))
            for beta in (0.0, 1.0)}
    assert [q for q, _ in runs[1.0].best.steps] == ["What does Lactate show?", "What does pH show?"]
    assert runs[1.0].best.features == ["Lactate", "pH"] and runs[1.0].best.prob == 0.9
    assert runs[0.0].best.steps[0][0] == "What does Glucose show?"
    assert runs[0.0].llm_calls == runs[1.0].llm_calls == 8  # the same budget


def test_more_simulations_back_up_max_and_find_the_best_mean():
    res = mcts_search(scripted(), PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=2, simulations=5))
    means = {id(t): np.mean([n.value for n in t.path()]) for t in res.terminals if t.final is not None}
    assert res.root.visits == res.simulations == 5
    assert res.root.q == pytest.approx(max(means[id(t)] for t in res.terminals if t.visits))
    assert res.best.value == pytest.approx(max(means.values()))


def test_call_budget_and_unusable_candidates():
    res = mcts_search(scripted(), PROMPT, FEATS, TOP, MCTSConfig(k=2, simulations=10, max_calls=4))
    assert res.llm_calls == 6 and res.best is None  # stopped before the final question
    bad = ScriptedLLM.from_script({0: ["<Answer>x", "What does pH show?", "What does pH show?"]},
                                  finals=["pH</Important Features>\n<Final answer>high"])
    res = mcts_search(bad, PROMPT, FEATS, TOP, MCTSConfig(k=3, max_depth=1, simulations=1))
    assert [n.question for n in res.root.children] == ["What does pH show?"]  # tagged and duplicate candidates dropped
    assert res.best is None and [t.value for t in res.terminals] == [0.0] * 3
    with pytest.raises(ValueError, match="alpha must be in"):
        MCTSConfig(alpha=1.5)


def test_no_usable_step_below_the_limit_asks_the_final_question_early():
    early = ScriptedLLM.from_script({0: ["What does pH show?"], 1: ["</Answer>"]}, ANSWERS, FINALS, YES)
    res = mcts_search(early, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=3, simulations=1))
    assert len(res.best.steps) == 1 and res.llm_calls == 3 + 1 + 2
    assert early.calls[-2][1][0].endswith("</Answer>\n<Important Features>")
    dead = ScriptedLLM.from_script({0: ["<Final answer>"]}, ANSWERS, FINALS, YES)  # the root needs one step: a dead end
    res = mcts_search(dead, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=3, simulations=3))
    assert res.best is None and res.llm_calls == 1 and res.root.exhausted and res.simulations == 1


def test_step_scores_on_record_text():
    assert cited_features("Calcium, total fell; PH and lactate rose; phosphate ok", ["Lactate", "Calcium, Total", "pH"]) == \
        ["Calcium, Total", "pH", "Lactate"]
    assert grounding("went from 1.5 to 4.2", PROMPT[1]["content"]) == 1.0
    assert grounding("went from 1.5 to 8.8", PROMPT[1]["content"]) == 0.5


# ---------------------------------------------------------------------------------------------------- STaR
def hinted_finals(prefix):
    "Says 0.2 unless the prompt carries a hint."
    return ["Lactate, pH</Important Features>\n<Final answer>" + ("0.9" if "Hint:" in prefix else "0.2")]


def row(i, lab):
    return {"id": f"p{i}", "prompt": PROMPT, "ground_truth": {"label": str(lab)}, "label": lab, "outcome": "mortality",
            "feature_spans": json.dumps({f: [0, 1] for f in FEATS}), "expert_top": TOP}


SMALL = MCTSConfig(k=2, max_depth=1, simulations=1)


def test_hint_rerun_keeps_the_hint_free_prompt():
    llm = scripted(finals=hinted_finals)
    sft, stats = star([row(1, 1), row(2, 0)], llm, StarConfig(SMALL, overlap_min=0.5))
    by = {r["id"]: r for r in sft}
    assert by["p1"]["hinted"] is True and by["p2"]["hinted"] is False
    assert by["p1"]["prompt"] == PROMPT and "Hint" not in json.dumps(by["p1"])
    assert parse_eagrl_answer(by["p1"]["completion"]).value.prob == 0.9 and by["p1"]["prob"] == 0.9
    hinted_calls = [c for c in llm.calls if c[0] == "propose" and "Hint: the outcome was positive (in-hospital death)." in c[1][0]]
    assert len(hinted_calls) == 3  # sub-questions, answers, final of the re-search
    assert {"id", "prompt", "completion", "label", "arm", "iteration", "hinted", "feature_overlap", "prob"} <= set(by["p1"])
    assert stats["trajectories_accepted"] == 2 and stats["hinted_share"] == 0.5 and stats["search_accuracy"] == 0.5
    assert stats["accepted_accuracy"] == 1.0 and stats["calls_per_accepted"] == stats["llm_calls"] / 2
    assert hint_prompt(PROMPT, 0)[1]["content"].endswith("Hint: the outcome was negative (no in-hospital death).")


def test_filter_iterations_and_resume():
    cfg = StarConfig(SMALL, iterations=3, hint=False, overlap_min=0.5)
    sft, stats = star([row(1, 1)], scripted(finals=hinted_finals), cfg)  # always 0.2 without hint: wrong every round
    assert sft == [] and stats["searches"] == 3 and stats["reject_reasons"] == {"wrong": 3}
    cfg = StarConfig(SMALL, overlap_min=1.0)
    sft, stats = star([row(2, 0)], scripted(finals=["Glucose, pH</Important Features>\n<Final answer>0.1"]), cfg)
    assert sft == [] and set(stats["reject_reasons"]) == {"low_overlap"}
    # resume: a done record is reused without a call, and the result equals an uninterrupted run's
    full, st_full = star([row(1, 1), row(2, 0)], scripted(finals=hinted_finals), StarConfig(SMALL, overlap_min=0.5))
    done = {(r["iteration"], r["id"]): r for r in st_full["records"] if r["id"] == "p1"}
    log, llm = [], scripted(finals=hinted_finals)
    again, _ = star([row(1, 1), row(2, 0)], llm, StarConfig(SMALL, overlap_min=0.5), done=done, on_record=log.append)
    assert [r["id"] for r in log] == ["p2"] and again == full and llm.llm_calls == 5


def test_class_balance_caps_the_majority():
    rows = [{"id": f"r{i}", "label": int(i == 0), "value": v} for i, v in enumerate([0.1, 0.9, 0.3, 0.7, 0.5])]
    kept, dropped = balance_classes(rows, 2.0)
    assert sorted(r["id"] for r in kept) == ["r0", "r1", "r3"] and len(dropped) == 2
    assert balance_classes(rows, 0)[0] == rows
    with pytest.warns(UserWarning, match="drops all"):
        sft, _ = star([row(2, 0)], scripted(finals=hinted_finals), StarConfig(SMALL, overlap_min=0.5))
    assert sft == []


# ---------------------------------------------------------------------------------------------------- real model
def test_search_on_a_real_tiny_model_end_to_end():
    import torch
    from ehr_rlvr.models import build_tiny_model, train_tokenizer
    torch.set_num_threads(1)
    tok = train_tokenizer([PROMPT[1]["content"], *ANSWERS.values(), *QUESTIONS[0], "Answer: Yes", "Answer: No"] * 10, vocab_size=300)
    llm = HFStepLLM(build_tiny_model(tok, "nano", seed=0), tok, temperature=1.0, seed=0)
    res = mcts_search(llm, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=1, simulations=2, max_new_tokens=8, final_max_new_tokens=12))
    assert res.simulations >= 1 and 1 <= res.llm_calls == llm.llm_calls <= 7 and res.tokens_generated > 0
    assert all(0 <= n.r0 <= 1 and n.depth == 1 for n in res.root.children)
    assert all(t.terminal and t.depth == 2 for t in res.terminals)
    again = mcts_search(llm, PROMPT, FEATS, TOP, MCTSConfig(k=2, max_depth=1, simulations=2, max_new_tokens=8, final_max_new_tokens=12))
    assert [t.text for t in again.terminals] == [t.text for t in res.terminals]  # seeded: the same samples


# ---------------------------------------------------------------------------------------------------- the stage
STAGE = ROOT / "nbs" / "pipeline" / "25_mcts.ipynb"
STAGE_SMALL = {"task": "ehr_prediction", "mcts_patients": 3, "mcts_simulations": 1, "mcts_k": 2, "mcts_max_depth": 1,
               "mcts_iterations": 1, "mcts_max_new_tokens": 8, "mcts_final_max_new_tokens": 12}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    "A run dir with ehr_prediction rows (synthetic cohort, oracle expert) and an untrained nano model as models/base."
    from ehr_rlvr.models import build_tiny_model, save_model, train_tokenizer
    from ehr_rlvr.tasks import get_task
    run = tmp_path_factory.mktemp("mcts") / "run"
    dd = get_task("ehr_prediction").build_splits(source="synthetic", n_patients=30, n_features=4, expert="oracle", seed=0,
                                                 style="compact")
    dd.save_to_disk(str(run / "data" / "rows"))
    tok = train_tokenizer([r["prompt"][-1]["content"] for r in dd["train"]], vocab_size=300)
    save_model(build_tiny_model(tok, "nano"), tok, run / "models" / "base")
    return run


def _stage(run: Path, name: str, **params):
    import papermill as pm
    pm.execute_notebook(str(STAGE), str(run.parent / f"{name}.ipynb"), parameters={"run_dir": str(run), "seed": 0, **STAGE_SMALL, **params},
                        progress_bar=False, kernel_name="python3", cwd=str(ROOT))


def test_stage_declares_its_parameters():
    import papermill as pm
    declared = pm.inspect_notebook(str(STAGE))
    assert list(declared)[:4] == ["run_dir", "seed", "task", "model_id"]
    for p in ("mcts_init", "mcts_arms", "mcts_sft_arm", "mcts_patients", "mcts_simulations", "mcts_k", "mcts_max_depth",
              "mcts_alpha", "mcts_beta", "mcts_iterations", "mcts_hint", "mcts_confidence_min", "mcts_overlap_min",
              "mcts_balance_ratio", "mcts_temperature", "mcts_top_p", "mcts_max_new_tokens", "mcts_resume"):
        assert p in declared, f"25_mcts lacks parameter {p}"
    assert declared["mcts_arms"]["default"] == '["guided", "unguided"]'
    others = {k for nb in (ROOT / "nbs" / "pipeline").glob("*.ipynb") if nb != STAGE for k in pm.inspect_notebook(str(nb))}
    shared = set(declared) & others
    assert shared <= {"run_dir", "seed", "task", "model_id", "attn_implementation", "precision"}, \
        f"a flat run config would also set {shared - {'run_dir', 'seed', 'task', 'model_id', 'attn_implementation', 'precision'}} in another stage"


def test_stage_writes_summary_trajectories_and_resumes(tiny_run):
    import papermill as pm
    _stage(tiny_run, "mcts1")
    out = tiny_run / "mcts"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"guided", "unguided"} and summary["patients"] == 3
    for arm, s in summary["arms"].items():
        for key in ("llm_calls", "trajectories_accepted", "calls_per_accepted", "accepted_accuracy", "mean_feature_overlap",
                    "wall_seconds", "tokens_generated", "search_accuracy"):
            assert key in s, (arm, key)
        assert s["rows"] == 3 and s["llm_calls"] >= 3 and s["wall_seconds"] > 0 and s["searches"] >= 3
        progress = [json.loads(x) for x in (out / arm / "progress.jsonl").read_text().splitlines()]
        assert len(progress) == 3 and len({p["key"] for p in progress}) == 1
        assert sum(a["llm_calls"] for p in progress for a in p["attempts"]) == s["llm_calls"]
        assert len((out / arm / "trajectories.jsonl").read_text().splitlines()) == s["searches"]
    table = __import__("pandas").read_csv(out / "summary.csv", index_col="metric")
    assert list(table.columns) == ["guided", "unguided"] and table.loc["llm_calls", "guided"] == summary["arms"]["guided"]["llm_calls"]
    sft = [json.loads(x) for x in (out / "sft_rows.jsonl").read_text().splitlines()]
    assert len(sft) == summary["arms"]["guided"]["trajectories_accepted"]
    assert all(isinstance(r["prompt"], list) and parse_eagrl_answer(r["completion"]).format_ok for r in sft)
    # a rerun with the same settings searches nothing again
    before = {arm: (out / arm / "progress.jsonl").read_text() for arm in summary["arms"]}
    _stage(tiny_run, "mcts2")
    assert {arm: (out / arm / "progress.jsonl").read_text() for arm in summary["arms"]} == before
    assert json.loads((out / "summary.json").read_text())["arms"] == summary["arms"]
    # the multi arm refuses rows without the ensemble's saliency
    with pytest.raises(pm.PapermillExecutionError, match="ensemble_saliency"):
        _stage(tiny_run, "mcts3", mcts_arms=["guided", "multi"])
