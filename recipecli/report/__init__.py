"""What the commands print: validate's problems, show and diff, fit-check tables and JSON,
``recipe gpu``. Plain functions from results to text or JSON-ready dicts, called by cli.py.

Owns: formatting for people and tools; nothing here decides a verdict or reads YAML itself.
May import: read and fit (never train, never torch), ``recipecli.units``, ``recipecli.errors``,
``recipecli.shipped`` and PyYAML. train imports report.fit's formatting of a verdict for the
refusals and failures it prints (the same text fit-check prints), never the other way round.
"""
