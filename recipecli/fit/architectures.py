"""Model shapes: enough of a config.json to count parameters and activations exactly.

A ``Shape`` comes from, in order: the recipe's ``model.architecture`` block, a local folder's
config.json, the catalog (model_catalog.py: public config.json values, kept as data so that fit-check
works offline), the Hugging Face cache, and last a config-only download. Plain Python: nothing
here imports torch or transformers.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import NotModeled, UnknownModel, UnknownTargets
from .model_catalog import CONFIGS, cached_config, download_config, hub_cache, offline

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
    # Mixtures of experts as transformers 5 builds them: each expert's MLP is a slice of two fused
    # 3-D parameters (mlp.experts.gate_up_proj, mlp.experts.down_proj) and the router a bare
    # parameter (mlp.gate.weight), none of them an nn.Linear; Qwen2-MoE adds a shared expert and its
    # one-output gate, which are.
    "moe": (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"),
            ("self_attn.o_proj", "o")),
    "qwen2_moe": (("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"),
                  ("self_attn.o_proj", "o"), ("mlp.shared_expert.gate_proj", "shared_gate"),
                  ("mlp.shared_expert.up_proj", "shared_up"), ("mlp.shared_expert.down_proj", "shared_down"),
                  ("mlp.shared_expert_gate", "shared_expert_gate")),
}
LAYOUTS["bloom"] = LAYOUTS["falcon"]
# Full parameter names (model.named_parameters()) by layout: the decoder layers' list, the token
# embedding and the final norm; the head is lm_head in every layout (GPT-NeoX's embed_out became
# lm_head in transformers 5). training.unfrozen_parameters is matched to them.
_LLAMA_NAMES = ("model.layers", "model.embed_tokens", "model.norm")
PARAMETER_NAMES = {
    "llama": _LLAMA_NAMES, "phi3": _LLAMA_NAMES, "moe": _LLAMA_NAMES, "qwen2_moe": _LLAMA_NAMES,
    "phi": ("model.layers", "model.embed_tokens", "model.final_layernorm"),
    "qwen": ("transformer.h", "transformer.wte", "transformer.ln_f"),
    "falcon": ("transformer.h", "transformer.word_embeddings", "transformer.ln_f"),
    "bloom": ("transformer.h", "transformer.word_embeddings", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.embed_in", "gpt_neox.final_layer_norm"),
}
# The token embedding's name, where a layout does not call it embed_tokens (lora.modules_to_save).
EMBEDDINGS = {"qwen": "wte", "falcon": "word_embeddings", "bloom": "word_embeddings", "gpt_neox": "embed_in"}
ATTENTION_ROLES = frozenset({"q", "k", "v", "qkv", "o"})
# A mixture of experts' parameters that are no linear layer, by their path in a decoder layer: the
# router and the fused experts. peft (0.21) adapts them as parameters (target_parameters), and its
# all-linear reaches all three in these families (its conversion of transformers 4's expert names).
EXPERT_PARAMETERS = ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
EXPERT_STACKS = EXPERT_PARAMETERS[1:]  # the fused experts: what quantization.moe_experts quantizes
ALL_LINEAR_ADAPTS_EXPERTS = ("mixtral", "qwen3_moe", "olmoe")
GATED_ROLES = frozenset({"gate", "gate_up"})


def peft_matches(name: str, wanted: str) -> bool:
    """How peft matches a module or parameter name against a name a config lists (target_modules,
    modules_to_save, target_parameters): the name itself, or a path ending in "." + it."""
    return name == wanted or name.endswith("." + wanted)


@dataclass(frozen=True)
class Breakdown:
    """Parameter counts by where they live; their sum is the model's total."""

    embedding: int  # token embedding (+ its LayerNorm for bloom)
    block_linear: int  # weight matrices of the decoder layers: what bitsandbytes quantizes
    block_other: int  # biases, norms and experts' routers of the decoder layers: never quantized
    final_norm: int
    lm_head: int  # 0 when tied to the embedding
    # Routed experts' fused 3-D weights: parameters outside any nn.Linear, which bitsandbytes'
    # quantization (it replaces nn.Linear layers) leaves in 16 bits unless quantization.moe_experts.
    experts: int = 0

    @property
    def total(self) -> int:
        return (self.embedding + self.block_linear + self.block_other + self.final_norm + self.lm_head
                + self.experts)


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
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")  # each layer's, by name
    embedding_norm: bool = False
    lm_head_bias: bool = False
    # Attention only over the last this-many tokens (Mistral v0.1, Qwen2 with use_sliding_window):
    # transformers then hands sdpa a mask from that length on (activations.py); None: full causal.
    sliding_window: Optional[int] = None
    # A mixture of experts (layouts "moe", "qwen2_moe"; every decoder layer routed): experts per
    # layer (0: a dense model), how many each token goes through, one expert's MLP width, the
    # shared expert's width (Qwen2-MoE), and the q and k norms' widths (Qwen3-MoE, OLMoE).
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    q_norm: int = 0
    k_norm: int = 0
    # The MLP reads the layer's input beside the attention, not the attention's output (phi, falcon's
    # parallel attention, GPT-NeoX's parallel residual): the first layer's MLP, reading a tensor
    # that needs no gradient, keeps nothing when it has no adapters.
    parallel_mlp: bool = False

    @property
    def norms_per_layer(self) -> int:
        return len(self.layer_norms)

    @property
    def gated_mlp(self) -> bool:
        return any(role in GATED_ROLES for _, role in LAYOUTS[self.layout])

    def _biased(self, role: str) -> bool:
        return {"q": self.qkv_bias, "k": self.qkv_bias, "v": self.qkv_bias, "qkv": self.qkv_bias,
                "o": self.o_bias}.get(role, self.mlp_bias)

    def _features(self, role: str) -> tuple[int, int]:
        h, i, si = self.hidden_size, self.intermediate_size, self.shared_expert_intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q": (h, q), "k": (h, kv), "v": (h, kv), "qkv": (h, q + 2 * kv), "o": (q, h),
                "gate": (h, i), "up": (h, i), "gate_up": (h, 2 * i), "down": (i, h),
                "shared_gate": (h, si), "shared_up": (h, si), "shared_down": (si, h),
                "shared_expert_gate": (h, 1)}[role]

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer, by its path."""
        return {path: self._features(role) for path, role in LAYOUTS[self.layout]}

    @property
    def head(self) -> str:
        """Name of the output head in the model (beside the decoder layers)."""
        return "lm_head"

    def match_targets(self, wanted: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The linear layers of one decoder layer that LoRA adapts for target_modules names.

        Raises:
            UnknownTargets: see :func:`match_modules`.
        """
        modules = self.linear_modules()
        matched = match_modules(wanted, [*modules, self.head], self.head, self.model_type)
        return {path: modules[path] for path in matched}

    @property
    def layers_at(self) -> str:
        """The decoder layers' list in the full module names (model.layers, transformer.h...): layer
        i's linear layer at path p is ``{layers_at}.{i}.{p}``."""
        return PARAMETER_NAMES[self.layout][0]

    def match_pattern(self, pattern: str) -> dict[str, tuple[int, int]]:
        """The linear layers of one decoder layer that LoRA adapts for a target_modules pattern,
        matched in full against the full name of every decoder layer's linear layers and the
        head's (:func:`match_pattern`, the rule `recipe run` applies to the loaded model).

        Raises:
            UnknownTargets: see :func:`match_pattern`.
            NotModeled: it matches other linear layers in some decoder layers than in others:
                fit-check counts the same adapters in every layer.
        """
        modules, at = self.linear_modules(), self.layers_at
        full = {f"{at}.{i}.{path}": (i, path) for i in range(self.num_hidden_layers) for path in modules}
        # The other modules, known by their parameters: embeddings, norms, routers, fused experts and
        # the containers above them (a module without parameters, an activation, is not known here).
        others = {".".join(parts[:j]) for parts in (name.split(".") for name in self.parameters())
                  for j in range(1, len(parts))} - set(full) - {self.head}
        matched = match_pattern(pattern, [*full, self.head], self.head, sorted(others), self.model_type)
        per_layer = [frozenset(path for name, (i, path) in full.items() if i == layer and name in matched)
                     for layer in range(self.num_hidden_layers)]
        if len(set(per_layer)) > 1:
            other = next(i for i, paths in enumerate(per_layer) if paths != per_layer[0])
            raise NotModeled(f"{pattern} matches {_paths_text(per_layer[0])} in decoder layer 0 but "
                             f"{_paths_text(per_layer[other])} in layer {other}: fit-check counts the same adapters "
                             "in every decoder layer", hint="match the same linear layers in every layer, e.g. "
                             rf"{at}.[\d]+.({'|'.join(sorted(per_layer[0] or per_layer[other]))}); recipe run trains "
                             "this pattern without a fit check", path="$.lora.target_modules")
        return {path: features for path, features in modules.items() if path in per_layer[0]}

    def match_saved(self, wanted: Iterable[str], quantized: bool) -> dict[str, tuple[int, int, int]]:
        """The modules peft trains in full for lora.modules_to_save names: the token embedding, the
        output head, or a linear layer of every decoder layer, matched as peft matches them (the
        name, or a path ending in "." + it). Each as (how many in the model, rows, columns) of its
        weight matrix, a bias counted as one more row.

        Args:
            wanted: module names, such as ("embed_tokens", "lm_head").
            quantized: the decoder layers' linear weights are 4/8-bit, which cannot be trained.

        Raises:
            UnknownTargets: a quantized layer; NotModeled: a name that matches none of these
                (fit-check counts no other module, e.g. a norm). Both at $.lora.modules_to_save.
        """
        h, v, layers = self.hidden_size, self.vocab_size, self.num_hidden_layers
        embedding = EMBEDDINGS.get(self.layout, "embed_tokens")
        sizes = {embedding: (1, v, h), self.head: (1, h + (1 if self.lm_head_bias else 0), v)}
        for path, role in LAYOUTS[self.layout]:
            fan_in, fan_out = self._features(role)
            sizes[path] = (layers, fan_in + (1 if self._biased(role) else 0), fan_out)
        hits = {name: [n for n in sizes if peft_matches(n, name)] for name in wanted}
        missing = [name for name, found in hits.items() if not found]
        frozen = [name for name, found in hits.items() if quantized and set(found) - {embedding, self.head}]
        if frozen:
            raise UnknownTargets(f"{', '.join(frozen)} is quantized (method qlora): its 4/8-bit weights cannot be "
                                 "trained in full", path="$.lora.modules_to_save")
        if missing:  # perhaps a module of the model all the same (a norm): `recipe run` checks the loaded model
            raise NotModeled(f"{', '.join(missing)}: fit-check counts modules_to_save among {embedding}, {self.head} "
                             f"and the decoder layers' linear layers ({', '.join(self.linear_modules())}) of this "
                             f"{self.model_type} model", path="$.lora.modules_to_save")
        return {n: size for n, size in sizes.items() if any(n in found for found in hits.values())}

    def adapted_experts(self, targets, target_parameters: Iterable[str], quantized_experts: bool) -> tuple[str, ...]:
        """The paths (EXPERT_PARAMETERS) of one layer's router and fused experts that get adapters:
        all three under all-linear in ALL_LINEAR_ADAPTS_EXPERTS, else those lora.target_parameters
        names (the path, or a path ending in "." + it, as peft matches them). Quantized experts
        (quantization.moe_experts) are parametrized, and peft finds none of them.

        Raises:
            NotModeled: a target_parameters name that is none of these (fit-check counts no other
                parameter adapter).
        """
        wanted = list(target_parameters)
        if self.experts and targets == "all-linear" and self.model_type in ALL_LINEAR_ADAPTS_EXPERTS:
            wanted = list(EXPERT_PARAMETERS)
        hits = {name: [p for p in EXPERT_PARAMETERS if peft_matches(p, name)] for name in wanted}
        missing = [name for name, found in hits.items() if not found or not self.experts]
        if missing:
            raise NotModeled(f"{', '.join(missing)}: fit-check counts adapters on parameters of a mixture of experts' "
                             f"routers and fused experts ({', '.join(EXPERT_PARAMETERS)}) only",
                             hint="recipe run checks the names against the loaded model",
                             path="$.lora.target_parameters")
        chosen = {p for found in hits.values() for p in found}
        return tuple(p for p in EXPERT_PARAMETERS if p in chosen and not (quantized_experts and ".experts." in p))

    def expert_parameters(self, paths: Iterable[str] = EXPERT_PARAMETERS) -> dict[str, tuple[int, int, int]]:
        """(experts, in_features, out_features) of a layer's router and fused expert stacks, by path
        (EXPERT_PARAMETERS): a stack holds one matrix per expert, the router one of its own. peft
        adapts each so, one rank-r adapter per matrix (lora_A to r x experts rows, lora_B from them)."""
        h, i, e = self.hidden_size, self.expert_intermediate_size, self.experts
        sizes = {"mlp.gate.weight": (1, h, e), "mlp.experts.gate_up_proj": (e, h, 2 * i),
                 "mlp.experts.down_proj": (e, i, h)}
        return {p: sizes[p] for p in paths}

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
            bias += fan_out if self._biased(role) else 0
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        sizes = {path: count * fin * fout for path, (count, fin, fout) in self.expert_parameters().items()}
        experts, routers = sum(sizes[p] for p in EXPERT_STACKS), sizes["mlp.gate.weight"]  # 0 for a dense model
        return Breakdown(
            embedding=self.vocab_size * h + (norm if self.embedding_norm else 0),
            block_linear=linear * self.num_hidden_layers,
            block_other=(bias + norm * self.norms_per_layer + self.q_norm + self.k_norm + routers)
            * self.num_hidden_layers,
            final_norm=norm,
            lm_head=head + (self.vocab_size if self.lm_head_bias else 0),
            experts=experts * self.num_hidden_layers)

    def param_count(self) -> int:
        """Exact number of parameters, as ``sum(p.numel() for p in model.parameters())``."""
        return self.breakdown().total

    def parameters(self) -> dict[str, int]:
        """Every parameter's size by its name in transformers' model (``model.named_parameters()``)."""
        h, v = self.hidden_size, self.vocab_size
        layers_at, embedding, final = PARAMETER_NAMES[self.layout]
        kinds = ("weight", "bias") if self.norm == "layer" else ("weight",)
        out = {f"{embedding}.weight": v * h}
        if self.embedding_norm:  # bloom
            out.update({f"{embedding}_layernorm.{kind}": h for kind in kinds})
        for i in range(self.num_hidden_layers):
            at = f"{layers_at}.{i}"
            for path, role in LAYOUTS[self.layout]:
                fan_in, fan_out = self._features(role)
                out[f"{at}.{path}.weight"] = fan_in * fan_out
                if self._biased(role):
                    out[f"{at}.{path}.bias"] = fan_out
            out.update({f"{at}.{name}.{kind}": h for name in self.layer_norms for kind in kinds})
            if self.q_norm:
                out.update({f"{at}.self_attn.q_norm.weight": self.q_norm, f"{at}.self_attn.k_norm.weight": self.k_norm})
            if self.experts:
                out.update({f"{at}.{path}": count * fin * fout
                            for path, (count, fin, fout) in self.expert_parameters().items()})
        out.update({f"{final}.{kind}": h for kind in kinds})
        if not self.tie_word_embeddings:
            out[f"{self.head}.weight"] = v * h
        if self.lm_head_bias:
            out[f"{self.head}.bias"] = v
        return out


