#!/usr/bin/env python
"""Where a GRPO step of the embedded default spends its time: generation against the arithmetic bound.

    .venv/bin/python benchmarks/cpu_generation.py [--size tiny] [--batch 32] [--new-tokens 200] [--threads N]

Builds the `tiny` model (random weights: speed does not depend on what it learnt) with a tokenizer trained on
synthetic notes, then measures on this machine
  1. the sustained training throughput (forward + backward + AdamW, batch 8 x 300 tokens), in GFLOP/s (6 N per token),
  2. sampling `batch` completions of exactly `new_tokens` tokens with `model.generate` (TRL's path: dynamic KV cache,
     temperature 0.6, top-p 0.95), with a static KV cache, and with greedy decoding,
and prints the generation time next to its arithmetic bound (2 N FLOP per generated token at the training rate).
The last line is a JSON summary. Run it alone on the machine: two jobs on 2 cores slow each other far more than 2x.
"""
import argparse
import json
import platform
import time

import torch

from ehr_rlvr.core import machine_info
from ehr_rlvr.medcalc.synthetic import generate_notes
from ehr_rlvr.models import build_tiny_model, n_params, train_tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    notes = generate_notes([21, 33, 45, 51], 50, seed=1)
    tok = train_tokenizer(list(notes["Patient Note"]) + list(notes["Ground Truth Explanation"]), 2048)
    model = build_tiny_model(tok, a.size, seed=0)
    n = n_params(model)

    x = torch.randint(0, len(tok), (8, 300))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    def train_step():
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    train_step()
    t = time.perf_counter()
    for _ in range(10):
        train_step()
    train_s = (time.perf_counter() - t) / 10
    train_gflops = 6 * n * x.numel() / train_s / 1e9

    model.eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": note}], tokenize=False, add_generation_prompt=True)
               for note in notes["Patient Note"][:4]]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    reps = a.batch // 4
    ids, am = enc["input_ids"].repeat_interleave(reps, 0), enc["attention_mask"].repeat_interleave(reps, 0)

    def gen(**kw):
        best = float("inf")
        for _ in range(a.repeats):
            torch.manual_seed(0)
            t = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=am, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                               pad_token_id=tok.pad_token_id, **kw)
            best = min(best, time.perf_counter() - t)
        return best

    sample = dict(do_sample=True, temperature=0.6, top_p=0.95)
    timings = {"sample_dynamic_cache": gen(**sample), "sample_static_cache": gen(**sample, cache_implementation="static"),
               "greedy_dynamic_cache": gen(do_sample=False)}
    gen_gflop = 2 * n * ids.shape[0] * a.new_tokens / 1e9
    bound_s = gen_gflop / train_gflops
    print(f"{platform.processor() or machine_info()['cpu_model']}, torch threads {torch.get_num_threads()}, "
          f"{a.size} model {n / 1e6:.2f} M parameters")
    print(f"training: {train_s:.3f} s per step of 8 x 300 tokens = {train_gflops:.0f} GFLOP/s sustained")
    print(f"generation of {ids.shape[0]} x {a.new_tokens} tokens = {gen_gflop:.1f} GFLOP; bound at the training rate "
          f"{bound_s:.2f} s")
    for k, v in timings.items():
        print(f"  {k:22s} {v:.2f} s  ({gen_gflop / v:.1f} GFLOP/s, {v / bound_s:.1f}x the bound)")
    print(json.dumps({"machine": machine_info(), "params": n, "train_s_per_step": round(train_s, 4),
                      "train_gflops": round(train_gflops, 1), "gen_gflop": round(gen_gflop, 2),
                      "gen_bound_s": round(bound_s, 3), **{k: round(v, 3) for k, v in timings.items()},
                      "ratio_to_bound": round(timings["sample_dynamic_cache"] / bound_s, 2)}))


if __name__ == "__main__":
    main()
