"""Training past one process: one SFT step and one GRPO step under `accelerate launch` with two CPU processes (gloo).

The same file is the worker: `accelerate launch --config_file configs/accelerate/cpu-2proc.yaml tests/test_distributed.py
OUT MODEL` trains and writes each rank's weights to `OUT/<phase>-rank<r>.safetensors`; the tests compare them with the
starting weights and with a one-process run of the same global batch.

What makes the two runs comparable:
- **SFT**: the global batch is the same 4 rows (1 process × 4, or 2 processes × 2: accelerate hands consecutive
  per-process batches of one seeded permutation to the ranks), dropout is 0 and the loss is normalised by the token
  count of the *global* batch (`average_tokens_across_devices`), so the two runs differ only in summation order.
- **GRPO, fixed completions**: sampling is the one step whose randomness depends on the process layout (TRL seeds
  every process differently so that ranks do not draw the same samples). The equivalence check therefore replaces
  `_generate_single_turn` by a deterministic table: the j-th sample of a prompt is a fixed completion (some well-formed,
  some not), so both layouts score the same completions with the project's `tag_count` reward. Everything else is
  TRL's real path: the prompt sampler, rewards gathered across ranks, group advantages (a group of 4 lives on one rank
  here, so the per-rank sample index j is the same in both layouts), the loss normalised over the global batch and
  DDP's gradient all-reduce.
- **GRPO, sampled**: real `model.generate` sampling on both ranks (different samples per rank, by design); this run is
  checked for rank agreement and for moving weights, not against one process.
Tolerance (`TOL`): after one AdamW step (lr 1e-3, so most weights move by ~1e-3) the float32 weights of the two runs
agree to 1e-5 (observed 1e-7 to 3e-7: AdamW's first step divides by |g|, which amplifies summation-order noise in small
gradients). A one-process run on half the global batch, the negative control, differs by ~1e-3.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"
TOL = 1e-5  # max |w_2proc - w_1proc| after one step: 1 % of the step (lr 1e-3; observed 1e-7 to 3e-7, float32)
GLOBAL_SFT_BATCH, PROMPTS, GROUP = 4, 2, 4  # SFT rows per step; GRPO prompts per step and samples per prompt

# The j-th fixed completion of every prompt (the tag_count reward scores them 1.0, 0.75, 0.25 and 0.0 and so on).
FIXED = ["<think>\nadd 2 and 3\n</think>\n<answer>\n5\n</answer>", "<think>\nadd them\n</think>\n<answer>5",
         "the answer is 5", "<think>\n</think>\n<answer>\n7\n</answer>\n</answer>"]
PROMPT_TEXTS = ["What is 2 + 3?", "Add 4 and 4.", "Subtract 1 from 9.", "Double 6.", "Halve 10.", "What is 3 * 3?"]


# ----------------------------------------------------------------------------------------------------------- worker
def _save_rank(model, out: Path, phase: str, rank: int) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(out / f"{phase}-rank{rank}.safetensors"))


def _worker(out: Path, model_dir: str, phases: list[str]) -> None:
    "Runs in each process that `accelerate launch` starts: one SFT step, one fixed-completion GRPO step, one sampled GRPO step."
    import datasets
    import torch
    from trl import GRPOTrainer, SFTTrainer

    from ehr_rlvr.models import load_model
    from ehr_rlvr.rewards import get_tag_count_reward
    from ehr_rlvr.train import build_grpo_config, build_sft_config

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    info = {}
    for phase in [p for p in phases if p.startswith("sft")]:  # sft_half: the negative control, half the global batch
        model, tok = load_model(model_dir, device="cpu")
        rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": FIXED[i % 4]}]}
                for i, p in enumerate(PROMPT_TEXTS + PROMPT_TEXTS[:2])]
        batch = GLOBAL_SFT_BATCH // world // (2 if phase == "sft_half" else 1)
        cfg = build_sft_config(str(out / phase), learning_rate=1e-3, max_steps=1, per_device_train_batch_size=batch,
                               warmup_ratio=0.0, precision="fp32", logging_steps=1, report_to="none", max_length=128)
        tr = SFTTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
        assert tr.accelerator.num_processes == world, (tr.accelerator.num_processes, world)
        tr.train()
        _save_rank(tr.model, out, phase, rank)
        info[phase] = {"backend": str(tr.accelerator.distributed_type), "num_processes": tr.accelerator.num_processes,
                       "loss": next(h["loss"] for h in tr.state.log_history if "loss" in h)}

    class FixedGRPO(GRPOTrainer):
        "GRPO whose j-th sample of a prompt is FIXED[j]: sampling made independent of the process layout."
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            seen, out_ids = {}, []
            for p in prompt_ids:
                j = seen[tuple(p)] = seen.get(tuple(p), -1) + 1
                out_ids.append(self._tokenizer(FIXED[j % len(FIXED)], add_special_tokens=False)["input_ids"] + [self._tokenizer.eos_token_id])
            return out_ids, None

    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPT_TEXTS])
    for phase in [p for p in phases if p.startswith("grpo")]:
        model, tok = load_model(model_dir, device="cpu")
        cfg = build_grpo_config(str(out / phase), num_generations=GROUP, prompts_per_step=PROMPTS, max_completion_length=12,
                                beta=0.0, learning_rate=1e-3, max_steps=1, precision="fp32", report_to="none",
                                log_completions=False, num_completions_to_print=0, save_steps=100,
                                mask_truncated_completions=False, seed=0)
        assert cfg.per_device_train_batch_size * world == PROMPTS * GROUP, "the builder keeps the global batch"
        cls = FixedGRPO if phase == "grpo_fixed" else GRPOTrainer
        tr = cls(model=model, processing_class=tok, reward_funcs=[get_tag_count_reward()], args=cfg, train_dataset=ds)
        assert tr.accelerator.num_processes == world
        tr.train()
        _save_rank(tr.model, out, phase, rank)
        info[phase] = {k: v for h in tr.state.log_history for k, v in h.items() if k in ("loss", "reward", "reward_std")}
    (out / f"info-rank{rank}.json").write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------------------------ tests
def _launch(out: Path, model_dir: Path, nproc: int, phases: list[str]) -> subprocess.CompletedProcess:
    from ehr_rlvr.core import free_port
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG), "--num_processes",
           str(nproc), "--main_process_port", str(free_port()), __file__, str(out), str(model_dir), ",".join(phases)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"accelerate launch ({nproc} processes) failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def _load(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_gloo_processes_train_like_one(tmp_path):
    import pytest
    from safetensors.torch import load_file

    from ehr_rlvr.models import build_tiny_model, save_model, train_tokenizer

    corpus = [f"{p} {c}" for p in PROMPT_TEXTS for c in FIXED] * 3
    tok = train_tokenizer(corpus, vocab_size=300)
    model_dir = save_model(build_tiny_model(tok, "nano", seed=0), tok, tmp_path / "model")
    start = load_file(str(model_dir / "model.safetensors"))

    two = _launch(tmp_path / "two", model_dir, 2, ["sft", "grpo_fixed", "grpo_sampled"])
    one = _launch(tmp_path / "one", model_dir, 1, ["sft", "grpo_fixed", "sft_half"])
    info2 = [json.loads((tmp_path / "two" / f"info-rank{r}.json").read_text()) for r in (0, 1)]
    assert info2[0]["sft"]["num_processes"] == 2 and "MULTI_CPU" in info2[0]["sft"]["backend"], info2[0]

    for phase in ("sft", "grpo_fixed", "grpo_sampled"):
        r0, r1 = (_load(tmp_path / "two" / f"{phase}-rank{r}.safetensors") for r in (0, 1))
        assert _max_diff(r0, r1) == 0.0, f"{phase}: the two ranks ended with different weights"
        # tied embeddings: state_dict may or may not list lm_head; compare what the start has
        moved = _max_diff({k: r0[k] for k in start}, start)
        assert moved > 1e-4, f"{phase}: one step did not move the weights ({moved})"
        if phase == "grpo_sampled":
            continue
        single = _load(tmp_path / "one" / f"{phase}-rank0.safetensors")
        diff = _max_diff(r0, single)
        assert diff <= TOL, f"{phase}: 2 processes vs 1 process differ by {diff:.2e} (> {TOL}); the step moved {moved:.2e}"
    # the check can fail: one process on half the global batch (what a lost rank or an unscaled batch would train)
    half = _load(tmp_path / "one" / "sft_half-rank0.safetensors")
    assert _max_diff(half, _load(tmp_path / "two" / "sft-rank0.safetensors")) > 100 * TOL
    info1 = json.loads((tmp_path / "one" / "info-rank0.json").read_text())
    # the loss and the reward are logged over the global batch, so they agree too
    assert info2[0]["sft"]["loss"] == pytest.approx(info1["sft"]["loss"], rel=1e-5)
    assert info2[0]["grpo_fixed"]["reward"] == pytest.approx(info1["grpo_fixed"]["reward"], rel=1e-6)
    assert info2[0]["grpo_fixed"]["reward_std"] > 0, "the fixed completions must give the groups different rewards"


if __name__ == "__main__":  # run by `accelerate launch` (see the module docstring)
    _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","))


def test_pipeline_stages_run_under_accelerate_launch(tmp_path):
    "configs/smoke-2proc.yaml: 30_sft and 40_rlvr launched on two gloo processes by the runner; one model written per stage."
    import json
    import subprocess
    import sys
    cli = str(Path(sys.executable).parent / "ehr-rlvr")
    p = subprocess.run([cli, "pipeline", "configs/smoke-2proc.yaml", "--run-id", "two", "--runs-root", str(tmp_path), "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "two"
    for stage in ("30_sft", "40_rlvr_sft"):
        assert (run / "stages" / f"{stage}.launch.log").exists(), stage
    assert (run / "stages" / "30_sft.launch.log").read_text().count("SFT rows (all) of") == 2  # both processes ran it
    manifest = json.loads((run / "manifest.json").read_text())
    launched = {s["name"]: s.get("launcher") for s in manifest["stages"]}
    assert launched["30_sft"]["config_file"] == "configs/accelerate/cpu-2proc.yaml" and launched["40_rlvr_sft"]["num_processes"] == 2
    assert launched["10_data"] is None
    for m in ("sft", "sft_rlvr"):
        assert len(list((run / "models" / m).glob("*.safetensors"))) == 1
    res = json.loads((run / "eval" / "sft_rlvr" / "metrics.json").read_text())
    assert res["task"] == "medcalc"
