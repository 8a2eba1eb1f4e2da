"""Sharded saving, checked where it can run: one SFT step under FSDP2 (`configs/accelerate/fsdp.yaml`), saved by
`ehr_rlvr.train.save_policy`, against the same step in one plain process.

    python benchmarks/gpu_fsdp_save.py --wheels benchmarks/wheels   # GPU machine: FSDP2 over every visible GPU (1 is enough)
    python benchmarks/gpu_fsdp_save.py --cpu                        # CPU: 2 gloo processes (DDP; the mechanics, in CI)

Why a script and not a CI test: accelerate turns FSDP on only for accelerator devices (its AcceleratorState keeps
MULTI_CPU for gloo processes), so the sharded branch of `save_policy` (every rank calls accelerate's collective
`get_state_dict`, which gathers FSDP's full state dict; the main process writes safetensors) can only run on GPUs.
With one GPU, FSDP2 still wraps every decoder layer and the save still goes through the gather.

The check: under `accelerate launch` every process trains one step on its share of a global batch of 4 rows (float32,
lr 1e-3) and calls `save_policy`; the saved folder must load with `load_model`, hold every tensor of the starting
model, differ from it, and match a one-process step on the same 4 rows to `TOL`. Prints a JSON line; exit 1 when a
check fails. DeepSpeed ZeRO-3 takes the same branch (`get_state_dict` of the engine) but needs `deepspeed`, which the
GPU machine does not have.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |w_launched - w_one| after one AdamW step of 1e-3 (CPU, DDP: ~1e-7)
ROWS = [("What is 2 + 3?", "<answer>5</answer>"), ("Add 4 and 4.", "<answer>8</answer>"),
        ("Subtract 1 from 9.", "<answer>8</answer>"), ("Double 6.", "<answer>12</answer>")]


def worker(out: Path, model_dir: str) -> None:
    "One SFT step on this process's share of ROWS, saved with `save_policy` (run once plain, once under accelerate)."
    import datasets
    from trl import SFTTrainer

    from ehr_rlvr.models import load_model
    from ehr_rlvr.train import build_sft_config, save_policy
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model, tok = load_model(model_dir, device="cpu")
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]} for p, c in ROWS]
    cfg = build_sft_config(str(out / "trainer"), learning_rate=1e-3, max_steps=1, per_device_train_batch_size=len(ROWS) // world,
                           warmup_ratio=0.0, precision="fp32", logging_steps=1, report_to="none", max_length=64)
    tr = SFTTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    tr.train()
    save_policy(tr, tok, out / "saved", card={"stage": "gpu_fsdp_save"})
    if tr.accelerator.is_main_process:
        (out / "info.json").write_text(json.dumps({"distributed_type": str(tr.accelerator.distributed_type),
                                                   "num_processes": tr.accelerator.num_processes,
                                                   "device": str(tr.accelerator.device)}))


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="2 gloo processes with configs/accelerate/cpu-2proc.yaml (DDP)")
    ap.add_argument("--wheels", default=None, help="folder of wheels (prepare_gpu_wheels.sh) to install offline first")
    ap.add_argument("--config", default=None, help="accelerate config (default: fsdp.yaml on GPUs, cpu-2proc.yaml with --cpu)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    site = None
    if a.wheels:
        sys.path.insert(0, str(Path(__file__).parent))
        from gpu_grpo import install_wheels
        site = Path(tempfile.gettempdir()) / "gpu_grpo_site"
        install_wheels(a.wheels, site)
    import torch

    from ehr_rlvr.core import free_port
    from ehr_rlvr.models import build_tiny_model, load_model, save_model, train_tokenizer
    gpus = torch.cuda.device_count()
    if not a.cpu and gpus == 0:
        raise SystemExit("no CUDA GPU visible: FSDP needs one (use --cpu for the DDP mechanics)")
    config = Path(a.config) if a.config else ROOT / "configs" / "accelerate" / ("cpu-2proc.yaml" if a.cpu else "fsdp.yaml")
    nproc = 2 if a.cpu else gpus
    tmp = Path(tempfile.mkdtemp(prefix="fsdp_save_"))
    tok = train_tokenizer([f"{p} {c}" for p, c in ROWS] * 20, vocab_size=300)
    start_dir = save_model(build_tiny_model(tok, "nano", seed=0), tok, tmp / "start")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, site) if p), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable, __file__, "--worker", str(tmp / "one"), str(start_dir)],
            "launched": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
                         str(nproc), "--mixed_precision", "no", "--main_process_port", str(free_port()), __file__, "--worker",
                         str(tmp / "launched"), str(start_dir)]}
    for name, cmd in runs.items():
        env_run = {k: v for k, v in env.items() if name == "launched" or k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        p = subprocess.run(cmd, cwd=ROOT, env=env_run, capture_output=True, text=True, timeout=600)
        if p.returncode:
            raise SystemExit(f"{name} run failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    start, one, launched = _weights(start_dir), _weights(tmp / "one" / "saved"), _weights(tmp / "launched" / "saved")
    load_model(str(tmp / "launched" / "saved"), device="cpu")  # loads as an ordinary model folder
    missing = sorted(set(start) - set(launched))
    diff = max((launched[k] - one[k]).abs().max().item() for k in start if k in launched) if not missing else float("nan")
    moved = max((launched[k] - start[k]).abs().max().item() for k in start if k in launched) if not missing else float("nan")
    info = json.loads((tmp / "launched" / "info.json").read_text())
    res = {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config), "processes": nproc, **info,
           "tensors": len(launched), "missing_tensors": missing, "max_diff_vs_one_process": diff, "moved": moved, "tol": TOL,
           "ok": not missing and diff <= TOL and moved > 10 * TOL, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    if not res["ok"]:
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
