"""Shapes: exact parameter counts, layer names, and where a shape is found."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from recipecli.fit.architectures import CATALOG, find_config, find_shape, shape_from_config
from recipecli.errors import ExitCode, RecipeError, UnknownModel, UnknownTargets
from recipecli.read.load import load_recipe

CALIBRATION = Path(__file__).parents[3] / "shared" / "calibration" / "architectures.yaml"
PUBLISHED = yaml.safe_load(CALIBRATION.read_text()) if CALIBRATION.is_file() else []


@pytest.mark.skipif(not PUBLISHED, reason="shared/calibration/architectures.yaml not present")
@pytest.mark.parametrize("entry", PUBLISHED, ids=lambda e: e["hf_id"])
def test_param_count_matches_published_total_and_breakdown(entry):
    shape = CATALOG[entry["hf_id"]]
    parts, published = shape.breakdown(), entry["param_count_breakdown"]
    assert shape.param_count() == entry["param_count_total"]
    assert parts.embedding == published["embedding"]
    assert parts.block_linear + parts.block_other == published["transformer_blocks"]
    assert parts.final_norm + parts.lm_head == published["final_norm_and_head"]


@pytest.mark.parametrize("model_id, total", [
    # sum(p.numel()) figures quoted on the models' hub pages and in public PEFT logs
    ("Qwen/Qwen2.5-1.5B", 1_543_714_304),
    ("Qwen/Qwen2.5-3B", 3_085_938_688),
    ("Qwen/Qwen2.5-14B", 14_770_033_664),
    ("meta-llama/Llama-2-70b-hf", 68_976_648_192),
    ("meta-llama/Meta-Llama-3-70B", 70_553_706_496),
    ("google/gemma-2-9b", 9_241_705_984),
    ("google/gemma-3-1b-it", 999_885_952),
    ("google/gemma-3-270m", 268_098_176),
    ("codellama/CodeLlama-34b-hf", 33_743_970_304),
    ("mistralai/Mistral-7B-v0.3", 7_248_023_552),
    ("tiiuae/falcon-7b", 6_921_720_704),
    ("bigscience/bloomz-7b1", 7_069_016_064),
    ("microsoft/phi-1_5", 1_418_270_720),
    ("huggyllama/llama-30b", 32_528_943_616),
    ("huggyllama/llama-65b", 65_285_660_672),
    # mixtures of experts: every expert counted, not only the ones a token goes through
    ("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704),
    ("Qwen/Qwen3-30B-A3B", 30_532_122_624),
    ("Qwen/Qwen1.5-MoE-A2.7B", 14_315_784_192),
    ("allenai/OLMoE-1B-7B-0924", 6_919_161_856),
])
def test_param_count_of_models_outside_the_calibration_file(model_id, total):
    assert CATALOG[model_id].param_count() == total


def test_aliases_share_one_shape():
    assert CATALOG["meta-llama/Llama-2-7b-chat-hf"] is CATALOG["meta-llama/Llama-2-7b-hf"]
    assert CATALOG["meta-llama/Llama-3.1-8B"] is CATALOG["meta-llama/Meta-Llama-3-8B"]
    assert CATALOG["Qwen/Qwen2.5-7B-Instruct"] is CATALOG["Qwen/Qwen2.5-7B"]
    assert CATALOG["mistralai/Mistral-7B-Instruct-v0.1"] is CATALOG["mistralai/Mistral-7B-v0.1"]


def test_mistral_v0_1_alone_keeps_the_sliding_window():
    # v0.2 dropped the window (config.json: null); transformers' default would put it back
    assert CATALOG["mistralai/Mistral-7B-v0.1"].sliding_window == 4096
    assert CATALOG["mistralai/Mistral-7B-Instruct-v0.2"].sliding_window is None
    assert shape_from_config(find_config("mistralai/Mistral-7B-Instruct-v0.2")).sliding_window is None
    # left out of config.json: MistralConfig's default; Qwen2 only with use_sliding_window
    assert shape_from_config({"model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "vocab_size": 10}).sliding_window == 4096
    qwen = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 10, "sliding_window": 4096}
    assert shape_from_config(qwen).sliding_window is None
    assert shape_from_config({**qwen, "use_sliding_window": True}).sliding_window == 4096


def test_linear_modules_of_llama_with_grouped_query_attention():
    modules = CATALOG["mistralai/Mistral-7B-v0.1"].linear_modules()
    assert modules == {
        "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 1024),
        "self_attn.v_proj": (4096, 1024), "self_attn.o_proj": (4096, 4096),
        "mlp.gate_proj": (4096, 14336), "mlp.up_proj": (4096, 14336),
        "mlp.down_proj": (14336, 4096)}
    assert CATALOG["mistralai/Mistral-7B-v0.1"].gated_mlp


def test_linear_modules_of_phi_and_qwen1_use_their_own_names():
    phi = CATALOG["microsoft/phi-2"]
    assert phi.linear_modules() == {
        "self_attn.q_proj": (2560, 2560), "self_attn.k_proj": (2560, 2560),
        "self_attn.v_proj": (2560, 2560), "self_attn.dense": (2560, 2560),
        "mlp.fc1": (2560, 10240), "mlp.fc2": (10240, 2560)}
    assert not phi.gated_mlp
    assert phi.attention_modules() == ("self_attn.q_proj", "self_attn.k_proj",
                                       "self_attn.v_proj", "self_attn.dense")
    # Qwen-1 has two modules called c_proj, told apart by their parents.
    qwen = CATALOG["Qwen/Qwen-7B"].linear_modules()
    assert qwen["attn.c_attn"] == (4096, 3 * 4096)
    assert qwen["attn.c_proj"] == (4096, 4096) and qwen["mlp.c_proj"] == (11008, 4096)


def test_gemma_query_width_differs_from_hidden_size():
    gemma = CATALOG["google/gemma-7b"].linear_modules()
    assert gemma["self_attn.q_proj"] == (3072, 16 * 256)
    assert gemma["self_attn.o_proj"] == (16 * 256, 3072)


CONFIGS = {  # config.json values as published, reduced to what matters
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
        "vocab_size": 32000, "tie_word_embeddings": False, "attention_bias": False},
    "Qwen/Qwen2.5-0.5B": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "vocab_size": 151936, "tie_word_embeddings": True},
    "google/gemma-2b": {
        "model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
        "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
        "head_dim": 256, "vocab_size": 256000},
    "microsoft/phi-2": {
        "model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "vocab_size": 51200, "tie_word_embeddings": False},
    "microsoft/Phi-3-mini-4k-instruct": {
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "vocab_size": 32064, "tie_word_embeddings": False},
    "Qwen/Qwen-7B": {
        "model_type": "qwen", "hidden_size": 4096, "intermediate_size": 22016,
        "num_hidden_layers": 32, "num_attention_heads": 32, "kv_channels": 128,
        "vocab_size": 151936, "no_bias": True},
    "tiiuae/falcon-7b": {
        "model_type": "falcon", "hidden_size": 4544, "num_hidden_layers": 32,
        "num_attention_heads": 71, "multi_query": True, "parallel_attn": True, "bias": False,
        "vocab_size": 65024},
    "bigscience/bloomz-7b1": {
        "model_type": "bloom", "hidden_size": 4096, "n_layer": 30, "n_head": 32,
        "vocab_size": 250880},
    "stabilityai/stablelm-base-alpha-3b": {
        "model_type": "gpt_neox", "hidden_size": 4096, "intermediate_size": 16384,
        "num_hidden_layers": 16, "num_attention_heads": 32, "vocab_size": 50688,
        "tie_word_embeddings": False},
}


@pytest.mark.parametrize("model_id", sorted(CONFIGS))
def test_shape_from_config_equals_the_catalog(model_id):
    assert shape_from_config(CONFIGS[model_id]) == CATALOG[model_id]


def test_unknown_decoder_type_is_read_as_llama_like():
    shape = shape_from_config({"model_type": "olmo2", "hidden_size": 64,
                               "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "vocab_size": 100})
    assert shape.layout == "llama" and shape.num_key_value_heads == 4 and shape.head_dim == 16


def test_encoder_decoder_and_incomplete_configs_are_refused():
    with pytest.raises(UnknownModel, match="encoder-decoder"):
        shape_from_config({"model_type": "t5", "is_encoder_decoder": True, "d_model": 512})
    with pytest.raises(UnknownModel, match="lacks hidden_size"):
        shape_from_config({"model_type": "llama", "hidden_size": 64})


@pytest.mark.parametrize("config, said", [
    ({"model_type": "llama4", "text_config": {"hidden_size": 5120, "num_local_experts": 16}},
     "'llama4' is a multimodal mixture of experts"),
    ({"model_type": "gemma3", "text_config": {"hidden_size": 2560}}, "'gemma3' is a multimodal model"),
])
def test_a_multimodal_config_is_said_to_be_one_not_a_config_that_lacks_its_sizes(config, said):
    # its sizes are under text_config: "add a model.architecture block" was the hint, which for Llama 4
    # would then be refused as a mixture of experts, and for Gemma 3 describe the language model alone
    from recipecli.errors import NotModeled

    with pytest.raises(NotModeled, match=said) as caught:
        shape_from_config(config)
    assert caught.value.path == "$.model.id" and "without a fit check" in caught.value.hint


def test_find_shape_reads_the_recipe_architecture_block(tmp_path, offline):
    recipe = tmp_path / "private.yaml"
    recipe.write_text(
        "recipe_version: 1\nname: private\n"
        f"extends: {Path(__file__).parents[2] / 'recipes' / 'base' / 'qlora-8gb.yaml'}\n"
        "model:\n  id: acme/private-model\n  architecture:\n"
        "    {hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,\n"
        "     num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 100}\n")
    model = load_recipe(recipe).model
    shape = find_shape(model.id, model.local_path, model.architecture)
    assert (shape.num_key_value_heads, shape.head_dim, shape.layout) == (2, 16, "llama")
    # embedding 6400 + 2 layers x (q 4096 + k 2048 + v 2048 + o 4096 + 3 x 8192 MLP
    # + 2 x 64 norms) + final norm 64 + untied head 6400
    assert shape.param_count() == 6400 + 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192 + 128) \
        + 64 + 6400


def test_find_shape_reads_a_local_folder(tmp_path, offline):
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["microsoft/phi-2"]))
    assert find_shape("./my-phi", local_path=tmp_path) == CATALOG["microsoft/phi-2"]
    with pytest.raises(UnknownModel, match="has no config.json"):
        find_shape("./empty", local_path=tmp_path / "nothing-here")


def test_find_shape_ignores_case_in_catalog_ids(offline):
    assert find_shape("TINYLLAMA/tinyllama-1.1b-chat-v1.0") is \
        CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]


def test_find_shape_reads_the_hugging_face_cache(offline):
    repo = offline / "models--acme--cached-7b"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    config = dict(CONFIGS["TinyLlama/TinyLlama-1.1B-Chat-v1.0"])
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(config))
    assert find_shape("acme/cached-7b") == CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]


def test_unknown_model_offline_names_the_three_fixes(offline):
    with pytest.raises(UnknownModel) as err:
        find_shape("acme/never-seen")
    message = str(err.value)
    assert "acme/never-seen" in message and "HF_HUB_OFFLINE" in message
    assert "local folder" in message and "model.architecture" in message
    assert "network access" in message
    assert isinstance(err.value, RecipeError) and err.value.exit_code == ExitCode.INVALID


def test_an_unreachable_hub_is_answered_at_once_without_retries(tmp_path):
    """Online mode with a hub name that does not resolve (no network): one resolver question, not
    huggingface_hub's five retries with back-off (~25 s) before the same "unknown model"."""
    import subprocess
    import sys

    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(tmp_path)}
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    code = "from recipecli.fit.model_catalog import download_config; print(download_config('acme/never-seen', 'main'))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "None"
    assert "Retrying" not in proc.stderr


