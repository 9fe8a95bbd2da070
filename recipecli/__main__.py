"""`python -m recipecli` runs the `recipe` command."""
from .cli import main

main()
