"""Every shipped recipe (recursive glob, bases included) validates and documents itself."""
from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.read.load import load_recipe, resolve
from recipecli.shipped import shipped_recipes

from .conftest import RECIPES, SHIPPED


def test_shipped_recipes_are_found():
    assert shipped_recipes() == SHIPPED
    names = {p.relative_to(RECIPES).as_posix() for p in SHIPPED}
    assert {"tinyllama-1.1b.yaml", "phi-2.yaml", "gemma-2b.yaml", "mistral7b.yaml", "llama2-13b.yaml",
            "tiny-demo.yaml"} <= names
    assert any(n.startswith("base/") for n in names)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_shipped_recipe_validates(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    resolved = resolve(path)
    if not resolved.abstract:
        assert load_recipe(path).name


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_shipped_recipe_header(path):
    lines = path.read_text().splitlines()
    depth = len(path.relative_to(RECIPES).parts) - 1
    assert lines[0] == f"# yaml-language-server: $schema={'../' * (depth + 1)}schema/recipe.schema.json"
    header = [line for line in lines if line.startswith("#")]
    assert any("recipe " in line or "make demo" in line for line in header), "header names the command"
    assert any(card in " ".join(header) for card in ("GB", "CPU")), "header names the target card"


def test_a_change_to_the_shared_base_reaches_every_recipe_that_extends_it(tmp_path):
    # Copy the recipes, change one knob in the base that no recipe sets itself: every recipe that
    # extends the base runs with the new value, the others keep theirs.
    shutil.copytree(RECIPES, tmp_path / "recipes")
    base = tmp_path / "recipes" / "base" / "qlora-8gb.yaml"
    text = base.read_text()
    assert "\n  seed:" not in text and text.endswith("\n")
    base.write_text(text.replace("\ntraining:\n", "\ntraining:\n  seed: 1234\n"))
    extending = []
    for path in sorted((tmp_path / "recipes").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("extends") == "base/qlora-8gb.yaml":
            extending.append(path.name)
        seed = load_recipe(path).training.seed
        assert seed == (1234 if path.name in extending else 42), path.name
    # the 8 GB recipes share the base; the CPU demo stands alone
    assert {"tinyllama-1.1b.yaml", "phi-2.yaml", "gemma-2b.yaml", "mistral7b.yaml", "llama2-13b.yaml"} \
        <= set(extending) and "tiny-demo.yaml" not in extending
