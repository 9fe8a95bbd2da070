"""The project's own tiny Llama and its demo data, built deterministically from a seed.

The demo and the end-to-end tests must run offline, in seconds, on a laptop CPU, through the
same code path as a 7B run (bitsandbytes 4-bit, peft, TRL). No hub model is that small, so this
builds one: a byte-level BPE tokenizer trained on the demo data itself, and a 2-layer
LlamaForCausalLM with random weights. The data has patterns a model picks up in a minute
(reverse, uppercase, add, count), so the loss visibly drops.

    python -m recipecli.train.tiny [MODEL_DIR] [--data-dir DIR]

rewrites ``recipes/models/tiny-llama`` and ``recipes/data`` (the defaults) from scratch.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Optional, Sequence

from .data import alpaca_prompt

SEED = 1234
N_EXAMPLES = 256
VOCAB_SIZE = 512
# Llama in miniature: grouped-query attention (4 query, 2 KV heads of 16) like Llama 3. Widths
# are multiples of 64, bitsandbytes' quantization block, so every weight fills whole blocks as
# in a real model; tests/test_tiny.py loads it in NF4 and int8 on the CPU backend.
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
INIT_STD = 0.02  # Llama's initializer_range
# LoRA leaves the output head frozen. At Llama's 0.02 its rows have norm 0.16, so no hidden state
# could lift one logit more than ~1.3 above the rest and the loss would stall near ln(vocab);
# rows of norm 2, the scale of a trained head, let the adapters reach a confident answer.
HEAD_STD = 2 / SHAPE["hidden_size"] ** 0.5

BOS, EOS, PAD, TURN = "<s>", "<|im_end|>", "<pad>", "<|im_start|>"
# ChatML. The assistant turn, its end-of-turn token included, sits inside {% generation %}, so
# TRL's assistant_only_loss trains the answer and the stop token and nothing else.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM_PROMPT = "You follow instructions exactly."

_WORDS = ("red", "blue", "green", "gold", "cat", "dog", "fox", "owl", "apple", "pear", "plum", "lime",
          "sun", "moon", "star", "rain", "tree", "rock", "fish", "bird")


def demo_records(n: int = N_EXAMPLES, seed: int = SEED) -> list[dict]:
    """The demo instruction set in alpaca layout, the same for the same arguments.

    Args:
        n: number of records; the four tasks take turns. No record repeats, so a held-out split
            never contains a training example.
        seed: seed of the words and numbers drawn.

    Returns:
        Records with ``instruction``, ``input`` (empty when the task has none) and ``output``.
    """
    rng = random.Random(seed)
    records: list[dict] = []
    while len(records) < n:
        record = _draw(len(records) % 4, rng)
        if record not in records:
            records.append(record)
    return records


def _draw(task: int, rng: random.Random) -> dict:
    if task == 0:
        words = rng.sample(_WORDS, rng.randint(3, 5))
        return _record("Reverse the words.", " ".join(words), " ".join(reversed(words)))
    if task == 1:
        words = rng.sample(_WORDS, rng.randint(2, 4))
        return _record("Uppercase the words.", " ".join(words), " ".join(words).upper())
    if task == 2:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return _record("Add the numbers.", f"{a} + {b}", str(a + b))
    start = rng.randint(1, 20)
    stop = start + rng.randint(2, 5)
    return _record(f"Count from {start} to {stop}.", "", " ".join(map(str, range(start, stop + 1))))


def _record(instruction: str, input: str, output: str) -> dict:
    return {"instruction": instruction, "input": input, "output": output}


def demo_formats(records: Sequence[dict]) -> dict[str, list[dict]]:
    """The same records in every recipe format, keyed by file stem (tiny-alpaca, tiny-chat...)."""
    def question(r: dict) -> str:
        return f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"]

    def turns(i: int, r: dict) -> list[tuple[str, str]]:
        # Every third conversation opens with a system turn, so role mapping of all three is exercised.
        system = [("system", SYSTEM_PROMPT)] if i % 3 == 0 else []
        return system + [("user", question(r)), ("assistant", r["output"])]

    sharegpt_names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {
        "tiny-alpaca": list(records),
        "tiny-chat": [{"messages": [{"role": role, "content": text} for role, text in turns(i, r)]}
                      for i, r in enumerate(records)],
        "tiny-sharegpt": [{"conversations": [{"from": sharegpt_names[role], "value": text}
                                             for role, text in turns(i, r)]}
                          for i, r in enumerate(records)],
        "tiny-text": [{"text": alpaca_prompt(r["instruction"], r["input"]) + r["output"]} for r in records],
        "tiny-prompt-completion": [{"prompt": f"Q: {question(r)}\nA:", "completion": f" {r['output']}"}
                                   for r in records],
    }


def write_demo_data(data_dir: Path) -> list[Path]:
    """Write the demo data: every format as .jsonl; the alpaca records also as .json, .csv and .parquet.

    Args:
        data_dir: folder to write into (created).

    Returns:
        The files written.
    """
    import pyarrow
    import pyarrow.parquet

    records = demo_records()
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, rows in demo_formats(records).items():
        path = data_dir / f"{stem}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        written.append(path)
    alpaca = data_dir / "tiny-alpaca"
    # One record per line inside the array keeps diffs of the shipped file readable.
    alpaca.with_suffix(".json").write_text(
        "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n", encoding="utf-8")
    with open(alpaca.with_suffix(".csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(list(records)), alpaca.with_suffix(".parquet"))
    return written + [alpaca.with_suffix(s) for s in (".json", ".csv", ".parquet")]


def build_tokenizer(corpus: Sequence[str]):
    """A byte-level BPE tokenizer trained on ``corpus``, with bos/eos/pad and the ChatML template.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` that prepends bos to plain text, as Llama's does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[PAD, BOS, EOS, TURN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),  # offsets feed TRL's assistant mask
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, tokenizer.token_to_id(BOS))]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[TURN], chat_template=CHAT_TEMPLATE,
                                   model_max_length=SHAPE["max_position_embeddings"])


def build_model(tokenizer, seed: int = SEED):
    """A LlamaForCausalLM of :data:`SHAPE` for ``tokenizer``, every weight drawn from ``seed``.

    Weights are filled here rather than by transformers' initializer, so a rebuild gives the same
    bytes even if a transformers release changes how it initializes.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, initializer_range=INIT_STD, **SHAPE)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                std = HEAD_STD if name == "lm_head.weight" else INIT_STD
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def build(model_dir: Path, seed: int = SEED) -> Path:
    """Build the tiny model and its tokenizer into ``model_dir`` (``save_pretrained`` layout).

    Returns:
        ``model_dir``.
    """
    formats = demo_formats(demo_records())
    corpus = [row["text"] for row in formats["tiny-text"]]
    corpus += [row["prompt"] + row["completion"] for row in formats["tiny-prompt-completion"]]
    corpus += [f"{m['role']}\n{m['content']}" for row in formats["tiny-chat"] for m in row["messages"]]
    tokenizer = build_tokenizer(corpus)
    model = build_model(tokenizer, seed)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(model_dir)
    model.save_pretrained(model_dir)
    return model_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipecli.train.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", default="recipes/models/tiny-llama", type=Path)
    parser.add_argument("--data-dir", default="recipes/data", type=Path)
    args = parser.parse_args(argv)
    for path in write_demo_data(args.data_dir):
        print(path)
    print(build(args.model_dir))


if __name__ == "__main__":
    main()