def _snapshot(repo: Path, sha: str, config: dict) -> None:
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text(json.dumps(config))


def test_cached_config_follows_a_pinned_revision(offline):
    repo = offline / "models--acme--revised"
    tiny, phi = CONFIGS["TinyLlama/TinyLlama-1.1B-Chat-v1.0"], CONFIGS["microsoft/phi-2"]
    old, new = "a" * 40, "b" * 40
    _snapshot(repo, old, tiny)
    _snapshot(repo, new, phi)
    os.utime(repo / "snapshots" / old / "config.json", (0, 0))  # new is the newest snapshot
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)
    (repo / "refs" / "v1").write_text(old)
    assert find_shape("acme/revised", revision=old) == CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert find_shape("acme/revised", revision="v1") == CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    assert find_shape("acme/revised") == CATALOG["microsoft/phi-2"]
    # A commit that is not in the cache is not answered by another commit's config.
    with pytest.raises(UnknownModel, match="acme/revised"):
        find_shape("acme/revised", revision="c" * 40)


TINY_LLAMA = Path(__file__).parents[2] / "recipes" / "models" / "tiny-llama"


@pytest.mark.parametrize("targets", [
    ("q_proj", "v_proj"), ("self_attn.o_proj", "down_proj"),  # names and paths, as peft matches them
    ("q_proj", "q_prj"), ("mlp",),  # a typo beside a good name; a module that is not a linear layer
    ("q_proj", "lm_head"),  # the head: TRL refuses an adapter on it
])
def test_fit_check_and_run_judge_lora_targets_alike(targets):
    """The estimate (a Shape) and the run (the real torch model) accept and refuse the same names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from recipecli.train.model import lora_targets

    def verdict(match) -> str:
        try:
            match(targets)
        except UnknownTargets as err:
            return str(err)
        return "accepted"

    config = json.loads((TINY_LLAMA / "config.json").read_text())
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_LLAMA))
    expected = verdict(shape_from_config(config).match_targets)
    assert verdict(lambda wanted: lora_targets(wanted, model)) == expected
    assert (expected == "accepted") == (targets[-1] not in ("q_prj", "mlp", "lm_head"))


@pytest.mark.parametrize("content, words", [
    ("[]", "is not a config.json"), ('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 0, '
                                    '"vocab_size": 10}', "num_attention_heads 0"),
    ('{"hidden_size": "64", "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10}', "hidden_size '64'"),
    ('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10, '
     '"intermediate_size": -1}', "intermediate_size -1"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_a_malformed_local_config_is_an_unknown_model_not_a_crash(tmp_path, content, words):
    """Found in review: [], 0 heads or a size written as text crashed fit-check and run's preflight."""
    (tmp_path / "config.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UnknownModel, match=re.escape(words)):
        find_shape("./m", local_path=tmp_path)


TINY_MOE = {  # one of each family fit-check reads, small enough to build for real
    "mixtral": dict(intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      num_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(intermediate_size=96, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                      head_dim=24),
    "olmoe": dict(intermediate_size=32, num_experts=4, num_experts_per_tok=2),
}


@pytest.mark.parametrize("model_type", sorted(TINY_MOE))
def test_a_mixture_of_experts_is_counted_as_transformers_builds_it(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=100, **TINY_MOE[model_type])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = shape_from_config(config.to_dict())
    assert shape.param_count() == sum(p.numel() for p in model.parameters())
    # bitsandbytes quantizes nn.Linear layers only: the fused experts and the routers are not ones
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    assert shape.breakdown().block_linear == linear
    assert {n.split("layers.0.")[1] for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "layers.0." in n} == set(shape.linear_modules())


@pytest.mark.parametrize("config, said", [
    ({"model_type": "deepseek_v3", "n_routed_experts": 64}, "'deepseek_v3' is a mixture of experts (64 per layer)"),
    ({"model_type": "dbrx", "ffn_config": {"moe_num_experts": 16}}, "'dbrx' is a mixture of experts (16 per layer)"),
    # a model.architecture block names the family but not its experts: counted dense, Scout was 11B, not 109B
    ({"model_type": "llama4"}, "'llama4' is a mixture of experts whose layout fit-check does not read"),
    ({"model_type": "gpt_oss"}, "'gpt_oss' is a mixture of experts whose layout"),
    ({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [0]},
     "dense layers between its expert layers"),
    ({"model_type": "qwen2_moe", "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 2},
     "decoder_sparse_step 2"),
])
def test_a_mixture_of_experts_fit_check_cannot_read_is_never_counted_as_dense(config, said):
    from recipecli.errors import NotModeled

    sizes = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=100)
    with pytest.raises(NotModeled, match=re.escape(said)) as caught:
        shape_from_config({**sizes, **config})
    assert caught.value.path == "$.model.id"


def test_a_mixture_of_experts_without_its_top_k_is_an_unknown_model():
    config = dict(model_type="mixtral", hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, vocab_size=100, num_local_experts=4, num_experts_per_tok=0)
    with pytest.raises(UnknownModel, match="num_experts_per_tok 0: not a positive whole number"):
        shape_from_config(config)


def test_one_expert_is_a_dense_model():
    # num_experts: 1 (or 0) appears in dense configs of some families; it routes nothing
    config = dict(CONFIGS["TinyLlama/TinyLlama-1.1B-Chat-v1.0"], num_experts=1)
    assert shape_from_config(config) == CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]


GQA = dict(num_key_value_heads=2, intermediate_size=96)
TINY_DENSE = {  # every native layout, small enough to build on the meta device (with only the sizes it reads)
    "llama": GQA, "mistral": GQA, "qwen2": GQA, "qwen3": dict(GQA, head_dim=16), "gemma": dict(GQA, head_dim=16),
    "gemma2": dict(GQA, head_dim=16), "gemma3_text": dict(GQA, head_dim=16),
    "phi": dict(intermediate_size=96), "phi3": GQA, "gpt_neox": dict(intermediate_size=96),
    "bloom": dict(n_embed=64, n_layer=2, n_head=4), "falcon": dict(multi_query=True, parallel_attn=True),
    "falcon-new-architecture": dict(new_decoder_architecture=True, num_kv_heads=2),
    "falcon-sequential": dict(multi_query=False, parallel_attn=False, bias=True),
}


@pytest.mark.parametrize("family", sorted(TINY_DENSE) + sorted(TINY_MOE))
def test_parameter_names_and_sizes_are_transformers_own(family):
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    model_type = family.split("-")[0]
    extra = TINY_MOE.get(family, TINY_DENSE.get(family))
    moe = dict(num_key_value_heads=2) if family in TINY_MOE else {}
    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=100, pad_token_id=0, **moe, **extra)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = shape_from_config(config.to_dict())
    assert shape.parameters() == {name: p.numel() for name, p in model.named_parameters()}
    assert sum(shape.parameters().values()) == shape.param_count()


