"""ehr_rlvr.attention: exact feature attention on models whose attention is known, agreement with an independent
computation from eager `output_attentions` on random Llama and Qwen2 models loaded with sdpa, batching, restoration
of the model's state, gradients, and the alignment metrics."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from fractions import Fraction as Fr

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ehr_rlvr.attention import (attention_alignment, attention_alignment_scores, attention_share, feature_attention,
                                feature_attention_batch, span_attention, encode_texts)
from ehr_rlvr.models import train_tokenizer

torch.set_num_threads(1)


def word_tokenizer(words):
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")


def values(d):
    return np.array(list(d.values()), dtype=float)


# --- exact: q/k projections zeroed -> uniform causal attention, whatever the other (random) weights -------------
def test_uniform_causal_attention_exact():
    tok = word_tokenizer(["Sex:", "male", "Age:", "70", "Lactate:", "4.1", "2.2", "Sodium:", "140", "risk", "is", "high"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, pad_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.zero_(); layer.self_attn.k_proj.weight.zero_()
    text = "Sex: male Age: 70 Lactate: 4.1 2.2 Sodium: 140 risk is high"
    # tokens: 0 Sex: | 1 male | 2 Age: | 3 70 | 4 Lactate: | 5 4.1 | 6 2.2 | 7 Sodium: | 8 140 | 9 risk | 10 is | 11 high
    lact = (text.index("Lactate"), text.index(" Sodium"))  # tokens 4-6
    sod = (text.index("Sodium") + 3, text.index(" risk"))  # starts mid-token "Sodium:" -> tokens 7-8
    age = (text.index("Age"), text.index(" Lactate"))  # tokens 2-3
    q0 = text.index("risk")  # queries: tokens 9, 10, 11 see 10, 11, 12 positions
    raw = {f: sum(Fr(n, v) for v in (10, 11, 12)) for f, n in (("lactate", 3), ("sodium", 2), ("age", 2))}
    tot = sum(raw.values())
    want = np.array([float(raw[f] / tot) for f in ("lactate", "sodium", "age")])
    for layers in (None, [0], [2], [0, 2]):
        got = feature_attention(m, tok, text, {"lactate": lact, "sodium": sod, "age": age}, q0, layers=layers)
        np.testing.assert_allclose(values(got), want, atol=1e-6)
    assert m.config._attn_implementation == "sdpa"
    # query start inside "risk": that token no longer queries -> positions 11, 12 only
    got = feature_attention(m, tok, text, {"lactate": lact, "sodium": sod}, q0 + 1)
    r2 = {"lactate": Fr(3, 11) + Fr(3, 12), "sodium": Fr(2, 11) + Fr(2, 12)}
    np.testing.assert_allclose(values(got), [float(r2["lactate"] / sum(r2.values())), float(r2["sodium"] / sum(r2.values()))], atol=1e-6)


# --- agreement with an independent computation from eager output_attentions -------------------------------------
TEXT = ("The patient is a male, aged 71 years.\nThe patient had 3 visits at days 0, 1, 4 since admission.\n"
        "- Lactate: [4.1, nan, 2.2]\n- Creatinine: [1.9, 2.3, 2.8]\n- Sodium: [139, 141, nan]\n"
        "<|assistant|>\nLactate falls but creatinine rises. <Final answer>0.62</Final answer>")


@pytest.fixture(scope="module")
def bpe():
    corpus = [TEXT, "Heart Rate: [88, 92] Creatinine Lactate Sodium nan visits days admission", "The patient is a female"] * 20
    return train_tokenizer(corpus, vocab_size=400)


def spans_of(text):
    out = {}
    for f in ("Lactate", "Creatinine", "Sodium"):
        a = text.index(f"- {f}:")
        out[f] = (a, text.index("\n", a))
    return out


def reference(model_eager, tok, text, spans, q0, layers):
    "Feature attention computed independently: all layers' eager attention maps, token offsets checked by a loop."
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    with torch.no_grad():
        att = model_eager(torch.tensor([enc["input_ids"]]), output_attentions=True).attentions
    layers = range(len(att)) if layers is None else layers
    raw = {}
    for f, (a, b) in spans.items():
        keys = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < b and e > a]
        queries = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s >= q0]
        raw[f] = np.mean([att[l][0].mean(0)[queries][:, keys].sum().item() for l in layers])
    tot = sum(raw.values())
    return {f: v / tot for f, v in raw.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_matches_eager_output_attentions(bpe, arch):
    kw = dict(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=bpe.pad_token_id)
    Cfg, Model = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(1)
    m = Model(Cfg(**kw, attn_implementation="sdpa")).eval()
    ref_model = Model(Cfg(**kw, attn_implementation="eager")).eval()
    ref_model.load_state_dict(m.state_dict())
    spans, q0 = spans_of(TEXT), TEXT.index("<|assistant|>")
    for layers in (None, [1], [0, 2]):
        got = feature_attention(m, bpe, TEXT, spans, q0, layers=layers)
        want = reference(ref_model, bpe, TEXT, spans, q0, layers)
        np.testing.assert_allclose(values(got), values(want), atol=1e-5)
        assert abs(sum(got.values()) - 1) < 1e-6
    assert m.config._attn_implementation == "sdpa"
    # sdpa gives no probabilities: the measurement had to switch
    with torch.no_grad():
        assert not m(torch.tensor([bpe(TEXT, add_special_tokens=False)["input_ids"]]), output_attentions=True).attentions


def test_batch_equals_single_and_padding(bpe):
    torch.manual_seed(2)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, pad_token_id=bpe.pad_token_id,
                                     initializer_range=0.3))  # peaked attention, far from uniform
    prompt = TEXT[:TEXT.index("<|assistant|>")]
    comps = ["<|assistant|>\nLactate.", "<|assistant|>\nCreatinine rises, sodium stable, lactate falls: 0.7",
             "<|assistant|>\n" + "nan " * 30]
    texts = [prompt + c for c in comps]
    batch = feature_attention_batch(m, bpe, texts, spans_of(prompt), len(prompt), layers=[1], batch_size=3)
    for t, b in zip(texts, batch):
        np.testing.assert_allclose(values(b), values(feature_attention(m, bpe, t, spans_of(prompt), len(prompt), [1])), atol=1e-5)
    # a longer completion spends its attention differently: the numbers are not constant across texts
    assert np.abs(values(batch[0]) - values(batch[2])).max() > 1e-3


def test_state_restored_on_error_and_gradients(bpe):
    torch.manual_seed(3)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, pad_token_id=bpe.pad_token_id,
                                     attn_implementation="sdpa"))
    m.train()
    spans, q0 = spans_of(TEXT), TEXT.index("<|assistant|>")
    enc = encode_texts(bpe, [TEXT], [spans], [q0])
    with pytest.raises(RuntimeError):  # a membership tensor of the wrong length fails inside the hook
        span_attention(m, enc["input_ids"], enc["attention_mask"], enc["member"][:, :-1], enc["query"])
    assert m.config._attn_implementation == "sdpa" and m.training
    assert not any(mod._forward_hooks for mod in m.modules())
    assert not any(hasattr(mod, "_ehr_rlvr_eager") for mod in m.modules())
    raw = span_attention(m, enc["input_ids"], enc["attention_mask"], enc["member"], enc["query"], layers=[1], grad=True)
    (raw[0, 0] / raw[0].sum()).backward()
    g = m.model.layers[1].self_attn.q_proj.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert m.model.layers[1].mlp.down_proj.weight.grad is None  # the pass stopped inside layer 1's attention
    assert m.config._attn_implementation == "sdpa" and m.training
    m.set_attn_implementation("eager")  # a model loaded with eager stays eager
    feature_attention(m, bpe, TEXT, spans, q0, layers=[0])
    assert m.config._attn_implementation == "eager"


def test_peft_wrapped(bpe):
    peft = pytest.importorskip("peft")
    torch.manual_seed(4)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=bpe.pad_token_id))
    want = feature_attention(base, bpe, TEXT, spans_of(TEXT), TEXT.index("<|assistant|>"))
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    got = feature_attention(pm, bpe, TEXT, spans_of(TEXT), TEXT.index("<|assistant|>"))
    np.testing.assert_allclose(values(got), values(want), atol=1e-6)  # LoRA B starts at zero: same model


def test_bad_input(bpe):
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, pad_token_id=bpe.pad_token_id))
    q0 = TEXT.index("<|assistant|>")
    with pytest.raises(ValueError, match="span of feature 'Lactate' is"):
        feature_attention(m, bpe, TEXT, {"Lactate": (10, 5)}, q0)
    with pytest.raises(ValueError, match="out of range: the model has 2 layers"):
        feature_attention(m, bpe, TEXT, spans_of(TEXT), q0, layers=[2])
    with pytest.raises(ValueError, match="query_start"):
        feature_attention(m, bpe, TEXT, spans_of(TEXT), len(TEXT) + 1)
    with pytest.raises(ValueError, match="no token starts at or after query_start"):  # empty completion
        feature_attention(m, bpe, TEXT, spans_of(TEXT), len(TEXT))
    with pytest.raises(ValueError, match=r"no token overlaps the span of feature\(s\) \['gap'\]"):
        wtok = word_tokenizer(["hr", "is"])
        feature_attention(m, wtok, "hr   is", {"gap": (3, 4)}, 5)


def test_alignment_metrics():
    pol = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    assert attention_alignment(pol, {"a": 4, "b": 3, "c": 2, "d": 1}, "spearman") == pytest.approx(1.0)
    assert attention_alignment(pol, {"a": 1, "b": 2, "c": 3, "d": 4}, "spearman") == pytest.approx(-1.0)
    assert attention_alignment(pol, {"a": 1, "b": 2, "c": 3, "d": 4}, "topk", k=2) == 0.0
    assert attention_alignment(pol, {"a": 4, "b": 1, "c": 3, "d": 2}, "topk", k=2) == 0.5
    assert attention_alignment(pol, {"a": 4, "b": 3, "c": 2, "d": 1, "e": 9}, "topk", k=10) == 1.0  # k capped, extra expert feature ignored
    kl_same = attention_alignment(pol, pol, "neg_kl")
    kl_rev = attention_alignment(pol, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}, "neg_kl")
    r = np.array([.1, .2, .3, .4]) + 1e-6; q = np.array([.4, .3, .2, .1]) + 1e-6
    r, q = r / r.sum(), q / q.sum()
    assert kl_same == pytest.approx(0.0, abs=1e-9) and kl_rev == pytest.approx(-(r * np.log(r / q)).sum())
    with pytest.raises(ValueError, match="unknown alignment metric"):
        attention_alignment(pol, pol, "iou")
    assert attention_share(pol, ["a", "d"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not in the attention map"):
        attention_share(pol, ["z"])
