"""An installed wheel carries the schema and every shipped recipe, model and data file."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from .conftest import RECIPES, ROOT


@pytest.mark.slow
def test_wheel_bundles_schema_and_recipes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "recipecli/bundled/schema/recipe.schema.json" in names
    shipped = {f"recipecli/bundled/recipes/{p.relative_to(RECIPES).as_posix()}"
               for p in RECIPES.rglob("*") if p.is_file()}
    assert shipped <= names, shipped - names
