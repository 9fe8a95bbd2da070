"""Where the schema and the shipped recipes are, in a checkout and in an installed wheel."""
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# A wheel carries schema/ and recipes/ inside the package (pyproject's package-dir); a checkout
# (and an editable install) keeps them at the top of the repository, where people look for them.
_ROOT = _HERE / "bundled" if (_HERE / "bundled").is_dir() else _HERE.parent

SCHEMA_PATH = _ROOT / "schema" / "recipe.schema.json"
RECIPES_DIR = _ROOT / "recipes"


def shipped_recipes() -> list[Path]:
    """Every shipped recipe, bases included, in a stable order."""
    return sorted(RECIPES_DIR.rglob("*.yaml"))