def test_a_mixture_of_experts_config_without_its_expert_count_is_not_guessed():
    config = dict(model_type="mixtral", hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, vocab_size=100, num_experts_per_tok=2)
    with pytest.raises(UnknownModel, match="states no expert count"):
        shape_from_config(config)


def _header_only(path: Path, shapes: dict) -> None:
    """A .safetensors file with its header alone: check_weights reads nothing more."""
    header = json.dumps({name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
                         for name, shape in shapes.items()}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_sharded_weights_are_checked_against_config_json_by_their_headers(tmp_path):
    from recipecli.fit.architectures import check_weights

    shape = CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    _header_only(tmp_path / "a.safetensors", {"model.embed_tokens.weight": [32000, 2048], "rotary.inv_freq": [32]})
    _header_only(tmp_path / "b.safetensors", {"model.layers.3.mlp.up_proj.weight": [5632, 2048]})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "a.safetensors", "model.layers.3.mlp.up_proj.weight": "b.safetensors"}}))
    check_weights(shape, tmp_path)  # sizes as config.json says; a name it does not know is the loader's
    _header_only(tmp_path / "b.safetensors", {"model.layers.3.mlp.up_proj.weight": [11264, 2048]})
    with pytest.raises(UnknownModel, match="model.layers.3.mlp.up_proj.weight holds 23,068,672 values, config.json's "
                                           "llama shape gives it 11,534,336"):
        check_weights(shape, tmp_path)
    (tmp_path / "b.safetensors").write_bytes(b"\xff" * 8)  # not a header: left to the loader
    check_weights(shape, tmp_path)


