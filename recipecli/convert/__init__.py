"""Converting between Axolotl YAML configs and recipes (`recipe convert`).

Owns: the one table of key mappings (axolotl.py), the walk over it in both directions
(translate.py) and what the command reports and writes (report.py).

May import: ``read`` (the safe YAML loader, the loader, the codec, the schema), ``errors`` and
``fit``'s pure verdict for the one-line fit summary and its model catalog (data, where a key means
something else on some models). Never torch, transformers or ``train``: a
conversion is data in, data out, and starts as fast as ``recipe validate``.
"""
