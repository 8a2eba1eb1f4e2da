#!/usr/bin/env python
"""The real model on this CPU: prefill, decode, a training step and a whole GRPO step against the arithmetic bound.

    .venv/bin/python benchmarks/cpu_real_model.py [--model smollm2-135m-instruct] [--out report.json] [--tiny]

Every row is a rate (tokens/s) and its ratio to the arithmetic bound at the matmul rate measured here, in this run:
  - matmul rate: the best of fp32 (and bf16, where the CPU has native bf16) GEMMs shaped like this model's layers;
  - N = all parameters except the input embedding lookup; with tied embeddings the output head's matmul counts, so
    for SmolLM2-135M N = 134.5 M (attention-score FLOPs, ~2 * layers * context * hidden per token, are left out:
    under 10 % at these lengths);
  - bound = 2 N FLOP per token forward (prefill, decode), 6 N per token for a full training step, and
    2 N + 2 N_head + 4 N_top per token when only the top k blocks train (no weight gradient below them);
  - ratio = measured time / bound time (1.0 is the machine's matmul peak; targets: sampling <= 2, GRPO step <= 3).
A whole GRPO step is timed inside TRL's GRPOTrainer (the second of three steps), once with TRL's defaults (dynamic
cache, fp32, full model) and once with the options of `configs/demo.yaml` (shared prefix + static cache, bf16 autocast,
top-k layers). `--tiny` runs every measurement on the nano from-scratch model in seconds (a check of the mechanics,
used by the tests; its ratios mean nothing). Run it alone on the machine: two jobs on 2 cores slow each other.
"""
import argparse
import contextlib
import json
import tempfile
import time

import torch
from transformers import GenerationConfig, TrainerCallback
from trl import GRPOTrainer

from ehr_rlvr.core import machine_info
from ehr_rlvr.medcalc.synthetic import generate_notes
from ehr_rlvr.models import build_tiny_model, load_model, n_params, train_tokenizer
from ehr_rlvr.tasks import get_task
from ehr_rlvr.train import (build_grpo_config, cpu_bf16_supported, freeze_below_top_layers, generate_shared_prefix,
                            grpo_dataset, lora_config, with_shared_prefix)


