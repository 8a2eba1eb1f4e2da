"""The house: packaging agrees with itself, README is in sync, the CLI and the tiny-model round trip work."""
import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli


def _name_spec(req: str) -> tuple[str, str]:
    "Split 'pkg==1.0' / 'pkg<2' into (normalised name, spec)."
    for op in ("==", "<=", ">=", "<", ">", "~=", "="):
        if op in req:
            name, ver = req.split(op, 1)
            return name.strip().lower().replace("_", "-"), ("==" if op == "=" else op) + ver.strip()
    return req.strip().lower(), ""


def test_environment_yml_agrees_with_settings_ini():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    pip = dict(_name_spec(r) for k in ("requirements", "dev_requirements", "docs_requirements") for r in shlex.split(d.get(k, "")))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = dict(_name_spec(r) for r in env["dependencies"] if isinstance(r, str) and not r.startswith(("python", "pip")))
    conda = {("torch" if k == "pytorch" else k): v for k, v in conda.items()}
    assert conda == pip, f"only in settings.ini: {set(pip.items()) - set(conda.items())}; only in environment.yml: {set(conda.items()) - set(pip.items())}"
    assert pip["torch"] == "==2.13.0", "torch must stay pinned (an unpinned torch pulls CUDA wheels)"


def test_readme_in_sync_with_index_notebook():
    p = subprocess.run([sys.executable, "tools/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_settings_ini_nbdev_contract():
    d = configparser.ConfigParser(delimiters=["="])
    d.read(ROOT / "settings.ini")
    s = d["DEFAULT"]
    assert s["allowed_cell_metadata_keys"] == "tags", "papermill's parameters tag must survive nbdev_clean"
    assert s["tst_flags"].split() == ["notest", "slow", "gpu"]
    assert s["console_scripts"] == "ehr-rlvr=ehr_rlvr.cli:main"
    assert s.getboolean("clean_ids") and s.getboolean("jupyter_hooks")


def test_every_stage_has_one_parameters_cell_with_help():
    import nbformat
    for nb_path in sorted((ROOT / "nbs" / "pipeline").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters', has {len(tagged)}"
        lines = [l for l in tagged[0].source.splitlines() if l.strip()]
        assert lines[:2] and lines[0].startswith("run_dir: str") and lines[1].startswith("seed: int"), nb_path.name
        for l in lines:
            assert ":" in l.split("=")[0] and "  # " in l, f"{nb_path.name}: parameter line needs 'name: type = value  # help': {l!r}"


def test_cli_lists_stages():
    p = run_cli("stages")
    assert p.returncode == 0, p.stderr
    for stage in ("10_data", "15_pretrain", "30_sft", "40_rlvr", "50_evaluate", "60_report"):
        assert stage in p.stdout


def test_tiny_model_save_load_round_trip(tmp_path):
    import torch
    from ehr_rlvr.models import build_tiny_model, load_model, save_model, train_tokenizer
    corpus = ["Sodium 137 mmol/L, chloride 101 mmol/L. <think>AG = 137 - 101 - 24 = 12</think><answer>{\"answer\": 12}</answer>"] * 30
    tok = train_tokenizer(corpus, vocab_size=300)
    model = build_tiny_model(tok, "nano", seed=3)
    save_model(model, tok, tmp_path / "m", card={"stage": "test"})
    assert not list((tmp_path / "m").glob("*.bin")), "weights must be safetensors only"
    model2, tok2 = load_model(str(tmp_path / "m"), device="cpu")
    text = ["<|user|>\nAnion gap? Na 140, Cl 100, HCO3 25</s>\n<|assistant|>\n<think>", "weight 81.5 kg"]
    assert tok(text)["input_ids"] == tok2(text)["input_ids"]
    enc = tok(text, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model2(**enc).logits)


def test_load_model_offline_names_the_id():
    from ehr_rlvr.models import ModelLoadError, load_model
    with pytest.raises(ModelLoadError, match="meta-llama/Llama-3.2-3B-Instruct"):
        load_model("meta-llama/Llama-3.2-3B-Instruct")