def match_parameters(patterns: Iterable[str], names: Iterable[str], model_type: str) -> list[str]:
    """The parameters training.unfrozen_parameters trains: those whose name one of the patterns
    matches from its start (``re.match``), every pattern checked. The estimate (Shape.parameters)
    and the run (the loaded model's named_parameters) both ask this.

    Raises:
        UnknownTargets: patterns that match no parameter; the message shows how the model names them.
    """
    names, patterns = list(names), [re.compile(p) for p in patterns]
    missing = [p.pattern for p in patterns if not any(p.match(n) for n in names)]
    if missing:
        layer = [n for n in names if re.search(r"\.(\d+)\.", n) is None or ".0." in n]  # the first layer's
        raise UnknownTargets(f"{', '.join(missing)} match no parameter of this {model_type} model, whose parameters "
                             f"are named {', '.join(layer)} (and likewise for each layer)",
                             path="$.training.unfrozen_parameters")
    return [n for n in names if any(p.match(n) for p in patterns)]


def match_modules(wanted: Iterable[str], linear: Iterable[str], head: Optional[str],
                  model_type: str) -> list[str]:
    """The linear layers LoRA adapts for target_modules names, every name checked.

    peft adapts each layer whose name is a wanted name or ends with "." + it, and silently skips
    a wanted name that matches nothing as long as another one matches: here every name must
    match. TRL's SFTTrainer refuses an adapter on the output head (it computes the loss from the
    head's weight directly), so naming the head is refused too. The estimate (the paths of a
    Shape's layer) and the run (the loaded model's module names) both ask this.

    Args:
        wanted: module names or paths, such as ("q_proj", "mlp.down_proj").
        linear: names of the linear layers, the head included.
        head: the head's name among them; None when the model has none.
        model_type: for the message.

    Returns:
        The names in ``linear`` that get adapters.

    Raises:
        UnknownTargets: names that match no linear layer, or the head; the message lists every
            one of them and the layers there are.
    """
    linear = list(linear)
    hits = {name: [n for n in linear if peft_matches(n, name)] for name in wanted}
    missing = [name for name, found in hits.items() if not found]
    on_head = [name for name, found in hits.items() if head in found]
    problems = []
    if missing:
        layers = sorted({".".join(n.split(".")[-2:]) for n in linear if n != head})
        problems.append(f"{', '.join(missing)} match no linear layer of this {model_type} model; "
                        f"its layers are {', '.join(layers)}")
    if on_head:
        problems.append(f"{', '.join(on_head)} is the output head: TRL's SFTTrainer computes the loss "
                        f"from {head}.weight directly, so it refuses an adapter there; remove it")
    if problems:
        raise UnknownTargets("; ".join(problems), path="$.lora.target_modules")
    return [n for n in linear if any(n in found for found in hits.values())]


