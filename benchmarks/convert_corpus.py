"""How much of a folder of Axolotl configs `recipe convert --from axolotl` takes with every key
mapped: the issue-10 target (>= 90 % of the supervised fine-tuning configs, 0 tracebacks, 0 hangs,
every written recipe valid), measured on a corpus the project does not ship (e.g. a checkout of
Axolotl's examples/ folder).

    python benchmarks/convert_corpus.py PATH/TO/axolotl/examples [--json OUT.json]

Each config goes through the command's own function (convert.command.from_axolotl_file, which
also loads the written recipe with recipe's loader), with a 30 s alarm against hangs. A config is
supervised fine-tuning unless a rule below says otherwise; the rules read the config, not the
converter's answer:

    preference  rl, reward_model or process_reward_model set, or a dataset type of dpo/orpo/kto/
                bradley_terry/ebft
    objective   another training objective: a diffusion, decision or distillation (kd, gkd) plugin
    pretraining pretraining_dataset set
    multimodal  processor_type set, or vision / audio / llava / -vl in the file's path

Each config that converts is then sent back (`--to axolotl`, convert.command.to_axolotl_file) and
converted again: the two recipes must be equal (name and description aside), the issue's round trip
on real configs rather than on recipe's own.

Needs no network: HF_HUB_OFFLINE is set, so the fit-check line of the command is not part of it.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import signal
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recipecli.convert.command import NotConvertedKeys, from_axolotl_file, to_axolotl_file  # noqa: E402
from recipecli.errors import RecipeError  # noqa: E402
from recipecli.read.yamlload import load_file  # noqa: E402

SECONDS = 30
PREFERENCE_TYPES = ("dpo", "orpo", "kto", "bradley_terry", "ebft")


class Hang(Exception):
    pass


def kind(path: Path, relative: str) -> str:
    """supervised, preference, pretraining, multimodal, or unreadable (the rules above)."""
    try:
        cfg = load_file(str(path)).data
    except RecipeError:
        return "unreadable"
    if not isinstance(cfg, dict):
        return "unreadable"
    if cfg.get("rl") or cfg.get("reward_model") or cfg.get("process_reward_model"):
        return "preference"
    datasets = cfg.get("datasets") if isinstance(cfg.get("datasets"), list) else []
    types = [str(d.get("type", "")).split(".")[0] for d in datasets if isinstance(d, dict)]
    if any(t.startswith(PREFERENCE_TYPES) for t in types):
        return "preference"
    plugins = cfg.get("plugins") if isinstance(cfg.get("plugins"), list) else []
    if any(re.search(r"diffusion|decision|\bgkd\b|\bkd\b", str(p)) for p in plugins):
        return "objective"
    if cfg.get("pretraining_dataset"):
        return "pretraining"
    lowered = relative.lower()
    if cfg.get("processor_type") or re.search(r"vision|audio|llava|-vl\b|_vl\b", lowered):
        return "multimodal"
    return "supervised"


def convert(path: Path) -> tuple[str, list[str]]:
    """("ok" | "unmapped" | "invalid" | "traceback" | "hang", the blocking keys or the error)."""
    def alarm(signum, frame):
        raise Hang

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(SECONDS)
    try:
        from_axolotl_file(str(path), None, lossy=False)
        return "ok", []
    except NotConvertedKeys as e:
        return "unmapped", sorted({re.sub(r"datasets\[\d+\]", "datasets[]", i.key) for i in e.items})
    except RecipeError as e:
        return "invalid", [str(e).splitlines()[0]]
    except Hang:
        return "hang", []
    except Exception:  # the target is none of these: each is listed in full
        return "traceback", [traceback.format_exc()]
    finally:
        signal.alarm(0)


def round_trip(path: Path, scratch: Path) -> str:
    """"same", or what went wrong converting the recipe of ``path`` to Axolotl and back."""
    first, axolotl, second = scratch / "first.yaml", scratch / "back.yml", scratch / "again.yaml"
    for made in (first, axolotl, second):
        made.unlink(missing_ok=True)
    try:
        before = from_axolotl_file(str(path), str(first), lossy=False).recipe
        to_axolotl_file(str(first), str(axolotl), lossy=False)
        after = from_axolotl_file(str(axolotl), str(second), lossy=False).recipe
    except RecipeError as e:
        return str(e).splitlines()[0]
    differ = [f for f in dataclasses.fields(before) if f.compare and f.name not in ("name", "description")
              and getattr(before, f.name) != getattr(after, f.name)]
    return "same" if not differ else "differs in " + ", ".join(f.name for f in differ)


def measure(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    rows = []
    for path in files:
        relative = str(path.relative_to(folder))
        outcome, detail = convert(path)
        rows.append({"file": relative, "kind": kind(path, relative), "outcome": outcome, "detail": detail})
    supervised = [r for r in rows if r["kind"] == "supervised"]
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            if row["outcome"] == "ok":
                row["round_trip"] = round_trip(folder / row["file"], Path(scratch))
    blocking = collections.Counter(k for r in supervised if r["outcome"] == "unmapped" for k in r["detail"])
    alone = collections.Counter(r["detail"][0] for r in supervised if r["outcome"] == "unmapped"
                                and len(r["detail"]) == 1)
    return {
        "files": len(rows),
        "kinds": dict(collections.Counter(r["kind"] for r in rows)),
        "outcomes": dict(collections.Counter(r["outcome"] for r in rows)),
        "supervised": len(supervised),
        "supervised_converted": sum(r["outcome"] == "ok" for r in supervised),
        "round_trips": sum(r.get("round_trip") == "same" for r in rows),
        "blocking_keys": [{"key": k, "files": n, "only_blocker": alone[k]} for k, n in blocking.most_common()],
        "rows": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, help="write every file's outcome here")
    args = parser.parse_args(argv)
    result = measure(args.folder)
    share = result["supervised_converted"] / max(1, result["supervised"])
    print(f"{result['files']} configs: {result['kinds']}")
    print(f"outcomes: {result['outcomes']}")
    converted = result["outcomes"].get("ok", 0)
    print(f"round trip (to Axolotl and back, the same recipe): {result['round_trips']} of {converted}")
    print(f"supervised fine-tuning: {result['supervised_converted']} of {result['supervised']} convert with every "
          f"key mapped ({share:.0%}; target 90%)")
    print("keys that block supervised configs (files, files where it is the only one):")
    for row in result["blocking_keys"][:30]:
        print(f"  {row['files']:4d} {row['only_blocker']:4d}  {row['key']}")
    for row in result["rows"]:
        if row["outcome"] in ("traceback", "hang", "invalid"):
            print(f"{row['outcome']}: {row['file']}: {row['detail'][0] if row['detail'] else ''}")
        elif row.get("round_trip", "same") != "same":
            print(f"round trip: {row['file']}: {row['round_trip']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
