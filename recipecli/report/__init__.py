"""What the commands print: validate's problems, show and diff, fit-check tables and JSON,
``recipe gpu``. Plain functions from results to text or JSON-ready dicts, called by cli.py.

Owns: formatting for people and tools; nothing here decides a verdict or reads YAML itself.
May import: read and fit (never train, never torch), ``recipecli.units``, ``recipecli.errors``.
"""
