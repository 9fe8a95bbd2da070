"""The distributed section: its schema (defaults stated once, hostile values refused) and the
cross-field rules that refuse what the libraries cannot run, each at its line with the alternative."""
from __future__ import annotations

import pytest

from recipecli.errors import InvalidRecipe
from recipecli.read import codec
from recipecli.read.load import load_recipe, resolve


def _problems(make_recipe, delta: dict) -> list:
    with pytest.raises(InvalidRecipe) as info:
        resolve(make_recipe(delta))
    return info.value.problems


def test_defaults_follow_the_strategy_and_round_trip(make_recipe):
    recipe = load_recipe(make_recipe({"distributed": {"strategy": "fsdp"}}))
    d = recipe.distributed
    assert (d.nodes, d.main_port, d.fsdp_offload, d.zero_offload, d.processes_per_node) == (1, 29500, False, None, None)
    zero = load_recipe(make_recipe({"distributed": {"strategy": "deepspeed_zero2"}})).distributed
    assert (zero.zero_offload, zero.fsdp_offload) == ("none", None)
    assert load_recipe(make_recipe()).distributed is None and load_recipe(make_recipe()).processes == 1
    doc = codec.to_document(recipe)
    assert doc["distributed"] == {"strategy": "fsdp", "nodes": 1, "main_port": 29500, "fsdp_offload": False}


def test_global_batch_is_micro_batch_times_accumulation_times_processes(make_recipe):
    recipe = load_recipe(make_recipe({"training": {"micro_batch_size": 2, "gradient_accumulation_steps": 4},
                                      "distributed": {"strategy": "ddp", "processes_per_node": 4, "nodes": 2,
                                                      "main_address": "10.0.0.1"}}))
    assert (recipe.processes, recipe.global_batch()) == (8, 64)
    unknown = load_recipe(make_recipe({"distributed": {"strategy": "ddp"}}))
    assert unknown.global_batch() is None and unknown.global_batch(3) == 3


@pytest.mark.parametrize("dist, path, message", [
    ({"strategy": "zero3"}, "$.distributed.strategy", "is not one of"),
    ({"strategy": "ddp", "processes_per_node": 0}, "$.distributed.processes_per_node", "less than the minimum"),
    ({"strategy": "ddp", "processes_per_node": 2.0}, "$.distributed.processes_per_node", "expected a whole number"),
    ({"strategy": "ddp", "processes_per_node": "2"}, "$.distributed.processes_per_node", "expected"),
    ({"strategy": "ddp", "main_port": 70000}, "$.distributed.main_port", "greater than the maximum"),
    ({"strategy": "ddp", "main_address": "x;rm -rf /"}, "$.distributed.main_address", "is not of the form this field takes"),
    ({"strategy": "ddp", "main_address": "$(reboot)"}, "$.distributed.main_address", "is not of the form this field takes"),
    ({"strategy": "ddp", "gpus": 4}, "$.distributed.gpus", "unknown key"),
    ({"processes_per_node": 2}, "$.distributed.strategy", "missing required field 'strategy'"),
])
def test_hostile_or_wrong_values_are_refused_at_their_field(make_recipe, dist, path, message):
    problems = _problems(make_recipe, {"distributed": dist})
    assert problems[0].path == path and message in problems[0].message, problems[0]