# A pattern of full names for each layout, as Axolotl writes lora_target_modules (peft's string form).
PATTERNS = {
    "llama": r"model.layers.[\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj",
    "phi": r"model.layers.[\d]+.(self_attn.dense|mlp.fc1)",
    "gpt_neox": r"gpt_neox.layers.[\d]+.attention.(query_key_value|dense)",
    "falcon": r"transformer.h.[\d]+.self_attention.query_key_value",
    "qwen2_moe": r"model.layers.[\d]+.(self_attn.q_proj|mlp.shared_expert.(up|down)_proj)",
}


def _tiny(family: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = TINY_MOE.get(family, TINY_DENSE.get(family))
    moe = dict(num_key_value_heads=2) if family in TINY_MOE else {}
    config = AutoConfig.for_model(family, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  vocab_size=100, pad_token_id=0, **moe, **extra)
    return config, AutoModelForCausalLM.from_config(config)


def _adapted(model, target_modules) -> set[str]:
    """The modules peft gives an adapter, by their name in the base model."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules))
    return {name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A")}


@pytest.mark.parametrize("family", sorted(PATTERNS))
def test_fit_check_counts_the_layers_peft_adapts_for_a_pattern(family, capsys):
    """A pattern is matched against full names: fit-check's (layers_at.i.path) must be the real
    model's, and the layers it counts exactly those peft adapts, given the names `recipe run`
    passes it or the pattern itself."""
    from recipecli.read.recipe import TargetPattern
    from recipecli.train.model import lora_targets

    config, model = _tiny(family)
    shape = shape_from_config(config.to_dict())
    paths = shape.match_pattern(PATTERNS[family])
    counted = {f"{shape.layers_at}.{i}.{path}" for i in range(shape.num_hidden_layers) for path in paths}
    assert paths and (family == "llama" or len(paths) < len(shape.linear_modules()))  # Axolotl's llama one: all
    names = lora_targets(TargetPattern(PATTERNS[family]), model)
    assert set(names) == counted
    assert f"-> {len(counted)} linear layers ({', '.join(sorted(paths))})" in capsys.readouterr().err
    assert _adapted(model, names) == counted
    assert _adapted(_tiny(family)[1], PATTERNS[family]) == counted


@pytest.mark.parametrize("pattern, words", [
    (r"q_proj", "matches no linear layer"),  # a name, not a full name: re.fullmatch finds nothing
    (r"model.layers.[\d]+.self_attn.q_prj", "matches no linear layer"),
    (r"lm_head", "output head"),
    (r".*_proj|lm_head", "output head"),
    (r"model.layers.[\d]+.mlp", "not a linear layer"),  # peft would try to adapt the MLP block itself
    (r"model.embed_tokens", "not a linear layer"),  # peft would adapt the embedding: fit-check counts none
])
def test_fit_check_and_run_refuse_a_pattern_alike(pattern, words):
    from transformers import AutoConfig, AutoModelForCausalLM

    from recipecli.read.recipe import TargetPattern
    from recipecli.train.model import lora_targets

    config = json.loads((TINY_LLAMA / "config.json").read_text())
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_LLAMA))
    with pytest.raises(UnknownTargets, match=words) as fit:
        shape_from_config(config).match_pattern(pattern)
    with pytest.raises(UnknownTargets, match=words) as run:
        lora_targets(TargetPattern(pattern), model)
    assert fit.value.path == run.value.path == "$.lora.target_modules"
    assert "model.layers.[\\d]+." in fit.value.hint


def test_a_pattern_that_adapts_some_decoder_layers_only_is_not_estimated():
    from recipecli.errors import NotModeled

    shape = CATALOG["TinyLlama/TinyLlama-1.1B-Chat-v1.0"]
    with pytest.raises(NotModeled, match="matches self_attn.q_proj in decoder layer 0 but nothing in layer 2") as caught:
        shape.match_pattern(r"model.layers.(0|1).self_attn.q_proj")
    assert caught.value.path == "$.lora.target_modules" and "without a fit check" in caught.value.hint
    with pytest.raises(NotModeled, match="in decoder layer 0 but self_attn.q_proj, self_attn.v_proj in layer 1"):
        shape.match_pattern(r"model.layers.[\d]+.self_attn.q_proj|model.layers.[1-9]\d*.self_attn.v_proj")