def match_pattern(pattern: str, linear: Iterable[str], head: Optional[str], others: Iterable[str],
                  model_type: str) -> list[str]:
    """The linear layers LoRA adapts for a target_modules pattern: those whose full name it matches
    in full (``re.fullmatch``, peft's rule for a string), every match checked.

    peft would adapt whatever module the pattern matches, an embedding too; recipe adapts linear
    layers only (fit-check counts nothing else), and never the output head, which TRL's SFTTrainer
    refuses (see :func:`match_modules`). The estimate (a Shape's full names) and the run (the
    loaded model's) both ask this.

    Args:
        pattern: a regular expression that compiles (rules.py checked it).
        linear: full names of the linear layers, the head included.
        head: the head's name among them; None when the model has none.
        others: full names of the modules that are no linear layer.
        model_type: for the message.

    Returns:
        The names in ``linear`` that get adapters.

    Raises:
        UnknownTargets: it matches no linear layer, the head, or a module that is no linear layer,
            at $.lora.target_modules.
    """
    regex, linear = re.compile(pattern), list(linear)
    matched = [n for n in linear if regex.fullmatch(n)]
    not_linear = [n for n in others if n and regex.fullmatch(n)]
    problems = []
    if not_linear:
        problems.append(f"{pattern} matches {_names_text(not_linear)}, not a linear layer: recipe adapts linear "
                        "layers only")
    if head in matched:
        problems.append(f"{pattern} matches the output head {head}: TRL's SFTTrainer computes the loss from "
                        f"{head}.weight directly, so it refuses an adapter there")
    if not matched and not not_linear:
        first = [n for n in linear if n != head and (re.search(r"\.(\d+)\.", n) is None or ".0." in n)]
        problems.append(f"{pattern} matches no linear layer of this {model_type} model, whose linear layers are "
                        f"named {', '.join(first)} (and likewise in each layer)")
    if problems:
        layer = next((n for n in linear if ".0." in n), linear[0] if linear else "")
        example = layer.replace(".0.", r".[\d]+.", 1)
        raise UnknownTargets("; ".join(problems), hint="the pattern must match a linear layer's full name whole "
                             f"(re.fullmatch, as peft matches it), e.g. {example}", path="$.lora.target_modules")
    return matched


