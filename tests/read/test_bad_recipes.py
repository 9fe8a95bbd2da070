"""The corpus of bad recipes: each one gets exit code 1, its line, its field and no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipecli.cli import main

BAD = Path(__file__).parent / "bad_recipes"

# file -> (line, field path, words the message must hold)
CASES = {
    "tabs.yaml": (4, "$", "'\\t'"),
    "malformed.yaml": (4, "$", "malformed YAML"),
    "bad_indent.yaml": (3, "$", "malformed YAML"),
    "empty.yaml": (1, "$", "empty recipe"),
    "comments_only.yaml": (1, "$", "empty recipe"),
    "top_list.yaml": (1, "$", "top level is a list"),
    "top_scalar.yaml": (1, "$", "top level is a single value"),
    "python_tag.yaml": (2, "$", "!!python/object/apply:os.system is not allowed"),
    "python_name_tag.yaml": (3, "$", "!!python/name:os.system is not allowed"),
    "custom_tag.yaml": (2, "$", "!secret is not allowed"),
    "binary.yaml": (2, "$", "binary data"),
    "non_utf8.yaml": (2, "$", "not UTF-8"),
    "duplicate_key.yaml": (11, "$.training.learning_rate", "duplicate key 'learning_rate' (first at line 10)"),
    "duplicate_section.yaml": (9, "$.method", "duplicate key 'method' (first at line 5)"),
    "merge_key.yaml": (11, "$", "merge keys"),
    "undefined_alias.yaml": (9, "$", "nothing"),
    "missing_name.yaml": (1, "$.name", "missing required field 'name'"),
    "missing_model_id.yaml": (4, "$.model.id", "missing required field 'id'"),
    "wrong_version.yaml": (1, "$.recipe_version", "2 is not supported: expected 1"),
    "bad_name.yaml": (2, "$.name", "is not of the form this field takes"),
    "lora_r_zero.yaml": (10, "$.lora.r", "less than the minimum of 1"),
    "lora_r_string.yaml": (10, "$.lora.r", "expected a whole number"),
    "lora_r_float.yaml": (10, "$.lora.r", "expected a whole number"),
    "dropout_one.yaml": (10, "$.lora.dropout", "maximum of 1"),
    "lr_negative.yaml": (10, "$.training.learning_rate", "minimum of 0"),
    "lr_string.yaml": (10, "$.training.learning_rate", "expected a number"),
    "micro_batch_zero.yaml": (10, "$.training.micro_batch_size", "minimum of 1"),
    "epochs_zero.yaml": (10, "$.training.epochs", "minimum of 0"),
    "grad_ckpt_string.yaml": (10, "$.training.gradient_checkpointing", "expected true or false"),
    "unknown_method.yaml": (5, "$.method", "did you mean 'qlora'?"),
    "unknown_optimizer.yaml": (10, "$.training.optimizer", "did you mean 'adamw_8bit'?"),
    "unknown_format.yaml": (8, "$.data.datasets[0].format", "did you mean 'alpaca'?"),
    "unknown_precision.yaml": (10, "$.training.precision", "'fp8' is not one of"),
    "bits_three.yaml": (10, "$.quantization.bits", "3 is not one of 4, 8"),
    "misspelled_grad_accum.yaml": (10, "$.training.grad_accum", "did you mean 'gradient_accumulation_steps'?"),
    "misspelled_gradient_accumulation.yaml": (10, "$.training.gradient_accumulation_step",
                                              "did you mean 'gradient_accumulation_steps'?"),
    "misspelled_section.yaml": (9, "$.trainig", "did you mean 'training'?"),
    "key_in_wrong_section.yaml": (10, "$.lora.learning_rate", "belongs in $.training"),
    "unknown_top_key.yaml": (9, "$.wandb_project", "unknown key 'wandb_project'"),
    "datasets_empty.yaml": (7, "$.data.datasets", "should be non-empty"),
    "datasets_not_list.yaml": (7, "$.data.datasets", "expected a list"),
    "dataset_missing_format.yaml": (8, "$.data.datasets[0].format", "missing required field 'format'"),
    "val_fraction_one.yaml": (9, "$.data.val_fraction", "maximum of 1"),
    "val_fraction_zero.yaml": (9, "$.data.val_fraction", "minimum of 0"),
    "seq_len_tiny.yaml": (9, "$.data.max_seq_length", "minimum of 8"),
    "target_modules_bad.yaml": (10, "$.lora.target_modules", "'everything' is not one of all-linear, attention"),
    "target_modules_path.yaml": (10, "$.lora.target_modules[0]", "is not of the form this field takes"),
    "target_pattern_invalid.yaml": (11, "$.lora.target_modules.pattern",
                                    "not a regular expression: unterminated character set"),
    "target_pattern_number.yaml": (11, "$.lora.target_modules.pattern", "expected text, got int 5"),
    "target_pattern_extra_key.yaml": (12, "$.lora.target_modules.layers", "unknown key 'layers'"),
    "lora_with_full.yaml": (9, "$.lora", "lora section with method full"),
    "quant_with_lora.yaml": (9, "$.quantization", "quantization section with method lora"),
    "nf4_with_8bit.yaml": (11, "$.quantization.type", "only applies to 4-bit"),
    "dtype_clash.yaml": (10, "$.quantization.compute_dtype", "bfloat16 with precision fp16"),
    "flash_fp32.yaml": (11, "$.training.attention", "flash_attention_2 with precision fp32"),
    "missing_dataset_file.yaml": (8, "$.data.datasets[0].path", "dataset file not found"),
    "missing_model_folder.yaml": (4, "$.model.id", "local model folder not found"),
    "missing_tokenizer_folder.yaml": (5, "$.model.tokenizer", "local tokenizer folder not found"),
    "missing_base.yaml": (3, "$.extends", "base recipe not found"),
    "cycle_a.yaml": (None, "$.extends", "extends cycle"),
    "cycle_b.yaml": (None, "$.extends", "extends cycle"),
    "wandb_no_project.yaml": (11, "$.logging.wandb.project", "missing required field 'project'"),
    "wandb_api_key.yaml": (12, "$.logging.wandb.api_key", "unknown key 'api_key'"),
    "trust_remote_code_string.yaml": (5, "$.model.trust_remote_code", "expected true or false"),
    "import_path.yaml": (10, "$.training.optimizer", "'torch.optim.AdamW' is not one of"),
}


def test_corpus_is_complete():
    assert sorted(CASES) == sorted(p.name for p in BAD.glob("*.yaml"))
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_recipe_is_reported(name):
    line, field, words = CASES[name]
    result = CliRunner().invoke(main, ["validate", str(BAD / name)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    first, hint = result.output.splitlines()[:2]
    assert "Traceback" not in result.output
    assert f": {field}: " in first, first
    assert words in f"{first}\n{hint}", (first, hint)
    if line is not None:
        assert first.startswith(f"{BAD / name}:{line}:"), first
    assert hint.startswith("  hint: ") and len(hint) > len("  hint: "), hint


def test_bad_recipes_in_one_subprocess_call():
    """The real entry point, all files at once: one line per problem and a summary, exit 1."""
    files = [str(BAD / n) for n in sorted(CASES)]
    proc = subprocess.run([sys.executable, "-m", "recipecli", "validate", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(f"{len(files)} files: 0 valid, {len(files)} invalid")


def test_python_tag_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"recipe_version: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert not marker.exists()
