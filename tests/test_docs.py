"""The README stays true: its recipe validates and every command is documented."""
from __future__ import annotations

import re
import shutil

from click.testing import CliRunner

from recipecli.cli import main

from .conftest import RECIPES, ROOT

README = (ROOT / "README.md").read_text()


def test_readme_recipe_validates(tmp_path):
    (block,) = re.findall(r"## A recipe\n\n```yaml\n(.*?)```", README, re.S)
    shutil.copytree(RECIPES / "base", tmp_path / "base")
    recipe = tmp_path / "readme.yaml"
    recipe.write_text(block)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output


def test_every_command_is_documented():
    for name in main.commands:
        assert f"### `recipe {name}" in README or f"`recipe {name} " in README, name


def test_readme_names_the_two_commands_for_a_fresh_machine():
    assert "make demo" in README and "make test" in README
