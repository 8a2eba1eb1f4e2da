"""One GRPO step (TRL GRPOTrainer) at EHRMIND's shape: TRL's defaults and our tuned settings side by side.

    python benchmarks/gpu_grpo.py --wheels benchmarks/wheels        # on the GPU machine: Qwen2.5-1.5B-shaped, random init
    python benchmarks/gpu_grpo.py --tiny                            # on a CPU: the same quantities at a tiny shape (CI)

The model is a Qwen2.5-1.5B *shape* (Qwen2Config, random weights: nothing is downloaded) and the tokenizer a word-level
one over the same vocabulary size, so prompts are exactly `--prompt-tokens` long. One step = 32 prompts × 8 samples
(EHRMIND), prompts of ~700 tokens, completions of up to 450. Each setting runs `--steps` optimizer steps and the last
one is reported (the first pays for kernel selection and warm-up). Per setting:

- generation tokens/s: completion tokens / time inside `_generate_single_turn` (the sampling call, synchronised);
- training tokens/s: (prompt + completion) tokens / (step time − generation time);
- MFU: 6·N·(prompt + completion tokens) / step time / the chip's peak (datasheet and measured here), N = all parameters;
- generation bandwidth: decode steps × parameter bytes / generation time / the chip's memory bandwidth (a lower
  bound: the KV cache read is left out);
- peak memory (GPU: `max_memory_allocated` over the step; CPU: the process's peak RSS so far);
- the share of the step spent generating.

`--wheels DIR` installs, offline, what the GPU machine lacks (trl, datasets and two of datasets' needs) from wheels
that `benchmarks/prepare_gpu_wheels.sh` downloaded, into a temporary folder; only requirements the machine does not
already satisfy are installed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The chip's limits. H200 SXM: 989 TFLOP/s dense bf16 (datasheet), ~790 measured here on random data; 4.8 TB/s HBM3e.
H200 = {"name": "NVIDIA H200", "peak_tflops_datasheet": 989.0, "peak_tflops_measured_ref": 790.0, "mem_bw_tbs_datasheet": 4.8}


def install_wheels(folder: str | Path, target: str | Path | None = None) -> list[str]:
    "Install, with pip offline, the requirements in `folder/requirements.txt` this Python does not already satisfy."
    from importlib import metadata

    from packaging.requirements import Requirement
    folder = Path(folder)
    reqs = [Requirement(l.strip()) for l in (folder / "requirements.txt").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    need = []
    for r in reqs:
        try:
            have = metadata.version(r.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or not r.specifier.contains(have, prereleases=True):
            need.append(str(r))
    target = Path(target or Path(tempfile.gettempdir()) / "gpu_grpo_site")
    if need:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--find-links", str(folder), "--target", str(target), "--upgrade", *need], check=True)
    sys.path.insert(0, str(target))
    return need


# ------------------------------------------------------------------------------------------------ the chip's limits
def measure_limits(device: str, quick: bool = False) -> dict:
    "Measured matmul peak (TFLOP/s) and copy bandwidth (TB/s, bytes read + written) of this device."
    import torch
    if device == "cuda":
        n, dtype, reps = (4096 if quick else 8192), torch.bfloat16, 10
    else:
        n, dtype, reps = 512, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    tflops = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12
    x = torch.empty(int((2 << 30) if device == "cuda" else (256 << 20)) // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    sync()
    bw = 2 * x.numel() * 4 * 5 / (time.perf_counter() - t) / 1e12
    del a, b, x, y
    return {"matmul_tflops": round(tflops, 3), "matmul_dtype": str(dtype).replace("torch.", ""), "copy_tbs": round(bw, 4)}


# ------------------------------------------------------------------------------------------- the model and the data
SHAPES = {
    # Qwen2.5-1.5B: 28 layers, hidden 1536, MLP 8960, 12 heads / 2 KV heads, vocabulary 151,936, tied embeddings
    "qwen2.5-1.5b": dict(config=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                                     num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
                         prompts=32, generations=8, prompt_tokens=700, completion_tokens=450),
    "tiny": dict(config=dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                             rms_norm_eps=1e-6, tie_word_embeddings=True),
                 prompts=4, generations=4, prompt_tokens=48, completion_tokens=24),
}


def word_tokenizer(vocab_size: int):
    "A word-level tokenizer over `vocab_size` words `w0 … w{V-1}` (id 0 pad, id 1 eos): one word, one token."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.padding_side = "left"
    return fast


def prompts(n: int, length: int, vocab_size: int, seed: int = 0) -> list[str]:
    "n distinct prompts of exactly `length` word tokens."
    import random
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(2, vocab_size)}" for _ in range(length)) for _ in range(n)]


def length_reward(completions, **kw) -> list[float]:
    "A cheap reward with variance (longer is better), so the step has non-zero advantages."
    return [len(c) / 1000.0 for c in completions]


# ------------------------------------------------------------------------------------------------------ one setting
def settings(device: str) -> dict[str, dict]:
    "TRL's defaults and our tuned settings; what the machine lacks (flash-attn, Liger, vLLM) is left out and said so."
    import importlib.util

    import transformers
    from packaging.version import Version
    has = lambda m: importlib.util.find_spec(m) is not None
    gpu = device == "cuda"
    default = {"label": "TRL defaults", "micro_batch": 8, "gradient_checkpointing": True, "attn": "sdpa",
               "precision": "bf16" if gpu else "fp32", "generation": "model.generate", "liger": False, "tf32": False}
    cb = Version(transformers.__version__) >= Version("5.8.0") and gpu  # continuous batching (paged attention)
    tuned = {"label": "tuned", "micro_batch": 32 if gpu else 16, "gradient_checkpointing": True,
             "attn": "flash_attention_2" if gpu and has("flash_attn") else "sdpa", "precision": "bf16" if gpu else "fp32",
             "generation": "vllm-colocate" if gpu and has("vllm") else ("continuous-batching" if cb else "model.generate"),
             "liger": gpu and has("liger_kernel"), "tf32": gpu}
    return {"defaults": default, "tuned": tuned}


def run_setting(name: str, s: dict, shape: dict, steps: int, device: str, seed: int = 0) -> dict:
    "Train `steps` GRPO steps with setting `s`; the last step's timings."
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback, Qwen2Config, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    gpu = device == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = s["tf32"]
    torch.backends.cudnn.allow_tf32 = s["tf32"]
    cfg = Qwen2Config(**shape["config"], pad_token_id=0, eos_token_id=1, bos_token_id=None)
    dtype = torch.bfloat16 if s["precision"] == "bf16" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=s["attn"])
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    n_params = sum(p.numel() for p in model.parameters())
    tok = word_tokenizer(shape["config"]["vocab_size"])
    P, G, Lp, Lc = shape["prompts"], shape["generations"], shape["prompt_tokens"], shape["completion_tokens"]
    ds = datasets.Dataset.from_dict({"prompt": prompts(P * steps, Lp, shape["config"]["vocab_size"], seed)})
    mb = min(s["micro_batch"], P * G)
    gen_kwargs = {"min_new_tokens": Lc} if s["generation"] == "model.generate" else None  # every completion full length
    extra = {}
    if s["generation"] == "vllm-colocate":
        extra = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_max_model_length=Lp + Lc + 8)
    elif s["generation"] == "continuous-batching":
        extra = dict(use_transformers_continuous_batching=True)
    out = tempfile.mkdtemp(prefix=f"gpu_grpo_{name}_")
    args = GRPOConfig(output_dir=out, num_generations=G, per_device_train_batch_size=mb,
                      gradient_accumulation_steps=P * G // mb, max_completion_length=Lc, max_steps=steps,
                      learning_rate=1e-6, beta=0.0, gradient_checkpointing=s["gradient_checkpointing"],
                      bf16=s["precision"] == "bf16", use_cpu=not gpu, report_to="none", save_strategy="no",
                      logging_steps=1, log_completions=False, disable_tqdm=True, seed=seed, use_liger_kernel=s["liger"],
                      generation_kwargs=gen_kwargs, dataloader_num_workers=0, **extra)
    rec = {"gen_s": 0.0, "gen_tokens": 0, "prompt_tokens": 0, "sequences": 0, "steps": []}

    class Timed(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *a, **k):
            sync()
            t = time.perf_counter()
            ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **k)
            sync()
            rec["gen_s"] += time.perf_counter() - t
            rec["gen_tokens"] += sum(len(c) for c in ids)
            rec["prompt_tokens"] += sum(len(p) for p in prompt_ids)
            rec["sequences"] += len(ids)
            return ids, logprobs

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if rec.get("t0") is None:  # once per optimizer step, before its first micro-batch
                sync()
                rec.update(t0=time.perf_counter(), gen_s=0.0, gen_tokens=0, prompt_tokens=0, sequences=0)
                if gpu:
                    torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, a, state, control, **kw):
            sync()
            rec["steps"].append({"step_s": time.perf_counter() - rec.pop("t0"), **{k: rec[k] for k in ("gen_s", "gen_tokens", "prompt_tokens", "sequences")},
                                 "peak_mem_gb": (torch.cuda.max_memory_allocated() if gpu else
                                                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30})
            rec["t0"] = None

    rec["t0"] = None
    tr = Timed(model=model, processing_class=tok, reward_funcs=[length_reward], args=args, train_dataset=ds,
               callbacks=[StepTimer()])
    tr.remove_callback(PrinterCallback)  # the per-step log dicts: the table says it better
    tr.train()
    last = rec["steps"][-1]
    del tr, model
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    tokens = last["prompt_tokens"] + last["gen_tokens"]
    train_s = last["step_s"] - last["gen_s"]
    bytes_per_param = 2 if s["precision"] == "bf16" else 4
    return {**{k: s[k] for k in ("label", "precision", "attn", "micro_batch", "gradient_checkpointing", "generation", "liger")},
            "n_params": n_params, "sequences": last["sequences"], "prompt_tokens": last["prompt_tokens"],
            "completion_tokens": last["gen_tokens"], "step_s": last["step_s"], "gen_s": last["gen_s"], "train_s": train_s,
            "gen_tokens_per_s": last["gen_tokens"] / last["gen_s"], "train_tokens_per_s": tokens / train_s,
            "step_flops": 6 * n_params * tokens, "gen_share": last["gen_s"] / last["step_s"],
            "gen_weight_bytes_per_s": Lc * n_params * bytes_per_param / last["gen_s"], "peak_mem_gb": last["peak_mem_gb"],
            "steps_run": len(rec["steps"])}


# ------------------------------------------------------------------------------------------------------------ report
def table(results: dict, limits: dict) -> str:
    "The settings side by side, as markdown, with the ratios to the chip's limits."
    peak_meas, peak_sheet, bw = limits["matmul_tflops"], limits.get("peak_tflops_datasheet"), limits["mem_bw_tbs"]
    rows = [("setting", lambda r: r["label"]),
            ("precision / attention", lambda r: f"{r['precision']} / {r['attn']}"),
            ("micro-batch, grad. checkpointing", lambda r: f"{r['micro_batch']}, {'on' if r['gradient_checkpointing'] else 'off'}"),
            ("generation, Liger", lambda r: f"{r['generation']}, {'on' if r['liger'] else 'n/a'}"),
            ("sequences × (prompt + completion) tokens", lambda r: f"{r['sequences']} × ({r['prompt_tokens'] // max(r['sequences'], 1)} + {r['completion_tokens'] / max(r['sequences'], 1):.0f})"),
            ("step time (s)", lambda r: f"{r['step_s']:.2f}"),
            ("share of the step generating", lambda r: f"{100 * r['gen_share']:.0f} %"),
            ("generation tokens/s", lambda r: f"{r['gen_tokens_per_s']:,.0f}"),
            ("training tokens/s", lambda r: f"{r['train_tokens_per_s']:,.0f}"),
            ("MFU, 6·N·tokens / step (vs measured peak)", lambda r: f"{100 * r['step_flops'] / r['step_s'] / 1e12 / peak_meas:.1f} %"),
            ("training-phase MFU (vs measured peak)", lambda r: f"{100 * r['step_flops'] / r['train_s'] / 1e12 / peak_meas:.1f} %")]
    if peak_sheet:
        rows.append(("MFU vs datasheet peak", lambda r: f"{100 * r['step_flops'] / r['step_s'] / 1e12 / peak_sheet:.1f} %"))
    rows += [("generation weight reads / memory bandwidth", lambda r: f"{100 * r['gen_weight_bytes_per_s'] / 1e12 / bw:.1f} %"),
             ("peak memory (GiB)", lambda r: f"{r['peak_mem_gb']:.2f}")]
    names = list(results)
    out = ["| " + " | ".join(["quantity", *names]) + " |", "|" + "---|" * (len(names) + 1)]
    for label, f in rows:
        out.append("| " + " | ".join([label, *[(f(results[n]) if "error" not in results[n] else "error") for n in names]]) + " |")
    errs = [f"- {n}: {results[n]['error']}" for n in names if "error" in results[n]]
    return "\n".join(out + errs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU shape (CI): a 2-layer model, 4 prompts × 4 samples")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per setting; the last is reported")
    ap.add_argument("--settings", default="defaults,tuned", help="comma-separated: defaults, tuned")
    ap.add_argument("--wheels", default=None, help="folder of wheels (prepare_gpu_wheels.sh) to install offline first")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    t_all = time.perf_counter()
    if a.wheels:
        t = time.perf_counter()
        need = install_wheels(a.wheels)
        print(f"installed offline in {time.perf_counter() - t:.1f}s: {need or 'nothing (all present)'}", flush=True)
    import torch
    import transformers
    import trl
    device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if not a.tiny and device != "cuda":
        raise SystemExit("no CUDA GPU visible: the full shape needs one (use --tiny on a CPU)")
    shape = SHAPES["tiny" if a.tiny else "qwen2.5-1.5b"]
    meas = measure_limits(device)
    if device == "cuda":
        name = torch.cuda.get_device_name()
        lim = {**(H200 if "H200" in name else {"peak_tflops_datasheet": None}), "device": name,
               "matmul_tflops": meas["matmul_tflops"], "mem_bw_tbs": H200["mem_bw_tbs_datasheet"] if "H200" in name else meas["copy_tbs"],
               "copy_tbs_measured": meas["copy_tbs"]}
    else:
        import platform
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
        lim = {"device": f"{cpu}, {torch.get_num_threads()} thread(s)", "matmul_tflops": meas["matmul_tflops"],
               "mem_bw_tbs": meas["copy_tbs"], "copy_tbs_measured": meas["copy_tbs"], "peak_tflops_datasheet": None}
    print(f"device: {lim['device']}; measured {meas['matmul_dtype']} matmul {meas['matmul_tflops']:.3f} TFLOP/s, "
          f"copy {meas['copy_tbs'] * 1000:.1f} GB/s; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {trl.__version__}", flush=True)
    sets = settings(device)
    results = {}
    for name in a.settings.split(","):
        t = time.perf_counter()
        try:
            results[name] = run_setting(name, sets[name], shape, a.steps, device)
        except Exception as e:  # one failing setting (an optional kernel, memory) must not hide the other's figures
            err = f"{type(e).__name__}: {str(e)[:300]}"
            results[name] = {**sets[name], "error": err}
            if sets[name]["generation"] != "model.generate":  # a GPU check comes once: retry with plain generation
                print(f"{name} failed with {sets[name]['generation']} ({err}); again with model.generate", flush=True)
                s2 = {**sets[name], "generation": "model.generate", "label": f"{sets[name]['label']} ({sets[name]['generation']} failed)"}
                try:
                    results[name] = run_setting(name, s2, shape, a.steps, device) | {"first_error": err}
                except Exception as e2:
                    results[name] = {**s2, "error": f"{type(e2).__name__}: {str(e2)[:300]}"}
        print(f"{name}: {time.perf_counter() - t:.1f}s", flush=True)
    report = {"device": lim["device"], "shape": {k: v for k, v in shape.items() if k != "config"} | {"config": shape["config"]},
              "limits": lim, "results": results, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
              "trl": trl.__version__}, "wall_s": round(time.perf_counter() - t_all, 1)}
    print(f"\n{'tiny CPU shape' if a.tiny else 'Qwen2.5-1.5B shape'} on {lim['device']} "
          f"(peak: {lim['matmul_tflops']:.3f} TFLOP/s measured" + (f", {lim['peak_tflops_datasheet']} datasheet" if lim.get("peak_tflops_datasheet") else "")
          + f"; memory {lim['mem_bw_tbs'] * 1000:.1f} GB/s)\n")
    print(table(results, lim))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
