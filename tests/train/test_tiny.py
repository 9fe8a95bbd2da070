"""The embedded tiny Llama: deterministic build, shipped artifacts, real bitsandbytes loading on CPU."""
from __future__ import annotations

import json

import pytest

from recipecli.train import tiny

from ..conftest import RECIPES

SHIPPED_MODEL = RECIPES / "models" / "tiny-llama"
SHIPPED_DATA = RECIPES / "data"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """Model and data folders rebuilt from scratch through the command line entry point."""
    root = tmp_path_factory.mktemp("tiny")
    tiny.main([str(root / "model"), "--data-dir", str(root / "data")])
    return root


def _json(path):
    document = json.loads(path.read_text())
    document.pop("transformers_version", None)  # which release wrote it, not what was built
    return document


def test_shipped_model_files_are_what_a_rebuild_writes(rebuilt):
    names = sorted(p.name for p in SHIPPED_MODEL.iterdir())
    assert names == sorted(p.name for p in (rebuilt / "model").iterdir())
    for name in names:
        if name.endswith(".json"):
            assert _json(rebuilt / "model" / name) == _json(SHIPPED_MODEL / name), name
        elif not name.endswith(".safetensors"):
            assert (rebuilt / "model" / name).read_text() == (SHIPPED_MODEL / name).read_text(), name


def test_shipped_weights_are_what_a_rebuild_draws(rebuilt):
    import torch
    from safetensors.torch import load_file

    shipped = load_file(SHIPPED_MODEL / "model.safetensors")
    fresh = load_file(rebuilt / "model" / "model.safetensors")
    assert shipped.keys() == fresh.keys()
    assert all(torch.equal(shipped[k], fresh[k]) for k in shipped)


def test_shipped_data_is_what_a_rebuild_writes(rebuilt):
    import pyarrow.parquet

    names = sorted(p.name for p in SHIPPED_DATA.iterdir())
    assert names == sorted(p.name for p in (rebuilt / "data").iterdir())
    for name in names:
        if name.endswith(".parquet"):
            rows = pyarrow.parquet.read_table(SHIPPED_DATA / name).to_pylist()
            assert rows == pyarrow.parquet.read_table(rebuilt / "data" / name).to_pylist() == tiny.demo_records()
        else:
            assert (SHIPPED_DATA / name).read_bytes() == (rebuilt / "data" / name).read_bytes(), name


def test_the_model_stays_small():
    assert sum(p.stat().st_size for p in SHIPPED_MODEL.iterdir()) < 1_000_000


def test_tokenizer_has_bos_eos_pad_and_a_training_chat_template():
    from transformers import AutoConfig, AutoTokenizer
    from trl.chat_template_utils import has_generation_markers

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    config = AutoConfig.from_pretrained(SHIPPED_MODEL)
    assert len(tokenizer) == config.vocab_size == tiny.VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        config.bos_token_id, config.eos_token_id, config.pad_token_id)
    ids = tokenizer("Reverse the words.").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "Reverse the words."
    assert len(ids) < 8  # trained on the demo text: its words are single tokens
    assert has_generation_markers(tokenizer.chat_template)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_loads_in_4_and_8_bit_on_the_cpu_and_computes_a_finite_loss(bits, layer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
                    if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, quantization_config=quantization,
                                                 dtype=torch.float32, device_map="cpu")
    full = AutoModelForCausalLM.from_pretrained(SHIPPED_MODEL, dtype=torch.float32)
    assert type(model.model.layers[0].self_attn.k_proj).__name__ == layer
    assert type(model.model.layers[0].mlp.down_proj).__name__ == layer
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
    text = tiny.demo_formats(tiny.demo_records(4))["tiny-text"][0]["text"]
    ids = tokenizer([text], return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
        reference = full(input_ids=ids, labels=ids).loss.item()
    assert torch.isfinite(torch.tensor(loss))
    assert abs(loss - reference) < 0.5  # quantized, yet the same model
