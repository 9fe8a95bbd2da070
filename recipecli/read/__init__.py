"""Reading a recipe: from a YAML file to a checked, typed, frozen ``Recipe``.

    yamlload (safe bytes -> values with positions) -> load (extends, --set overrides)
    -> schema (JSON Schema, defaults) -> rules (cross-field) -> paths (local files)
    -> codec (document <-> Recipe) -> recipe (the dataclasses)

Owns: the recipe format, the located problems of a recipe (in errors.py's one format), and the
codec that is the only translation between a YAML document and a ``Recipe``.
May import: the standard library, PyYAML, jsonschema, ``recipecli.errors`` and
``recipecli.shipped``. Never torch or any training library, nor the fit or train stages:
``recipe validate`` must start instantly.
"""