def best_time(fn, repeats: int) -> float:
    "The fastest of `repeats` calls after one warm-up call (seconds)."
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_rate(hidden: int, inter: int, dtype, repeats: int) -> float:
    "GFLOP/s of the best GEMM among this model's layer shapes, 2048 tokens deep."
    rates = []
    for k, n in ((hidden, inter), (inter, hidden), (hidden, 3 * hidden)):
        a, b = torch.randn(2048, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        rates.append(2 * 2048 * k * n / best_time(lambda: a @ b, repeats) / 1e9)
    return max(rates)


def flop_params(model) -> int:
    "N: parameters that take part in a matmul per token (the embedding lookup does not; a tied head does)."
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is emb
    return n_params(model) - (0 if tied else emb.numel())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tiny", action="store_true", help="nano from-scratch model, short shapes: a mechanics check")
    ap.add_argument("--top-layers", type=int, default=6)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    notes = generate_notes([21, 33, 45, 51], 8, seed=1)
    task = get_task("medcalc")
    rows = task.build_splits(source=notes, style="compact", seed=0, val_frac=0.0, test_frac=0.0)["train"]
    if a.tiny:
        tok = train_tokenizer([r["prompt"][-1]["content"] for r in rows] * 2, vocab_size=400)
        model = build_tiny_model(tok, "nano")
        shape = dict(prompt=32, train_len=32, new=8, decode_batches=(8,), grpo=(2, 4, 8), repeats=1, top=1)
    else:
        model, tok = load_model(a.model, device="cpu")
        shape = dict(prompt=300, train_len=256, new=64, decode_batches=(8, 32), grpo=(2, 8, 64), repeats=2, top=a.top_layers)
    cfg = model.config
    N = flop_params(model)
    head = model.get_output_embeddings().weight.numel()
    top_n = sum(p.numel() for blk in model.model.layers[-shape["top"]:] for p in blk.parameters())
    bf16 = cpu_bf16_supported()
    rate = {"fp32": matmul_rate(cfg.hidden_size, cfg.intermediate_size, torch.float32, shape["repeats"] + 1)}
    if bf16:
        rate["bf16"] = matmul_rate(cfg.hidden_size, cfg.intermediate_size, torch.bfloat16, shape["repeats"] + 1)
    rows_out = []

    def row(name, tokens, seconds, flop_per_token, precision="fp32", **extra):
        bound = tokens * flop_per_token / (rate[precision] * 1e9)
        r = {"measure": name, "precision": precision, "tokens": tokens, "seconds": round(seconds, 3),
             "tokens_per_s": round(tokens / seconds, 1), "bound_s": round(bound, 3), "ratio": round(seconds / bound, 2), **extra}
        rows_out.append(r)
        print(json.dumps(r), flush=True)

    # 1. prefill: 8 prompts of `prompt` tokens, one forward, no cache kept
    model.eval()
    x = torch.randint(100, len(tok) - 1, (8, shape["prompt"]))
    with torch.no_grad():
        s = best_time(lambda: model(input_ids=x, use_cache=False), shape["repeats"])
    row("prefill b8", x.numel(), s, 2 * N)

    # 2. decode: `new` tokens after a real prompt, greedy, dynamic vs static cache, at batch 8 and 32; and the
    #    shared-prefix path GRPO uses (8 prompts x G copies)
    texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    gc = GenerationConfig(max_new_tokens=shape["new"], min_new_tokens=shape["new"], do_sample=False,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    for b in shape["decode_batches"]:
        enc = tok([texts[i % len(texts)] for i in range(b)], return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_tokens = int(enc["attention_mask"].sum())
        for cache in ("dynamic", "static"):
            g = GenerationConfig(**{**gc.to_dict(), "cache_implementation": cache if cache == "static" else None})
            s = best_time(lambda: model.generate(**enc, generation_config=g), 1)
            # the bound covers the prompt's prefill too: 2 N per prompt token and per generated token
            row(f"generate b{b} {cache}", b * shape["new"], s, 2 * N * (1 + prompt_tokens / (b * shape["new"])),
                prompt_tokens=prompt_tokens)
    groups = max(shape["decode_batches"]) // 8
    enc = tok([texts[i] for i in range(groups) for _ in range(8)], return_tensors="pt", padding=True, add_special_tokens=False)
    uniq_tokens = int(enc["attention_mask"][::8].sum())
    for cache in ("dynamic", "static"):
        s = best_time(lambda: generate_shared_prefix(model, enc["input_ids"], enc["attention_mask"], gc, cache), 1)
        row(f"generate b{groups * 8} shared-prefix {cache}", groups * 8 * shape["new"], s,
            2 * N * (1 + uniq_tokens / (groups * 8 * shape["new"])), prompt_tokens=uniq_tokens)

    # 3. one training step (forward + backward + AdamW) on 8 x train_len tokens
    model.train()
    y = torch.randint(100, len(tok) - 1, (8, shape["train_len"]))
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}

    def train_row(name, precision, flop, setup=None, reset=True):
        m = model
        if setup:
            m = setup()
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, 1e-5)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        def step():
            with ctx:
                loss = m(input_ids=y, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        s = best_time(step, shape["repeats"])
        row(name, y.numel(), s, flop, precision, trainable=sum(p.numel() for p in params))
        if reset:
            model.load_state_dict(state)
            for p in model.parameters():
                p.requires_grad_(True)

    topk_flop = 2 * N + 2 * head + 4 * top_n
    for prec in ["fp32"] + (["bf16"] if bf16 else []):
        train_row(f"train step full", prec, 6 * N)
        train_row(f"train step top-{shape['top']} layers", prec, topk_flop,
                  lambda: (freeze_below_top_layers(model, shape["top"]), model)[1])
    # LoRA: a full forward plus input gradients through every layer (~4 N per token); the adapters are tiny
    from peft import get_peft_model
    peft_model = get_peft_model(model, lora_config(16, 32))
    train_row("train step LoRA r16 all-linear", "fp32", 4 * N, setup=lambda: peft_model, reset=False)
    model = peft_model.unload()
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(True)

    # 4. a whole GRPO step inside TRL: P prompts x G samples x `new` tokens, default options vs the demo's
    P, G, new = shape["grpo"]
    ds = grpo_dataset(rows)
    prompt_lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    def grpo_row(name, precision, shared, cache, top):
        torch.manual_seed(0)
        model.load_state_dict(state)
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_below_top_layers(model, top)
        times = []
        class Clock(TrainerCallback):
            def on_step_begin(self, args, st, control, **kw): times.append(-time.perf_counter())
            def on_step_end(self, args, st, control, **kw): times[-1] += time.perf_counter()
        with tempfile.TemporaryDirectory() as t:
            gcfg = build_grpo_config(t, num_generations=G, prompts_per_step=P, max_completion_length=new, max_steps=3,
                                     beta=0.0, temperature=0.6, top_p=0.95, report_to="none", precision=precision,
                                     save_steps=1000, log_completions=False, mask_truncated_completions=False,
                                     cache_implementation=cache)
            gcfg.reward_weights = [1.0]
            def id_sum_reward(completion_ids, **kw): return [float(sum(ids) % 5) for ids in completion_ids]
            cls = with_shared_prefix(GRPOTrainer, cache or "dynamic") if shared else GRPOTrainer
            tr = cls(model=model, processing_class=tok, reward_funcs=[id_sum_reward], args=gcfg, train_dataset=ds,
                     callbacks=[Clock()])
            tr.train()
            hist = [h for h in tr.state.log_history if "completions/mean_length" in h]
        gen = sum(h["completions/mean_length"] for h in hist) / len(hist) * P * G
        prompt = P * sum(prompt_lens) / len(prompt_lens)  # TRL draws the step's prompts at random: the mean length
        train_tokens = (prompt + gen / G) * G  # every sequence of the batch: its prompt and its completion
        gen_flop = 2 * N * (gen + (prompt if shared else prompt * G))
        train_flop = (6 * N if not top else topk_flop) * train_tokens
        s = sorted(times)[len(times) // 2]
        row(name, int(gen), s, (gen_flop + train_flop) / gen, precision, prompts=P, generations=G,
            train_tokens=int(train_tokens), step_seconds=[round(x, 2) for x in times])
    grpo_row("GRPO step TRL defaults (dynamic cache, fp32, full)", "fp32", False, None, 0)
    best_prec = "bf16" if bf16 else "fp32"
    grpo_row(f"GRPO step shared-prefix static, {best_prec}, top-{shape['top']}", best_prec, True, "static", shape["top"])

    rep = {"model": "nano (mechanics check)" if a.tiny else a.model, "N": N, "n_params": n_params(model),
           "matmul_gflops": {k: round(v, 1) for k, v in rate.items()}, "machine": machine_info(), "rows": rows_out}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1, default=str)
    print(json.dumps({"N": N, "matmul_gflops": rep["matmul_gflops"]}))


if __name__ == "__main__":
    main()
