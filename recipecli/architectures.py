"""Model shapes: enough of a config.json to count parameters and activations exactly.

A ``Shape`` comes from, in order: the recipe's ``model.architecture`` block, a local folder's
config.json, the catalog below (public config.json values, kept here as data so that fit-check
works offline), the Hugging Face cache, and last a config-only download. Plain Python: nothing
here imports torch or transformers.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .errors import ExitCode, RecipeError

# Where each layout keeps its linear layers, as paths inside one decoder layer (the suffixes peft
# matches target_modules against), with the role that fixes each one's shape.
LAYOUTS = {
    "llama": (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"),
              ("self_attn.o_proj", "o"), ("mlp.gate_proj", "gate"), ("mlp.up_proj", "up"),
              ("mlp.down_proj", "down")),
    "phi": (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"),
            ("self_attn.dense", "o"), ("mlp.fc1", "up"), ("mlp.fc2", "down")),
    "phi3": (("self_attn.qkv_proj", "qkv"), ("self_attn.o_proj", "o"),
             ("mlp.gate_up_proj", "gate_up"), ("mlp.down_proj", "down")),
    "qwen": (("attn.c_attn", "qkv"), ("attn.c_proj", "o"), ("mlp.w1", "gate"), ("mlp.w2", "up"),
             ("mlp.c_proj", "down")),
    "falcon": (("self_attention.query_key_value", "qkv"), ("self_attention.dense", "o"),
               ("mlp.dense_h_to_4h", "up"), ("mlp.dense_4h_to_h", "down")),
    "gpt_neox": (("attention.query_key_value", "qkv"), ("attention.dense", "o"),
                 ("mlp.dense_h_to_4h", "up"), ("mlp.dense_4h_to_h", "down")),
}
LAYOUTS["bloom"] = LAYOUTS["falcon"]
ATTENTION_ROLES = frozenset({"q", "k", "v", "qkv", "o"})
GATED_ROLES = frozenset({"gate", "gate_up"})


@dataclass(frozen=True)
class Breakdown:
    """Parameter counts by where they live; their sum is the model's total."""

    embedding: int  # token embedding (+ its LayerNorm for bloom)
    block_linear: int  # weight matrices of the decoder layers: what bitsandbytes quantizes
    block_other: int  # biases and norms of the decoder layers: never quantized
    final_norm: int
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.block_linear + self.block_other + self.final_norm + self.lm_head


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer, as far as memory is concerned.

    ``intermediate_size`` is the width of one MLP branch (Qwen-1's config.json states twice it).
    ``layout`` names the linear layers (see LAYOUTS); whether the MLP is gated (SwiGLU/GeGLU,
    three matrices) or plain (two matrices) follows from it.
    """

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    layout: str = "llama"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm: str = "rms"  # "rms" (weight only) or "layer" (weight and bias)
    norms_per_layer: int = 2
    embedding_norm: bool = False
    lm_head_bias: bool = False

    @property
    def gated_mlp(self) -> bool:
        return any(role in GATED_ROLES for _, role in LAYOUTS[self.layout])

    def _features(self, role: str) -> tuple[int, int]:
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q": (h, q), "k": (h, kv), "v": (h, kv), "qkv": (h, q + 2 * kv), "o": (q, h),
                "gate": (h, i), "up": (h, i), "gate_up": (h, 2 * i), "down": (i, h)}[role]

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer, by its path."""
        return {path: self._features(role) for path, role in LAYOUTS[self.layout]}

    def attention_modules(self) -> tuple[str, ...]:
        """Paths of the query/key/value/output projections (LoRA's ``attention`` target)."""
        return tuple(path for path, role in LAYOUTS[self.layout] if role in ATTENTION_ROLES)

    def breakdown(self) -> Breakdown:
        """Count every parameter, grouped as the estimator stores them."""
        h, norm = self.hidden_size, (2 if self.norm == "layer" else 1) * self.hidden_size
        linear = bias = 0
        for path, role in LAYOUTS[self.layout]:
            fan_in, fan_out = self._features(role)
            linear += fan_in * fan_out
            has_bias = {"q": self.qkv_bias, "k": self.qkv_bias, "v": self.qkv_bias,
                        "qkv": self.qkv_bias, "o": self.o_bias}.get(role, self.mlp_bias)
            bias += fan_out if has_bias else 0
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return Breakdown(
            embedding=self.vocab_size * h + (norm if self.embedding_norm else 0),
            block_linear=linear * self.num_hidden_layers,
            block_other=(bias + norm * self.norms_per_layer) * self.num_hidden_layers,
            final_norm=norm,
            lm_head=head + (self.vocab_size if self.lm_head_bias else 0))

    def param_count(self) -> int:
        """Exact number of parameters, as ``sum(p.numel() for p in model.parameters())``."""
        return self.breakdown().total


class UnknownModel(RecipeError):
    """No shape could be found for a model without downloading it."""

    exit_code = ExitCode.INVALID


def _llama(h, i, layers, heads, kv, vocab, tied=False, head_dim=None, model_type="llama", **kw):
    return Shape(model_type, h, i, layers, heads, kv, head_dim or h // heads, vocab, tied, **kw)


def _qwen2(h, i, layers, heads, kv, vocab, tied):
    return _llama(h, i, layers, heads, kv, vocab, tied, model_type="qwen2", qkv_bias=True)


def _gemma(h, i, layers, heads, kv, model_type="gemma", norms=2):
    return _llama(h, i, layers, heads, kv, 256000, True, 256, model_type, norms_per_layer=norms)


def _qwen1(h, i, layers, heads, vocab):  # i is one branch: config.json says 2 * i
    return _llama(h, i, layers, heads, heads, vocab, model_type="qwen", layout="qwen",
                  qkv_bias=True)


def _plain(model_type, layout, h, i, layers, heads, kv, vocab, tied, norms, biases, **kw):
    return Shape(model_type, h, i, layers, heads, kv, h // heads, vocab, tied, layout,
                 qkv_bias=biases, o_bias=biases, mlp_bias=biases, norm="layer",
                 norms_per_layer=norms, **kw)


# Public config.json values. Each key is a family of hub ids sharing one shape ("|" separates them).
_CATALOG = {
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0|TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T":
        _llama(2048, 5632, 22, 32, 4, 32000),
    # LLaMA-1 7B/13B (decapoda-research, huggyllama) share Llama-2's shapes.
    "meta-llama/Llama-2-7b-hf|meta-llama/Llama-2-7b-chat-hf|decapoda-research/llama-7b-hf"
    "|huggyllama/llama-7b": _llama(4096, 11008, 32, 32, 32, 32000),
    "meta-llama/Llama-2-13b-hf|meta-llama/Llama-2-13b-chat-hf|decapoda-research/llama-13b-hf"
    "|huggyllama/llama-13b": _llama(5120, 13824, 40, 40, 40, 32000),
    "decapoda-research/llama-30b-hf|huggyllama/llama-30b": _llama(6656, 17920, 60, 52, 52, 32000),
    "decapoda-research/llama-65b-hf|huggyllama/llama-65b": _llama(8192, 22016, 80, 64, 64, 32000),
    "meta-llama/Llama-2-70b-hf|meta-llama/Llama-2-70b-chat-hf":
        _llama(8192, 28672, 80, 64, 8, 32000),
    "meta-llama/Meta-Llama-3-8B|meta-llama/Meta-Llama-3-8B-Instruct|meta-llama/Llama-3.1-8B"
    "|meta-llama/Llama-3.1-8B-Instruct|meta-llama/Meta-Llama-3.1-8B"
    "|meta-llama/Meta-Llama-3.1-8B-Instruct": _llama(4096, 14336, 32, 32, 8, 128256),
    "meta-llama/Meta-Llama-3-70B|meta-llama/Meta-Llama-3-70B-Instruct|meta-llama/Llama-3.1-70B"
    "|meta-llama/Llama-3.1-70B-Instruct": _llama(8192, 28672, 80, 64, 8, 128256),
    "meta-llama/Llama-3.2-1B|meta-llama/Llama-3.2-1B-Instruct":
        _llama(2048, 8192, 16, 32, 8, 128256, True),
    "meta-llama/Llama-3.2-3B|meta-llama/Llama-3.2-3B-Instruct":
        _llama(3072, 8192, 28, 24, 8, 128256, True),
    "codellama/CodeLlama-34b-hf|codellama/CodeLlama-34b-Instruct-hf|codellama/CodeLlama-34b-Python-hf":
        _llama(8192, 22016, 48, 64, 8, 32000),
    "mistralai/Mistral-7B-v0.1|mistralai/Mistral-7B-Instruct-v0.1|mistralai/Mistral-7B-Instruct-v0.2":
        _llama(4096, 14336, 32, 32, 8, 32000, model_type="mistral"),
    "mistralai/Mistral-7B-v0.3|mistralai/Mistral-7B-Instruct-v0.3":
        _llama(4096, 14336, 32, 32, 8, 32768, model_type="mistral"),
    "google/gemma-2b|google/gemma-2b-it|google/gemma-1.1-2b-it": _gemma(2048, 16384, 18, 8, 1),
    "google/gemma-7b|google/gemma-7b-it|google/gemma-1.1-7b-it": _gemma(3072, 24576, 28, 16, 16),
    "google/gemma-2-9b|google/gemma-2-9b-it": _gemma(3584, 14336, 42, 16, 8, "gemma2", norms=4),
    "Qwen/Qwen2.5-0.5B|Qwen/Qwen2.5-0.5B-Instruct": _qwen2(896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B|Qwen/Qwen2.5-1.5B-Instruct": _qwen2(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B|Qwen/Qwen2.5-3B-Instruct": _qwen2(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B|Qwen/Qwen2.5-7B-Instruct": _qwen2(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen/Qwen2.5-14B|Qwen/Qwen2.5-14B-Instruct": _qwen2(5120, 13824, 48, 40, 8, 152064, False),
    "Qwen/Qwen-1_8B|Qwen/Qwen-1_8B-Chat|Qwen/Qwen-1_8B-Chat-Int4": _qwen1(2048, 5504, 24, 16, 151936),
    "Qwen/Qwen-7B|Qwen/Qwen-7B-Chat|Qwen/Qwen-7B-Chat-Int4": _qwen1(4096, 11008, 32, 32, 151936),
    "Qwen/Qwen-14B|Qwen/Qwen-14B-Chat|Qwen/Qwen-14B-Chat-Int4": _qwen1(5120, 13696, 40, 40, 152064),
    "microsoft/phi-2": _plain("phi", "phi", 2560, 10240, 32, 32, 32, 51200, False, 1, True,
                              lm_head_bias=True),
    "microsoft/phi-1_5": _plain("phi", "phi", 2048, 8192, 24, 32, 32, 51200, False, 1, True,
                                lm_head_bias=True),
    "microsoft/Phi-3-mini-4k-instruct": _llama(3072, 8192, 32, 32, 32, 32064, model_type="phi3",
                                               layout="phi3"),
    "tiiuae/falcon-7b|tiiuae/falcon-7b-instruct":
        _plain("falcon", "falcon", 4544, 18176, 32, 71, 1, 65024, True, 1, False),
    "stabilityai/stablelm-base-alpha-3b|stabilityai/stablelm-tuned-alpha-3b":
        _plain("gpt_neox", "gpt_neox", 4096, 16384, 16, 32, 32, 50688, False, 2, True),
    "bigscience/bloomz-7b1|bigscience/bloom-7b1":
        _plain("bloom", "bloom", 4096, 16384, 30, 32, 32, 250880, True, 2, True,
               embedding_norm=True),
}
CATALOG: dict[str, Shape] = {name: shape for names, shape in _CATALOG.items()
                             for name in names.split("|")}
_BY_LOWER = {name.lower(): shape for name, shape in CATALOG.items()}

# Config classes whose tie_word_embeddings defaults to True when config.json leaves it out.
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "falcon", "bloom"})
_FIXES = (
    "Fix it in one of three ways:\n"
    "  1. put the model's config.json in a local folder and set model.id to that folder;\n"
    "  2. add a model.architecture block to the recipe with the config.json values: hidden_size,\n"
    "     intermediate_size, num_hidden_layers, num_attention_heads, vocab_size (and, where the\n"
    "     model has them, num_key_value_heads, head_dim, tie_word_embeddings, model_type);\n"
    "  3. run once with network access (HF_HUB_OFFLINE unset) so config.json lands in the\n"
    "     Hugging Face cache.")


def _first(config: dict, *keys: str):
    return next((config[k] for k in keys if config.get(k) is not None), None)


def shape_from_config(config: dict) -> Shape:
    """Read a Hugging Face config.json (as a dict) into a Shape.

    Args:
        config: the parsed config.json; llama, mistral, qwen2, gemma, gemma2, phi, phi3, Qwen-1
            (``qwen``), falcon, bloom and gpt_neox are read with their own layouts, any other
            decoder-only model_type as llama-like (gated MLP, RMSNorm).

    Returns:
        The model's Shape.

    Raises:
        UnknownModel: an encoder-decoder model, or a config without the sizes.
    """
    model_type = config.get("model_type", "llama")
    if config.get("is_encoder_decoder"):
        raise UnknownModel(f"model_type {model_type!r} is an encoder-decoder model; recipe "
                           "fine-tunes decoder-only causal language models")
    h = _first(config, "hidden_size", "n_embd", "n_embed")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    vocab = config.get("vocab_size")
    if None in (h, layers, heads, vocab):
        raise UnknownModel(f"config.json of model_type {model_type!r} lacks hidden_size, "
                           f"num_hidden_layers, num_attention_heads or vocab_size.\n{_FIXES}")
    kv = _first(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first(config, "head_dim", "kv_channels") or h // heads
    tied = config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    inter = _first(config, "intermediate_size", "ffn_hidden_size", "n_inner") or 4 * h
    base = dict(model_type=model_type, hidden_size=h, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tied)
    biased = dict(qkv_bias=True, o_bias=True, mlp_bias=True, norm="layer")
    if model_type == "phi":
        return Shape(**base, layout="phi", **biased, norms_per_layer=1, lm_head_bias=True)
    if model_type == "phi3":
        return Shape(**base, layout="phi3")
    if model_type == "qwen":  # Qwen-1 remote code: w1 and w2 each carry half of intermediate_size
        return Shape(**{**base, "intermediate_size": inter // 2}, layout="qwen", qkv_bias=True,
                     o_bias=not config.get("no_bias", True))
    if model_type == "falcon":
        new_arch = config.get("new_decoder_architecture", False)
        kv = kv if new_arch else (1 if config.get("multi_query", True) else heads)
        norms = 2 if new_arch or not config.get("parallel_attn", True) else 1
        bias = config.get("bias", False)
        return Shape(**{**base, "num_key_value_heads": kv}, layout="falcon", qkv_bias=bias,
                     o_bias=bias, mlp_bias=bias, norm="layer", norms_per_layer=norms)
    if model_type == "bloom":
        return Shape(**base, layout="bloom", **biased, embedding_norm=True)
    if model_type == "gpt_neox":
        return Shape(**base, layout="gpt_neox", **biased)
    bias = config.get("attention_bias", False)
    return Shape(**base, qkv_bias=bias or model_type == "qwen2", o_bias=bias,
                 mlp_bias=config.get("mlp_bias", False),
                 norms_per_layer=4 if model_type == "gemma2" else 2)


def _read_config(path: Path) -> Shape:
    try:
        return shape_from_config(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as err:
        raise UnknownModel(f"{path} is not valid JSON: {err}") from err


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def cached_config(model_id: str, revision: str = "main") -> Optional[Path]:
    """config.json of a hub model in the local Hugging Face cache, or None.

    The snapshot the revision's ref points at wins; otherwise the newest snapshot that has one.
    """
    repo = _hub_cache() / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / revision
    if ref.is_file():
        pinned = repo / "snapshots" / ref.read_text(encoding="utf-8").strip() / "config.json"
        if pinned.is_file():
            return pinned
    found = sorted(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download_config(model_id: str, revision: str) -> Optional[Path]:
    from huggingface_hub import hf_hub_download  # only here: the only network path
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model_id, "config.json", revision=revision))
    # No network, no such repo or file, a gated repo, an id the hub rejects: all mean "not found".
    except (OSError, EntryNotFoundError, ValueError):
        return None


def find_shape(model_id: str, local_path: Optional[Path] = None, architecture=None,
               revision: str = "main") -> Shape:
    """The Shape of a model, found without downloading weights.

    Args:
        model_id: hub id (org/name) or the recipe's model.id.
        local_path: the local model folder, when model.id names one.
        architecture: the recipe's ``model.architecture`` block (recipecli.recipe.Architecture).
        revision: hub revision, for the cache and the config-only download.

    Returns:
        The first shape found: recipe block, local config.json, catalog, Hugging Face cache,
        then (unless HF_HUB_OFFLINE is set) a download of config.json alone.

    Raises:
        UnknownModel: none of those knows the model; the message says how to fix it.
    """
    if architecture is not None:
        return shape_from_config({k: v for k, v in asdict(architecture).items() if v is not None})
    if local_path is not None:
        config = Path(local_path) / "config.json"
        if not config.is_file():
            raise UnknownModel(f"model folder {local_path} has no config.json.\n{_FIXES}")
        return _read_config(config)
    if model_id.lower() in _BY_LOWER:
        return _BY_LOWER[model_id.lower()]
    config = cached_config(model_id, revision)
    if config is None and not _offline():
        config = _download_config(model_id, revision)
    if config is None:
        where = "offline (HF_HUB_OFFLINE is set)" if _offline() else "on the hub or offline"
        raise UnknownModel(f"cannot find the architecture of {model_id!r} {where}: it is not in "
                           f"recipe's catalog nor in the Hugging Face cache at {_hub_cache()}.\n"
                           f"{_FIXES}")
    return _read_config(config)
