"""Cost of EAG-RL's attention terms relative to a plain GRPO step (issue 17).

A `tiny` Llama (4 layers) with a tokenizer trained on the prompts, the synthetic planted cohort (16 features) with an
oracle expert, 4 prompts x 4 generations per step, real sampling of 64 completion tokens (truncated completions kept,
so every step has the same shape). Variants: plain GRPO on the outcome + text-alignment rewards; + the attention
reward over the last layer / all layers (measured on every completion, malformed or not: the worst case); + the
auxiliary loss (last layer); + the entropy-dependent up-clip. Per variant: 1 warm-up step, then the mean wall time
of the next `--steps` optimizer steps, and the time spent inside the attention reward.

    OMP_NUM_THREADS=1 flock /tmp/cpu.lock .venv/bin/python benchmarks/eagrl_cost.py --out runs/bench/eagrl_cost.json
"""
import argparse, json, os, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
import torch
from transformers import TrainerCallback

from ehr_rlvr.eagrl.task import EHRPredictionTask
from ehr_rlvr.eagrl.trainer import EAGRLTrainer
from ehr_rlvr.models import build_tiny_model, train_tokenizer
from ehr_rlvr.train import build_grpo_config


class StepTimes(TrainerCallback):
    def __init__(self): self.t, self.times = None, []
    def on_step_begin(self, args, state, control, **kw): self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): self.times.append(time.perf_counter() - self.t)


class Timed:
    "Wrap a reward function and sum the seconds spent in it."
    def __init__(self, f): self.f, self.seconds, self.__name__ = f, 0.0, f.__name__
    def bind(self, *a, **k): self.f.bind(*a, **k); return self
    def __call__(self, *a, **k):
        t = time.perf_counter(); out = self.f(*a, **k); self.seconds += time.perf_counter() - t; return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    task = EHRPredictionTask(expert="oracle", n_patients=200, n_features=16, n_planted=3)
    dd = task.build_splits(seed=0)
    rows = dd["train"].select(range(4 * (a.steps + 1)))
    tok = train_tokenizer([r["prompt"][1]["content"] for r in dd["train"]] + [task.sft_completion(r) for r in dd["train"]], vocab_size=1024)
    n_tok = [len(tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
             for r in rows]
    variants = {"plain": ([], {}), "reward_last_layer": (["eagrl_attention_alignment"], {}),
                "reward_all_layers": (["eagrl_attention_alignment"], {"_layers": None}),
                "aux_last_layer": ([], {"attention_aux_coef": 1.0}),
                "entropy_clip": ([], {"entropy_clip_power": 1.0})}
    res = {"size": a.size, "prompts_per_step": 4, "num_generations": 4, "completion_tokens": a.completion,
           "prompt_tokens_mean": sum(n_tok) / len(n_tok), "threads": torch.get_num_threads(), "variants": {}}
    for name, (extra, opts) in variants.items():
        opts = dict(opts)
        layers = opts.pop("_layers", [-1])
        model = build_tiny_model(tok, a.size, max_position_embeddings=2048)
        funcs = task.reward_funcs(["eagrl_outcome", "eagrl_text_alignment"] + extra)
        if extra:
            funcs[-1].layers, funcs[-1].require_format = layers, False
            funcs[-1] = Timed(funcs[-1])
        with tempfile.TemporaryDirectory() as d:
            cfg = build_grpo_config(d, num_generations=4, prompts_per_step=4, max_completion_length=a.completion, beta=0.0,
                                    learning_rate=1e-4, max_steps=a.steps + 1, precision="fp32", report_to="none",
                                    log_completions=False, num_completions_to_print=0, save_steps=1000, seed=0,
                                    mask_truncated_completions=False)
            cfg.reward_weights = [1.0, 0.5] + [0.5] * len(extra)
            cb = StepTimes()
            tr = EAGRLTrainer(model=model, processing_class=tok, reward_funcs=funcs, args=cfg, train_dataset=rows,
                              callbacks=[cb], **opts)
            tr.train()
        steps = cb.times[1:]
        v = {"step_s": sum(steps) / len(steps), "steps": steps}
        if extra: v["reward_s_per_step"] = funcs[-1].seconds / len(cb.times)  # includes the warm-up step's share
        res["variants"][name] = v
        print(name, json.dumps(v), flush=True)
    base = res["variants"]["plain"]["step_s"]
    for v in res["variants"].values(): v["relative"] = v["step_s"] / base
    print(json.dumps({k: round(v["relative"], 3) for k, v in res["variants"].items()}))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