@pytest.mark.parametrize("delta, path, message, hint", [
    ({"distributed": {"strategy": "none", "processes_per_node": 4}}, "$.distributed.processes_per_node",
     "processes_per_node 4 with strategy none", "set distributed.strategy: ddp"),
    ({"distributed": {"strategy": "ddp", "nodes": 2}}, "$.distributed.nodes", "2 nodes need the address of the main node",
     "distributed.main_address"),
    ({"distributed": {"strategy": "ddp", "nodes": 2, "main_address": "a", "node_rank": 2}}, "$.distributed.node_rank",
     "node_rank 2 with 2 node(s)", "from 0 to 1"),
    ({"distributed": {"strategy": "ddp", "node_rank": 1}}, "$.distributed.node_rank", "node_rank 1 with 1 node(s)",
     "from 0 to 0"),
    ({"distributed": {"strategy": "ddp", "fsdp_offload": True}}, "$.distributed.fsdp_offload",
     "fsdp_offload with strategy ddp", "strategy: fsdp"),
    ({"distributed": {"strategy": "fsdp", "zero_offload": "optimizer"}}, "$.distributed.zero_offload",
     "zero_offload with strategy fsdp", "deepspeed_zero2 or deepspeed_zero3"),
    ({"distributed": {"strategy": "deepspeed_zero2", "zero_offload": "optimizer_and_parameters"}},
     "$.distributed.zero_offload", "ZeRO-2 does not shard parameters", "deepspeed_zero3"),
    ({"distributed": {"strategy": "deepspeed_zero2", "zero_offload": "parameters"}},
     "$.distributed.zero_offload", "ZeRO-2 does not shard parameters", "deepspeed_zero3"),
    ({"distributed": {"strategy": "deepspeed_zero2", "zero_offload": "optimizer"},
      "training": {"optimizer": "paged_adamw_8bit"}}, "$.training.optimizer",
     "zero_offload optimizer runs DeepSpeed's CPU Adam, not paged_adamw_8bit", "adamw_torch"),
    ({"distributed": {"strategy": "deepspeed_zero3"}}, "$.distributed.strategy",
     "bitsandbytes 4-bit base cannot be sharded by DeepSpeed ZeRO-3", "use strategy: fsdp"),
    ({"distributed": {"strategy": "deepspeed_zero3"}, "quantization": {"bits": 8}}, "$.distributed.strategy",
     "bitsandbytes 8-bit base cannot be sharded by DeepSpeed ZeRO-3", "deepspeed_zero2"),
    ({"distributed": {"strategy": "fsdp"}, "quantization": {"bits": 8}}, "$.distributed.strategy",
     "FSDP cannot shard an 8-bit (LLM.int8) base", "quantization.bits: 4"),
])
def test_combinations_that_break_are_refused_with_the_alternative(make_recipe, delta, path, message, hint):
    problems = _problems(make_recipe, delta)
    assert [(p.path, message in p.message, hint in p.hint) for p in problems] == [(path, True, True)], problems


def test_a_refusal_is_located_at_the_line_that_causes_it(make_recipe, tmp_path):
    path = make_recipe({"distributed": {"strategy": "deepspeed_zero3"}})
    text = path.read_text()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "strategy: deepspeed_zero3" in row)
    (problem,) = _problems(make_recipe, {"distributed": {"strategy": "deepspeed_zero3"}})
    assert (problem.location.file, problem.location.line) == (str(path), line)


@pytest.mark.parametrize("delta", [
    {"distributed": {"strategy": "fsdp"}},  # FSDP-QLoRA: 4-bit stored as a float dtype FSDP shards
    {"distributed": {"strategy": "deepspeed_zero2", "zero_offload": "optimizer"}},
    {"method": "lora", "distributed": {"strategy": "deepspeed_zero3", "zero_offload": "optimizer_and_parameters"}},
    {"distributed": {"strategy": "ddp", "nodes": 2, "main_address": "node-1.cluster", "node_rank": 1}},
    {"distributed": {"strategy": "none"}},
])
def test_combinations_the_libraries_run_are_valid(make_recipe, delta):
    resolve(make_recipe(delta))


def test_diff_shows_the_global_batch_change_with_the_process_count(make_recipe, tmp_path):
    from click.testing import CliRunner

    from recipecli.cli import main

    two = make_recipe({"distributed": {"strategy": "ddp", "processes_per_node": 2}}, name="two.yaml")
    four = make_recipe({"distributed": {"strategy": "ddp", "processes_per_node": 4}}, name="four.yaml")
    out = CliRunner().invoke(main, ["diff", str(two), str(four)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["~ distributed.processes_per_node: 2 -> 4",
                                       "~ global batch (micro-batch x accumulation x processes): 2 -> 4"]