def _names_text(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _paths_text(paths: Iterable[str]) -> str:
    return ", ".join(sorted(paths)) or "nothing"


# Config classes whose tie_word_embeddings defaults to True when config.json leaves it out.
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3_text", "falcon", "bloom"})
_FIXES = (
    "fix it in one of three ways:\n"
    "    1. put the model's config.json in a local folder and set model.id to that folder;\n"
    "    2. add a model.architecture block to the recipe with the config.json values: hidden_size,\n"
    "       intermediate_size, num_hidden_layers, num_attention_heads, vocab_size (and, where the\n"
    "       model has them, num_key_value_heads, head_dim, tie_word_embeddings, model_type);\n"
    "    3. run once with network access (HF_HUB_OFFLINE unset) so config.json lands in the\n"
    "       Hugging Face cache.")
MODEL_PATH = "$.model.id"  # the field an UnknownModel is about


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _first(config: dict, *keys: str):
    return next((config[k] for k in keys if config.get(k) is not None), None)


# What transformers' configs take when config.json leaves sliding_window out (MistralConfig's
# default); the other model types default to none.
_SLIDING_WINDOW_DEFAULTS = {"mistral": 4096}


def _sliding_window(config: dict, model_type: str) -> Optional[int]:
    """The attention window transformers will use, read as its config classes read it (Qwen2
    only with use_sliding_window); None for full causal attention or a value that is not one."""
    if model_type == "qwen2" and not config.get("use_sliding_window", False):
        return None
    window = config.get("sliding_window", _SLIDING_WINDOW_DEFAULTS.get(model_type))
    return window if _positive_int(window) else None


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
        raise UnknownModel(f"model_type {model_type!r} is an encoder-decoder model",
                           hint="recipe fine-tunes decoder-only causal language models", path=MODEL_PATH)
    h = _first(config, "hidden_size", "n_embd", "n_embed")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    vocab = config.get("vocab_size")
    if None in (h, layers, heads, vocab) and isinstance(config.get("text_config"), dict):
        # A multimodal model's config (Llama 4, Gemma 3, Mistral 3...): its language model's sizes are
        # under text_config, and a model.architecture block would describe that part alone.
        text = config["text_config"]
        if model_type in _MOE_MODEL_TYPES or _routed_experts(text) > 1:
            raise NotModeled(f"model_type {model_type!r} is a multimodal mixture of experts, which fit-check does not "
                             "read", hint="recipe run trains it without a fit check", path=MODEL_PATH)
        raise NotModeled(f"model_type {model_type!r} is a multimodal model (its language model's sizes are under "
                         "text_config): fit-check does not estimate those yet", hint="recipe run trains it without "
                         "a fit check", path=MODEL_PATH)
    if None in (h, layers, heads, vocab):
        raise UnknownModel(f"config.json of model_type {model_type!r} lacks hidden_size, "
                           "num_hidden_layers, num_attention_heads or vocab_size", hint=_FIXES, path=MODEL_PATH)
    if not _positive_int(heads):  # before h // heads below
        raise UnknownModel(f"config.json of model_type {model_type!r} has num_attention_heads {heads!r}, not a "
                           "positive whole number", hint=_FIXES, path=MODEL_PATH)
    kv = _first(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first(config, "head_dim", "kv_channels") or (h // heads if _positive_int(h) else h)
    tied = config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
    inter = _first(config, "intermediate_size", "ffn_hidden_size", "n_inner") or (4 * h if _positive_int(h) else h)
    sizes = {"hidden_size": h, "num_hidden_layers": layers, "vocab_size": vocab, "num_key_value_heads": kv,
             "head_dim": head_dim, "intermediate_size": inter}
    wrong = [f"{name} {value!r}" for name, value in sizes.items() if not _positive_int(value)]
    if wrong:  # a hand-edited or truncated config.json; the arithmetic below would crash or lie
        raise UnknownModel(f"config.json of model_type {model_type!r} has {', '.join(wrong)}: not a positive "
                           "whole number", hint=_FIXES, path=MODEL_PATH)
    base = dict(model_type=model_type, hidden_size=h, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                head_dim=head_dim, vocab_size=vocab, tie_word_embeddings=tied,
                sliding_window=_sliding_window(config, model_type))
    biased = dict(qkv_bias=True, o_bias=True, mlp_bias=True, norm="layer")
    if model_type == "phi":
        return Shape(**base, layout="phi", **biased, layer_norms=("input_layernorm",), lm_head_bias=True,
                     parallel_mlp=True)
    if model_type == "phi3":
        return Shape(**base, layout="phi3")
    if model_type == "qwen":  # Qwen-1 remote code: w1 and w2 each carry half of intermediate_size
        return Shape(**{**base, "intermediate_size": inter // 2}, layout="qwen", qkv_bias=True,
                     o_bias=not config.get("no_bias", True), layer_norms=("ln_1", "ln_2"))
    if model_type == "falcon":
        new_arch = config.get("new_decoder_architecture", False)
        kv = kv if new_arch else (1 if config.get("multi_query", True) else heads)
        norms = ("ln_attn", "ln_mlp") if new_arch else ("input_layernorm",) + \
            (() if config.get("parallel_attn", True) else ("post_attention_layernorm",))
        bias = config.get("bias", False)
        return Shape(**{**base, "num_key_value_heads": kv}, layout="falcon", qkv_bias=bias,
                     o_bias=bias, mlp_bias=bias, norm="layer", layer_norms=norms,
                     parallel_mlp=new_arch or config.get("parallel_attn", True))
    if model_type == "bloom":
        return Shape(**base, layout="bloom", **biased, embedding_norm=True)
    if model_type == "gpt_neox":
        return Shape(**base, layout="gpt_neox", **biased, parallel_mlp=config.get("use_parallel_residual", True))
    if _routed_experts(config) > 1 or model_type in _MOE_MODEL_TYPES:  # _MOE_FAMILIES among them
        return _moe_shape(config, base)
    bias = config.get("attention_bias", False)
    # Qwen3 and Gemma 3 normalize each head's queries and keys (RMSNorm over head_dim), as Qwen3-MoE does
    qk = (base["head_dim"],) * 2 if model_type in ("qwen3", "gemma3_text") else (0, 0)
    return Shape(**base, qkv_bias=bias or model_type == "qwen2", o_bias=bias, q_norm=qk[0], k_norm=qk[1],
                 mlp_bias=config.get("mlp_bias", False),
                 layer_norms=("input_layernorm", "post_attention_layernorm")
                 + (("pre_feedforward_layernorm", "post_feedforward_layernorm")
                    if model_type in ("gemma2", "gemma3_text") else ()))


# config.json keys that count a mixture of experts' routed experts per layer, across families.
_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# Families read below: every layer's MLP is routed, its experts fused as transformers 5 stores them.
# Others (DeepSeek's latent attention, GLM-4.5's dense first layers, gpt-oss, Llama 4, DBRX, Jamba...)
# lay their experts out otherwise; counted as dense models they would be under-estimated.
_MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
# Model types that are mixtures of experts whatever a given config says (transformers 5.24's, those
# whose default config has experts, and DBRX's and Hunyuan-MoE's, which nest or default them): a
# model.architecture block naming one without its expert sizes would be counted as a dense model.
_MOE_MODEL_TYPES = frozenset({
    "afmoe", "aria", "aria_text", "axk1", "axk2", "bailing_hybrid", "beam", "cohere2_moe", "dbrx",
    "deepseek_ocr2", "deepseek_ocr2_text", "deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4", "doge",
    "dots3_note", "dots3_note_text", "dots3_note_vision_encoder", "ernie4_5_moe", "ernie4_5_vl_moe",
    "ernie4_5_vl_moe_text", "exaone_moe", "flex_olmo", "flint", "glm4_moe", "glm4_moe_lite", "glm4v_moe",
    "glm4v_moe_text", "glm5_next", "glm5_next_text", "glm_moe_dsa", "gpt_oss", "granitemoe", "granitemoe_swa",
    "granitemoehybrid", "granitemoeshared", "hunyuan_v1_moe", "hy_v3", "hy_v4", "hy_v4_vl", "hy_v4_vl_text",
    "inkling2", "inkling2_loop", "inkling2_loop_text", "inkling2_text", "inkling_mm_model", "inkling_text",
    "jamba", "jetmoe", "kimi_k25", "kimi_linear", "kolibri1", "laguna", "lara_mini", "lfm2_moe", "llama4",
    "llama4_text", "longcat_flash", "mellum", "mimo_v2_flash", "minimax", "minimax_m2", "minimax_m3_vl",
    "minimax_m3_vl_text", "mistral4", "mistral_large4", "mistral_large4_text", "mixtral", "muse_spark",
    "muse_spark_text", "nemo_speechlm", "nemotron_h", "nemotron_h_omni", "olmoe", "openai_privacy_filter",
    "phimoe", "qwen2_moe", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_moe", "qwen3_next", "qwen3_omni_moe",
    "qwen3_omni_moe_talker_text", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker", "qwen3_vl_moe",
    "qwen3_vl_moe_text", "qwen4_exp", "qwen4_exp_text", "sarvam_mla", "sarvam_moe", "solar_open", "step3p5",
    "step3p7", "unlimited_ocr", "unlimited_ocr_text", "zaya"
})


def _routed_experts(config: dict) -> int:
    nested = config.get("ffn_config") if isinstance(config.get("ffn_config"), dict) else {}  # DBRX
    counts = [c.get(k) for c in (config, nested) for k in _EXPERT_COUNTS]
    return max((n for n in counts if _positive_int(n)), default=0)


def _moe_shape(config: dict, base: dict) -> Shape:
    """A mixture of experts of one of _MOE_FAMILIES.

    Raises:
        NotModeled: another family, some layers dense, or sizes that are not positive whole numbers.
    """
    model_type = base["model_type"]
    if model_type not in _MOE_FAMILIES:
        count = f" ({_routed_experts(config)} per layer)" if _routed_experts(config) > 1 else ""
        raise NotModeled(f"model_type {model_type!r} is a mixture of experts{count} whose layout fit-check does not "
                         "read; counted as a dense model it would be under-estimated",
                         hint=f"fit-check reads the experts of {', '.join(_MOE_FAMILIES)}; recipe run trains "
                              "this model without a fit check", path=MODEL_PATH)
    if _routed_experts(config) <= 1:  # transformers would take its config class's default count
        raise UnknownModel(f"config.json of the mixture of experts {model_type!r} states no expert count "
                           f"({', '.join(_EXPERT_COUNTS[:2])})", hint=_FIXES, path=MODEL_PATH)
    step = config.get("decoder_sparse_step", 1)
    if config.get("mlp_only_layers") or step != 1:
        raise NotModeled(f"this {model_type} model has dense layers between its expert layers (mlp_only_layers "
                         f"{config.get('mlp_only_layers')}, decoder_sparse_step {step}), which fit-check does not "
                         "count", hint="recipe run trains it without a fit check", path=MODEL_PATH)
    width = config.get("moe_intermediate_size", base["intermediate_size"])
    shared = config.get("shared_expert_intermediate_size", 0) if model_type == "qwen2_moe" else 0
    sizes = {"num_experts_per_tok": config.get("num_experts_per_tok"), "the experts' intermediate size": width}
    if model_type == "qwen2_moe":
        sizes["shared_expert_intermediate_size"] = shared
    wrong = [f"{name} {value!r}" for name, value in sizes.items() if not _positive_int(value)]
    if wrong:
        raise UnknownModel(f"config.json of model_type {model_type!r} has {', '.join(wrong)}: not a positive "
                           "whole number", hint=_FIXES, path=MODEL_PATH)
    hq, hkv = base["num_attention_heads"] * base["head_dim"], base["num_key_value_heads"] * base["head_dim"]
    q_norm, k_norm = {"qwen3_moe": (base["head_dim"],) * 2, "olmoe": (hq, hkv)}.get(model_type, (0, 0))
    bias = config.get("attention_bias", False) or model_type == "qwen2_moe"
    return Shape(**base, layout="qwen2_moe" if shared else "moe", qkv_bias=bias,
                 o_bias=config.get("attention_bias", False), experts=_routed_experts(config),
                 experts_per_token=config["num_experts_per_tok"], expert_intermediate_size=width,
                 shared_expert_intermediate_size=shared, q_norm=q_norm, k_norm=k_norm)


CATALOG: dict[str, Shape] = {name: shape for names, shape in
                             ((names, shape_from_config(config)) for names, config in CONFIGS.items())
                             for name in names.split("|")}
_BY_LOWER = {name.lower(): shape for name, shape in CATALOG.items()}
_CONFIG_BY_LOWER = {name.lower(): config for names, config in CONFIGS.items() for name in names.split("|")}


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnknownModel(f"{path} is not valid JSON: {err}", hint="fix or replace that config.json",
                           path=MODEL_PATH) from err
    except OSError as err:
        raise UnknownModel(f"{path} cannot be read: {err.strerror}", hint="check the file", path=MODEL_PATH) from err
    if not isinstance(config, dict):
        raise UnknownModel(f"{path} is not a config.json (a JSON object of model settings)",
                           hint="fix or replace that config.json", path=MODEL_PATH)
    return config


def find_shape(model_id: str, local_path: Optional[Path] = None, architecture=None,
               revision: str = "main") -> Shape:
    """The Shape of a model, found without downloading weights (see :func:`find_config`).

    Raises:
        UnknownModel: no config is found, or it lacks the sizes; the message says how to fix it.
    """
    known = catalog_shape(model_id) if architecture is None and local_path is None else None
    return known or shape_from_config(find_config(model_id, local_path, architecture, revision))


def catalog_shape(model_id: str) -> Optional[Shape]:
    """The catalog's own Shape of a hub model (built once), or None: pure data, no file or network."""
    return _BY_LOWER.get(model_id.lower())


def find_config(model_id: str, local_path: Optional[Path] = None, architecture=None,
                revision: str = "main") -> dict:
    """A model's config.json values, found without downloading weights.

    Args:
        model_id: hub id (org/name) or the recipe's model.id.
        local_path: the local model folder, when model.id names one.
        architecture: the recipe's ``model.architecture`` block (recipecli.recipe.Architecture).
        revision: hub revision, for the cache and the config-only download.

    Returns:
        The first config found: recipe block, local config.json, catalog, Hugging Face cache,
        then (unless HF_HUB_OFFLINE is set) a download of config.json alone.

    Raises:
        UnknownModel: none of those knows the model; the message says how to fix it.
    """
    if architecture is not None:
        return {k: v for k, v in asdict(architecture).items() if v is not None}
    if local_path is not None:
        config = Path(local_path) / "config.json"
        if not config.is_file():
            raise UnknownModel(f"model folder {local_path} has no config.json", hint=_FIXES, path=MODEL_PATH)
        return _read_config(config)
    if model_id.lower() in _CONFIG_BY_LOWER:
        return dict(_CONFIG_BY_LOWER[model_id.lower()])
    config = cached_config(model_id, revision)
    if config is None and not offline():
        config = download_config(model_id, revision)
    if config is None:
        where = "offline (HF_HUB_OFFLINE is set)" if offline() else "on the hub or offline"
        raise UnknownModel(f"cannot find the architecture of {model_id!r} {where}: it is not in "
                           f"recipe's catalog nor in the Hugging Face cache at {hub_cache()}",
                           hint=_FIXES, path=MODEL_PATH)
    return _read_config(config)


_HEADER_LIMIT = 100 * 2**20  # safetensors caps its JSON header at 100 MB


def _safetensors_sizes(path: Path) -> dict[str, int]:
    """Each tensor's element count from a .safetensors file's header (its first 8 bytes give the
    JSON header's length); the weights themselves are never read."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= _HEADER_LIMIT:
            raise ValueError("not a safetensors header")
        header = json.loads(f.read(length))
    sizes = {}
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= dim
            sizes[name] = count
    return sizes


def check_weights(shape: Shape, folder: Path) -> None:
    """Compare a local model folder's safetensors weights with the sizes its config.json gives.

    transformers refuses weights of other shapes when it loads them in 16 or 32 bits, but
    bitsandbytes quantizes them as they come: a hand-edited config.json, or another model's weights,
    then fail in the first training step. Tensors whose names the shape does not know are left to
    the loader (checkpoints of other naming conventions).

    Raises:
        UnknownModel: a weight whose size is not the one config.json gives, at $.model.id.
    """
    index = folder / "model.safetensors.index.json"
    try:
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) \
            if index.is_file() else (["model.safetensors"] if (folder / "model.safetensors").is_file() else [])
        stored = {name: n for file in files for name, n in _safetensors_sizes(folder / file).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # unreadable or another layout: the loader says what is wrong
    expected = shape.parameters()
    wrong = [name for name, n in stored.items() if name in expected and expected[name] != n]
    if wrong:
        name = wrong[0]
        raise UnknownModel(f"{folder}: the weights do not fit config.json: {name} holds {stored[name]:,} values, "
                           f"config.json's {shape.model_type} shape gives it {expected[name]:,}"
                           + (f" ({len(wrong) - 1} more like it)" if len(wrong) > 1 else ""),
                           hint="put back the config.json the weights were saved with, or the weights that belong "
                                "to this one", path=MODEL_PATH)
