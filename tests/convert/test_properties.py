"""Property-based: whatever values an Axolotl config holds, `recipe convert --from axolotl` answers
with a recipe or located reasons, never a traceback or a hang.

The configs are the corpus in data/ (written from Axolotl's documentation) with a few values
replaced, at the top level and in a dataset entry, by values of any YAML kind: what a hurried user
or a broken generator writes. Seeds are fixed (derandomize) so CI sees the same cases every run.
An unseeded run of the same mutations over Axolotl's public examples found the lookups of a
mapping in a table that this now guards (tests/convert/test_command.py, "unhashable values").
"""
from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipecli.convert.command import from_axolotl_file
from recipecli.errors import RecipeError

DATA = Path(__file__).parent / "data"
CORPUS = {path.name: yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(DATA.glob("*.yml"))}
SCALARS = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.sampled_from([math.nan, math.inf, 0.5, 1e-9])
           | st.text(max_size=12) | st.sampled_from(["auto", "offload", "legacy", "chatml", "~0", "../x.json",
                                                    "deepspeed_configs/zero2.json", "flash", "alpaca"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@pytest.fixture
def workdir(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)  # relative paths in a mutated config resolve here, not in the repository
    return tmp_path


@settings(derandomize=True, database=None, deadline=None, max_examples=400,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CORPUS)), data=st.data())
def test_a_mutated_axolotl_config_gets_an_answer(workdir, name, data):
    config = dict(CORPUS[name])
    for key in data.draw(st.lists(st.sampled_from(sorted(config)), max_size=3, unique=True)):
        config[key] = data.draw(VALUES)
    datasets = config.get("datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], dict):
        entry = dict(datasets[0])
        key = data.draw(st.sampled_from(sorted(entry) + ["type", "conversation", "field_messages", "ds_type"]))
        entry[key] = data.draw(VALUES)
        config["datasets"] = [entry, *datasets[1:]]
    source = workdir / "mutated.yml"
    source.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    def hang(signum, frame):
        raise TimeoutError("convert took more than 10 s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        from_axolotl_file(str(source), None, lossy=data.draw(st.booleans()))
    except RecipeError as e:
        assert str(e).strip()  # every refusal says something, located by the command's format
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
