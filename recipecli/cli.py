"""The `recipe` command: a thin click layer over the core.

Domain errors (RecipeError) become a message on stderr and the exit code they carry
(errors.ExitCode); nothing here knows how a recipe is checked, estimated or run.
"""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import ExitCode, InvalidRecipe, RecipeError


class _Group(click.Group):
    """Turns domain errors into messages and exit codes, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecipeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(int(exc.exit_code))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recipe")
def main() -> None:
    """Declarative, shareable LLM fine-tuning recipes.

    Example: recipe validate recipes/*.yaml
    """


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for people, json for tools.")
def validate(files: tuple[str, ...], fmt: str) -> None:
    """Check recipe files against the schema and the cross-field rules.

    Every problem of every file is reported with file:line:column, the field and a hint.
    Exit code 0 when all are valid, 1 otherwise.

    Example: recipe validate recipes/mistral7b.yaml recipes/phi-2.yaml
    """
    from .load import resolve

    results = []  # (file, problems, warnings)
    for file in files:
        try:
            results.append((file, [], resolve(file).warnings))
        except InvalidRecipe as exc:
            results.append((file, exc.problems, []))
    invalid = sum(1 for _, problems, _ in results if problems)
    if fmt == "json":
        click.echo(json.dumps({
            "files": [{"file": f, "valid": not p, "problems": [x.as_dict() for x in p],
                       "warnings": [x.as_dict() for x in w]} for f, p, w in results],
            "valid": len(results) - invalid, "invalid": invalid}, indent=2))
    else:
        for file, problems, warnings in results:
            for problem in problems or warnings:
                click.echo(str(problem))
            if not problems:
                click.echo(f"{file}: ok")
        count = sum(len(p) for _, p, _ in results)
        click.echo(f"{len(results)} file{'s' * (len(results) != 1)}: {len(results) - invalid} valid, "
                   f"{invalid} invalid ({count} problem{'s' * (count != 1)})")
    sys.exit(ExitCode.INVALID if invalid else ExitCode.OK)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set training.learning_rate=1e-4 (repeatable).")
def show(file: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved recipe: extends merged, defaults filled.

    Example: recipe show recipes/mistral7b.yaml --set data.max_seq_length=512
    """
    from .display import resolved_yaml
    from .load import resolve

    click.echo(resolved_yaml(resolve(file, overrides)), nl=False)


@main.command()
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
def diff(first: str, second: str) -> None:
    """Compare two resolved recipes field by field.

    Example: recipe diff recipes/tinyllama-1.1b.yaml my-tinyllama.yaml
    """
    from .display import changes
    from .load import resolve

    lines = changes(resolve(first).with_defaults(), resolve(second).with_defaults())
    click.echo("\n".join(lines) if lines else "no differences")


@main.command("schema")
@click.option("--path", "print_path", is_flag=True, help="Print where the schema file is instead of its text.")
def schema_command(print_path: bool) -> None:
    """Print the recipe JSON Schema (or its path) for editors and tools.

    Example: recipe schema --path
    """
    from .paths import SCHEMA_PATH

    click.echo(str(SCHEMA_PATH) if print_path else SCHEMA_PATH.read_text(encoding="utf-8"), nl=print_path)
