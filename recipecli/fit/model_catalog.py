"""Where a model's config.json comes from without its weights: the catalog below, the Hugging Face
cache, or a download of that one file.

The catalog keeps the published config.json values of common hub models as data, so that
fit-check works offline. Each entry holds the fields ``architectures.shape_from_config`` reads,
so a catalog model and a downloaded config.json become a Shape the same way.
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

# A full commit hash: a revision pinned to exactly one snapshot.
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _llama(h, i, layers, heads, kv, vocab, tied=False, model_type="llama", **more) -> dict:
    return dict(model_type=model_type, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                tie_word_embeddings=tied, **more)


def _qwen2(h, i, layers, heads, kv, vocab, tied) -> dict:
    return _llama(h, i, layers, heads, kv, vocab, tied, "qwen2")


def _gemma(h, i, layers, heads, kv, model_type="gemma") -> dict:
    return _llama(h, i, layers, heads, kv, 256000, True, model_type, head_dim=256)


def _qwen1(h, i, layers, heads, vocab) -> dict:  # remote code: i is both MLP branches together
    return dict(model_type="qwen", hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                num_attention_heads=heads, vocab_size=vocab, no_bias=True)


def _plain(model_type, h, i, layers, heads, vocab, tied, **more) -> dict:
    """Non-gated MLP with LayerNorm and biases (phi, gpt_neox); their layouts add the rest."""
    return _llama(h, i, layers, heads, heads, vocab, tied, model_type, **more)


# Each key is a family of hub ids sharing one shape ("|" separates them).
CONFIGS = {
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
    # v0.1 attends through a 4,096-token sliding window; v0.2 and v0.3 dropped it (their config.json
    # says null, which transformers' MistralConfig would otherwise read as its default, 4,096)
    "mistralai/Mistral-7B-v0.1|mistralai/Mistral-7B-Instruct-v0.1":
        _llama(4096, 14336, 32, 32, 8, 32000, model_type="mistral", sliding_window=4096),
    "mistralai/Mistral-7B-Instruct-v0.2":
        _llama(4096, 14336, 32, 32, 8, 32000, model_type="mistral", sliding_window=None),
    "mistralai/Mistral-7B-v0.3|mistralai/Mistral-7B-Instruct-v0.3":
        _llama(4096, 14336, 32, 32, 8, 32768, model_type="mistral", sliding_window=None),
    "google/gemma-2b|google/gemma-2b-it|google/gemma-1.1-2b-it": _gemma(2048, 16384, 18, 8, 1),
    "google/gemma-7b|google/gemma-7b-it|google/gemma-1.1-7b-it": _gemma(3072, 24576, 28, 16, 16),
    "google/gemma-2-9b|google/gemma-2-9b-it": _gemma(3584, 14336, 42, 16, 8, "gemma2"),
    # Gemma 3's text-only sizes (gemma3_text): a 262,144-token vocabulary; five of every six layers
    # attend through a 512-token window.
    "google/gemma-3-1b-it|google/gemma-3-1b-pt": _llama(
        1152, 6912, 26, 4, 1, 262144, True, "gemma3_text", head_dim=256, sliding_window=512),
    "google/gemma-3-270m|google/gemma-3-270m-it": _llama(
        640, 2048, 18, 4, 1, 262144, True, "gemma3_text", head_dim=256, sliding_window=512),
    "Qwen/Qwen2.5-0.5B|Qwen/Qwen2.5-0.5B-Instruct": _qwen2(896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B|Qwen/Qwen2.5-1.5B-Instruct": _qwen2(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B|Qwen/Qwen2.5-3B-Instruct": _qwen2(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B|Qwen/Qwen2.5-7B-Instruct": _qwen2(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen/Qwen2.5-14B|Qwen/Qwen2.5-14B-Instruct": _qwen2(5120, 13824, 48, 40, 8, 152064, False),
    "Qwen/Qwen-1_8B|Qwen/Qwen-1_8B-Chat|Qwen/Qwen-1_8B-Chat-Int4": _qwen1(2048, 11008, 24, 16, 151936),
    "Qwen/Qwen-7B|Qwen/Qwen-7B-Chat|Qwen/Qwen-7B-Chat-Int4": _qwen1(4096, 22016, 32, 32, 151936),
    "Qwen/Qwen-14B|Qwen/Qwen-14B-Chat|Qwen/Qwen-14B-Chat-Int4": _qwen1(5120, 27392, 40, 40, 152064),
    "microsoft/phi-2": _plain("phi", 2560, 10240, 32, 32, 51200, False),
    "microsoft/phi-1_5": _plain("phi", 2048, 8192, 24, 32, 51200, False),
    "microsoft/Phi-3-mini-4k-instruct": _llama(3072, 8192, 32, 32, 32, 32064, model_type="phi3"),
    # falcon-7b: multi-query attention, attention and MLP in parallel after one LayerNorm.
    "tiiuae/falcon-7b|tiiuae/falcon-7b-instruct": dict(
        model_type="falcon", hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
        vocab_size=65024, multi_query=True, parallel_attn=True, bias=False),
    "stabilityai/stablelm-base-alpha-3b|stabilityai/stablelm-tuned-alpha-3b":
        _plain("gpt_neox", 4096, 16384, 16, 32, 50688, False),
    # Mixtures of experts (architectures._moe_shape): every expert counted, never a dense model of
    # its attention's size.
    "mistralai/Mixtral-8x7B-v0.1|mistralai/Mixtral-8x7B-Instruct-v0.1":
        _llama(4096, 14336, 32, 32, 8, 32000, model_type="mixtral", num_local_experts=8, num_experts_per_tok=2),
    "Qwen/Qwen3-30B-A3B|Qwen/Qwen3-30B-A3B-Base": _llama(
        2048, 6144, 48, 32, 4, 151936, model_type="qwen3_moe", head_dim=128, num_experts=128,
        num_experts_per_tok=8, moe_intermediate_size=768),
    "Qwen/Qwen1.5-MoE-A2.7B|Qwen/Qwen1.5-MoE-A2.7B-Chat": _llama(
        2048, 5632, 24, 16, 16, 151936, model_type="qwen2_moe", num_experts=60, num_experts_per_tok=4,
        moe_intermediate_size=1408, shared_expert_intermediate_size=5632),
    "allenai/OLMoE-1B-7B-0924|allenai/OLMoE-1B-7B-0924-Instruct": _llama(
        2048, 1024, 16, 16, 16, 50304, model_type="olmoe", num_experts=64, num_experts_per_tok=8),
    "bigscience/bloomz-7b1|bigscience/bloom-7b1": dict(
        model_type="bloom", hidden_size=4096, n_layer=30, n_head=32, vocab_size=250880),
}


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def cached_config(model_id: str, revision: str = "main") -> Optional[Path]:
    """config.json of a hub model in the local Hugging Face cache, or None.

    The snapshot of the revision wins: a commit names its snapshot folder, a branch or tag its
    file under refs/ that holds the commit. A commit not in the cache has no stand-in (its
    config may differ); for a branch or tag, the newest snapshot that has a config.json.
    """
    repo = hub_cache() / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    pinned = repo / "snapshots" / commit / "config.json"
    if pinned.is_file():
        return pinned
    if _COMMIT.fullmatch(revision):
        return None
    found = sorted(repo.glob("snapshots/*/config.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing may be downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_config(model_id: str, revision: str) -> Optional[Path]:
    """config.json alone, downloaded into the cache; None when the hub cannot give it."""
    from huggingface_hub import constants, hf_hub_download  # only here: the only network path
    from huggingface_hub.errors import EntryNotFoundError

    try:
        # A hub whose name does not resolve (no network) would cost huggingface_hub's five retries
        # with back-off, ~25 s, before the same answer: ask the resolver once first (not behind a
        # proxy, which resolves the name itself).
        if not any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname or "", 443)
        return Path(hf_hub_download(model_id, "config.json", revision=revision))
    # No network, no such repo or file, a gated repo, an id the hub rejects: all mean "not found".
    except (OSError, EntryNotFoundError, ValueError):
        return None
