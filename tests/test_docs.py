"""The README stays true: its recipe validates, its command lines run as shown, every command and
option is documented, and the files, modules and make targets it names exist.

Command lines are collected from the README's shell blocks, the Makefile, the shipped recipes'
headers and each command's --help example. Every one must parse; the cheap, offline ones (validate,
show, diff, schema, fit-check and gpu with --gpu/--vram) are run, and where the README shows their
output, the lines it shows must be what they print.
"""
from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import ExitCode

from .conftest import RECIPES, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
CHEAP = {"validate", "show", "diff", "schema", "fit-check", "gpu"}  # offline, no torch, milliseconds
ELIDED = ("...", "…")


@dataclass(frozen=True)
class Line:
    """A `recipe ...` command line found in the documentation."""

    source: str
    text: str
    shown: tuple = ()  # the output the README prints under it
    comment: str = ""  # a trailing `# ...` remark, e.g. "does not fit"

    def __str__(self) -> str:
        return f"{self.source}: {self.text}"


def shell_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S)]


def readme_lines() -> list[Line]:
    found = []
    for block in shell_blocks(README):
        prompted = any(line.startswith("$ ") for line in block)
        for i, line in enumerate(block):
            if prompted and not line.startswith("$ "):
                continue
            command = line.removeprefix("$ ")
            if not command.startswith("recipe "):
                continue
            shown = []
            for after in block[i + 1:] if prompted else ():
                if after.startswith("$ "):
                    break
                shown.append(after)
            text, _, comment = command.partition(" #")
            found.append(Line("README.md", text.strip(), tuple(shown), comment.strip()))
    # inline `recipe gpu --gpu t4`, but not synopses with placeholders (FILE, [--set ...], …)
    for span in re.findall(r"`(recipe [^`]+)`", README):
        if len(span.split()) > 2 and not re.search(r"\b[A-Z][A-Z_]*\b|\[|…|\.\.\.", span):
            found.append(Line("README.md", span))
    return found


def makefile_lines() -> list[Line]:
    lines = []
    for line in MAKEFILE.splitlines():
        match = re.match(r"\t\$\(BIN\)/(recipe .*)", line)
        if match:
            text, _, rest = match.group(1).partition("||")
            lines.append(Line("Makefile", text.strip(), comment=rest.strip()))
    return lines


def header_lines() -> list[Line]:
    lines = []
    for path in sorted(RECIPES.rglob("*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            # "#   recipe fit-check ..." or "#   make demo   # or: recipe run ..."
            match = re.match(r"#\s+(?:\S.*#\s*or:\s*)?(recipe [a-z-]+ .*)$", line)
            if match:
                text, _, comment = match.group(1).partition("#")
                lines.append(Line(path.relative_to(ROOT).as_posix(), text.strip(), comment=comment.strip()))
    return lines


def help_lines() -> list[Line]:
    lines = []
    for name, command in main.commands.items():
        example = re.search(r"Example: (.*)", command.help or "")  # the docstring: --help wraps it
        assert example, f"recipe {name} --help has no example"
        for match in re.findall(r"recipe [a-z-]+[^()]*", example.group(1)):
            lines.append(Line(f"recipe {name} --help", match.strip()))
    return lines


DOCUMENTED = readme_lines() + makefile_lines() + header_lines() + help_lines()


@pytest.fixture
def checkout(tmp_path, monkeypatch, offline) -> Path:
    """A folder laid out like the repository, with a finished demo run, as the README's reader has."""
    for name in ("recipes", "schema", "tests"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    (tmp_path / "runs" / "tiny-demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def arguments(line: Line) -> list[str]:
    words = shlex.split(line.text)
    assert words[0] == "recipe", line
    out = []
    for word in words[1:]:  # the shell expands recipes/*.yaml before recipe sees it
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out.extend(matches or [word])
    return out


def parse(line: Line) -> click.Context:
    args = arguments(line)
    command = main.commands.get(args[0])
    assert command is not None, f"{line}: no command {args[0]!r}"
    try:
        return command.make_context(args[0], args[1:])
    except click.ClickException as exc:
        raise AssertionError(f"{line}: {exc.format_message()}") from None


def missing_files(ctx: click.Context) -> list[str]:
    """FILE arguments that do not exist (the reader's own my-*.yaml files aside)."""
    missing = []
    for param in ctx.command.params:
        if isinstance(param, click.Argument) and isinstance(param.type, click.Path):
            values = ctx.params[param.name]
            for value in values if isinstance(values, tuple) else (values,):
                if value is not None and not Path(value).exists() and not Path(value).name.startswith("my-"):
                    missing.append(value)
    return missing


def expected_exit(line: Line) -> set:
    """What the documentation says the line ends with: fits, does not fit, or finds a problem."""
    if line.comment == "true":  # Makefile: `recipe fit-check ... || true`
        return {ExitCode.OK, ExitCode.DOES_NOT_FIT}
    said = " ".join((line.comment, *line.shown)).lower()
    if "does not fit" in said:
        return {ExitCode.DOES_NOT_FIT}
    if re.search(r"[1-9]\d* invalid", said):
        return {ExitCode.INVALID}
    return {ExitCode.OK}


def normalized(text: str) -> str:
    return " ".join(text.split())


def runs_as_shown(line: Line) -> None:
    """Parse the line; run it when that is cheap and offline; compare what the docs show."""
    ctx = parse(line)
    assert not missing_files(ctx), f"{line}: names files that do not exist: {missing_files(ctx)}"
    name = ctx.command.name
    offline_card = name not in ("fit-check", "gpu") or ctx.params.get("gpu_name") or ctx.params.get("vram")
    if name not in CHEAP or not offline_card or any(Path(a).name.startswith("my-") for a in arguments(line)):
        return  # parsing is what can be checked cheaply: training, or the reader's own files
    result = CliRunner().invoke(main, arguments(line))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in expected_exit(line), f"{line}\n{result.output}"
    printed = {normalized(out) for out in result.output.splitlines()}
    for shown in line.shown:
        if shown.strip() and not any(mark in shown for mark in ELIDED):
            assert normalized(shown) in printed, f"{line}: README shows {shown!r}; it prints:\n{result.output}"


@pytest.mark.parametrize("line", DOCUMENTED, ids=str)
def test_documented_command_line_parses_and_runs_as_shown(checkout, line):
    runs_as_shown(line)


def test_command_lines_were_found_everywhere():
    sources = {line.source for line in DOCUMENTED}
    assert {"README.md", "Makefile", "recipes/tiny-demo.yaml", "recipes/llama2-13b.yaml"} <= sources
    assert {f"recipe {name} --help" for name in main.commands} <= sources
    assert sum(1 for line in DOCUMENTED if line.shown) >= 4  # the README's examples with output


@pytest.mark.parametrize("line, complaint", [
    (Line("README.md", "recipe fit-check --card rtx2080"), "(?i)no such option"),
    (Line("README.md", "recipe check recipes/tiny-demo.yaml"), "no command 'check'"),
    (Line("README.md", "recipe validate tests/bad_recipes/misspelled_grad_accum.yaml"), "do not exist"),
    (Line("README.md", "recipe validate recipes/tiny-demo.yaml", ("recipes/tiny-demo.yaml: valid",)),
     "README shows"),
    (Line("x.yaml", "recipe fit-check recipes/llama2-13b.yaml --gpu a100-80gb", comment="does not fit"),
     "llama2-13b"),
], ids=["option", "command", "file", "output", "exit code"])
def test_a_stale_command_line_is_caught(checkout, line, complaint):
    with pytest.raises(AssertionError, match=complaint):
        runs_as_shown(line)


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, re.S)


@pytest.mark.parametrize("block", yaml_blocks(), ids=lambda b: re.search(r"^name: (.*)$", b, re.M).group(1))
def test_readme_recipe_validates_where_its_schema_line_says_it_lives(tmp_path, block):
    # The first line points editors at the schema relative to the recipe's folder: recipes/.
    shutil.copytree(RECIPES, tmp_path / "recipes", ignore=shutil.ignore_patterns("models", "data"))
    (tmp_path / "schema").symlink_to(ROOT / "schema", target_is_directory=True)
    recipe = tmp_path / "recipes" / "readme.yaml"
    recipe.write_text(block, encoding="utf-8")
    hint = re.match(r"# yaml-language-server: \$schema=(\S+)", block)
    assert hint and (recipe.parent / hint.group(1)).resolve() == (ROOT / "schema" / "recipe.schema.json")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output


def test_readme_has_a_recipe_block():
    assert len(yaml_blocks()) >= 1


def command_section(name: str) -> str:
    """The README text under the ### heading(s) that introduce `recipe NAME`."""
    sections = re.split(r"^### ", README, flags=re.M)[1:]
    return "".join(s for s in sections if re.search(rf"`recipe {re.escape(name)}( |`)", s.split("\n", 1)[0]))


def options() -> list:
    out = []
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                out.append(pytest.param(name, param, id=f"{name} {param.opts[-1]}"))
    return out


UNDOCUMENTED: dict = {}  # known gaps in README.md, (command, option) -> why, for whoever edits it next


@pytest.mark.parametrize("name", list(main.commands))
def test_every_command_has_its_own_readme_section(name):
    assert command_section(name), f"README.md has no ### heading naming `recipe {name}`"


@pytest.mark.parametrize("name, option", options())
def test_every_option_is_named_in_its_command_section(request, name, option):
    long = max(option.opts, key=len)
    if (name, long) in UNDOCUMENTED:
        request.applymarker(pytest.mark.xfail(strict=False, reason=UNDOCUMENTED[(name, long)]))
    section = command_section(name)
    assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", section) for o in option.opts), \
        f"`recipe {name}` section does not name {'/'.join(option.opts)}"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([\w-]+):", MAKEFILE, re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)`", README))
    named |= {line.split()[1] for block in shell_blocks(README) for line in block if line.startswith("make ")}
    assert {"demo", "test"} <= named and named <= targets, named - targets
    assert "pytest" in make_rule("test")
    assert "recipe run recipes/tiny-demo.yaml" in make_rule("demo")


def make_rule(target: str) -> str:
    """The tab-indented commands of a Makefile target."""
    return re.search(rf"^{target}:.*\n((?:\t.*\n)+)", MAKEFILE, re.M).group(1)


def test_every_path_the_readme_names_exists():
    named = set(re.findall(r"`((?:recipecli|recipes|schema|tests|benchmarks)/[^`\s]*)`", README))
    named |= set(re.findall(r"\]\(([^)#:]+)\)", README))  # relative links
    missing = sorted(p for p in named if not glob.glob(str(ROOT / p.rstrip("/"))))
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_every_module_the_readme_runs_exists():
    for module in re.findall(r"python -m ([\w.]+)", README):
        assert importlib.util.find_spec(module), module
    for script in re.findall(r"python (\w+\.py)", README):
        assert (ROOT / script).is_file(), script


def test_readme_exit_codes_are_the_code():
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", README, re.M))
    assert {int(code) for code in table} == {int(code) for code in ExitCode}



def test_every_test_testing_md_names_exists():
    """TESTING.md maps each fault class to its test: a renamed or deleted test must not leave it
    pointing at nothing."""
    text = (ROOT / "TESTING.md").read_text(encoding="utf-8")
    named = re.findall(r"(tests/[\w/]+\.py)((?:(?:::|, ::)\w+(?:\[[^\]]*\])?)*)", text)
    assert len(named) > 100
    missing = []
    for file, names in named:
        path = ROOT / file
        source = path.read_text(encoding="utf-8") if path.is_file() else ""
        missing += [f"{file}::{n}" for n in re.findall(r"::(\w+)", names) or [""]
                    if not path.is_file() or (n and f"def {n}(" not in source)]
    assert not missing, missing
