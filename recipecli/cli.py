"""The `recipe` command: a thin click layer over the core.

Domain errors (RecipeError) become a message on stderr and the exit code they carry
(errors.ExitCode); nothing here knows how a recipe is checked, estimated or run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import ExitCode, RecipeError


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}


class Command(click.Command):
    """A command that turns domain errors into messages and exit codes, in one place.

    Every ``recipe`` subcommand is one, so a command run on its own (check_gpu.py runs
    ``gpu_command``) reports errors exactly as ``recipe`` does.
    """

    def __init__(self, *args, **kwargs):
        kwargs["context_settings"] = {**HELP_OPTIONS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecipeError as exc:
            click.echo(_said(exc), err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:  # before training starts (loading a model): nothing to save yet
            click.echo("interrupted", err=True)
            ctx.exit(int(ExitCode.INTERRUPTED))


def _said(exc: RecipeError) -> str:
    """A domain error as the user reads it: a located one starts with its place (file:line:col:),
    as compilers print them."""
    return str(exc) if exc.where else f"error: {exc}"


class _Group(click.Group):
    command_class = Command  # @main.command() makes a Command


@click.group(cls=_Group, context_settings=HELP_OPTIONS)
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
    from .report.validate import exit_code, validate_files, validate_json, validate_text

    results = validate_files(files)
    click.echo(json.dumps(validate_json(results), indent=2) if fmt == "json" else validate_text(results))
    sys.exit(exit_code(results))


@main.command()
@click.argument("file", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set training.learning_rate=1e-4 (repeatable).")
def show(file: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved recipe: extends merged, defaults filled.

    Example: recipe show recipes/mistral7b.yaml --set data.max_seq_length=512
    """
    from .report.show import resolved_yaml
    from .read.load import resolve

    click.echo(resolved_yaml(resolve(file, overrides)), nl=False)


@main.command()
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
def diff(first: str, second: str) -> None:
    """Compare two resolved recipes field by field.

    Example: recipe diff recipes/tinyllama-1.1b.yaml my-tinyllama.yaml
    """
    from .read.load import resolve
    from .report.show import changes, document

    from .read.load import to_recipe

    before, after = resolve(first), resolve(second)
    lines = changes(document(before), document(after))
    # Not a field, but what a change of processes (or micro-batch, accumulation) does to training.
    batches = [to_recipe(r).global_batch() if not r.abstract else None for r in (before, after)]
    if batches[0] != batches[1] and None not in batches:
        lines.append(f"~ global batch (micro-batch x accumulation x processes): {batches[0]} -> {batches[1]}")
    click.echo("\n".join(lines) if lines else "no differences")


@main.command("schema")
@click.option("--path", "print_path", is_flag=True, help="Print where the schema file is instead of its text.")
def schema_command(print_path: bool) -> None:
    """Print the recipe JSON Schema (or its path) for editors and tools.

    Example: recipe schema --path
    """
    from .shipped import SCHEMA_PATH

    click.echo(str(SCHEMA_PATH) if print_path else SCHEMA_PATH.read_text(encoding="utf-8"), nl=print_path)


_VRAM_HELP = "Memory of the card in GiB, as nvidia-smi shows it / 1024: 8 for an 8 GB card. bf16/FA2 are then not checked."
_GPU_HELP = ("A card by name, e.g. rtx2080, t4, 4090, 'rtx 3060 12gb', a100-80gb (memory and compute capability "
             "from the catalog; a model sold in several sizes needs the size).")


@main.command("fit-check")
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--vram", type=float, metavar="GIB", help=_VRAM_HELP)
@click.option("--gpu", "gpu_name", metavar="NAME", help=_GPU_HELP)
@click.option("--gpus", "num_gpus", type=click.IntRange(min=1),
              help="GPUs training together, each like the one given.  [default: the recipe's "
                   "distributed processes, else 1]")
@click.option("--parallelism", type=click.Choice(["ddp", "fsdp", "zero2", "zero3"]),
              help="How several GPUs share the work.  [default: ddp with --gpus > 1]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for tools.")
@click.option("-v", "--verbose", is_flag=True, help="Show every memory component with a bar and how it was counted.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), metavar="FILE",
              help="Save the recipe with the suggested change applied (one recipe that does not fit).")
def fit_check(files: tuple[str, ...], vram: float | None, gpu_name: str | None, num_gpus: int | None,
              parallelism: str | None, fmt: str, verbose: bool, write_to: str | None) -> None:
    """Estimate each recipe's peak GPU memory and say whether it fits the card.

    Without FILES, checks every shipped recipe; without --vram or --gpu, the first GPU of this
    machine. A recipe that does not fit gets the smallest change found that makes it fit.
    Exit code 0 when all fit (tight included), 3 when one does not, 1 for an invalid recipe.

    With several GPUs every figure is per GPU, under the strategy: the recipe's distributed
    section (strategy, nodes x processes_per_node) unless --gpus / --parallelism say otherwise.

    Example: recipe fit-check recipes/mistral7b.yaml --gpu rtx2080 -v
    """
    from pathlib import Path

    from .errors import UsageError
    from .shipped import shipped_recipes
    from .report.fit import (check_files, failure_text, fit_json, fitted_yaml, format_fit_check,
                             parallelism_for, target_gpu)
    from .units import gib

    if write_to is not None and len(files) != 1:
        raise UsageError("needs exactly one recipe file", "fit-check one recipe when writing its fitted copy",
                         where="--write")
    if write_to is not None and Path(write_to).exists():
        raise UsageError(f"{write_to} exists; it is never overwritten", "choose a new file name", where="--write")
    if num_gpus is not None or parallelism is not None:  # the command line over every recipe's own
        num_gpus = num_gpus or 1
        parallelism = parallelism_for(num_gpus, parallelism)
    gpu = target_gpu(vram, gpu_name)
    rows, failures = check_files(files or shipped_recipes(), gpu, num_gpus, parallelism, skip_abstract=not files)
    # Recipes sharing GPUs alike share a report, whose card line says "per GPU, N GPUs, <strategy>".
    groups: dict[tuple[int, str], list] = {}
    for row in rows:
        groups.setdefault((row.verdict.setup.num_gpus, row.verdict.setup.parallelism), []).append(row)
    if fmt == "json":
        ((n, how),) = groups if len(groups) == 1 else [(num_gpus, parallelism)]
        report = fit_json(rows, failures, gpu, n or 1, how or "none")
        if len(groups) > 1:
            report.update(num_gpus=None, parallelism=None)
        for entry, row in zip(report["recipes"], rows):  # each recipe's own, whatever the top says
            entry.update(num_gpus=row.verdict.setup.num_gpus, parallelism=row.verdict.setup.parallelism)
        click.echo(json.dumps(report, indent=2))
    else:
        if rows:
            click.echo("\n\n".join(format_fit_check(group, gpu, verbose, n, how)
                                    for (n, how), group in groups.items()))
        for failure in failures:
            click.echo(failure_text(failure), err=True)
    if write_to is not None and rows:
        (row,) = rows
        if row.suggestion is None:
            click.echo(f"nothing written to {write_to}: " + ("the recipe fits as it is" if row.verdict.fits
                                                           else "no change found that fits"), err=True)
        else:
            try:  # "x": created here or not at all, even if the file appeared since the check above
                with open(write_to, "x", encoding="utf-8") as out:
                    out.write(fitted_yaml(row, Path(write_to)))
            except OSError as e:
                raise UsageError(f"cannot write {write_to}: {e.strerror}",
                                 "name a new file in an existing, writable folder", where="--write") from e
            click.echo(f"wrote {write_to} (fits: {gib(row.suggestion.verdict.estimate.device_bytes)})", err=True)
    if failures:
        sys.exit(failures[0].error.exit_code)
    sys.exit(ExitCode.OK if all(r.verdict.fits for r in rows) else ExitCode.DOES_NOT_FIT)


@main.command()
@click.argument("file", type=click.Path())
@click.option("--steps", type=click.IntRange(min=1), default=2, show_default=True,
              help="Optimizer steps to trace; from the second on, the optimizer state is live throughout.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set method=lora (repeatable).")
@click.option("--vram", type=float, metavar="GIB", help="fit-check's estimate beside the trace for a card of this "
                                                        "memory.  [default: no card: fp32, as traced]")
@click.option("--gpu", "gpu_name", metavar="NAME", help="fit-check's estimate beside the trace for this card.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="cuda: measure the steps on this machine's GPU (weights made there, random); cpu: trace them "
                   "under FakeTensorMode; auto: cuda when torch sees a GPU.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for tools.")
def probe(file: str, steps: int, overrides: tuple[str, ...], vram: float | None, gpu_name: str | None,
          device: str, fmt: str) -> None:
    """Trace the recipe's training steps at full size on the CPU, without weights or a GPU.

    Under torch's FakeTensorMode: the exact allocated peak of this software stack (quantization,
    autocast, optimizer as the recipe says), reserved memory from a model of the CUDA caching
    allocator, by phase and by category, beside fit-check's estimate.

    With a GPU (--device cuda, or auto when torch sees one) the steps run there instead,
    measured per phase (allocated, reserved, nvidia-smi's figure, tokens/s) beside their trace.

    Example: recipe probe my-lora.yaml --format json
    """
    from .read.load import resolve, to_recipe
    from .report.fit import target_gpu
    from .report.probe import probe_json, probe_text
    from .train.measure import measure

    resolved = resolve(file, overrides)
    gpu = target_gpu(vram, gpu_name) if vram is not None or gpu_name is not None else None
    from .fit.verdict import distribution
    from .report.fit import scope_text

    scope = scope_text(*distribution(to_recipe(resolved)))  # the recipe's strategy, as fit-check takes it
    if scope:
        click.echo(f"note: estimates {scope}; the trace is one process's (ddp's, unsharded)", err=True)
    from .train.gpuprobe import choose_device  # imports torch: after the recipe is known to be good

    if choose_device(device) == "cuda":
        from .report.probe import measured_json, measured_text
        from .train.gpuprobe import DeviceOutOfMemory, measure_on_device

        try:
            measured = measure_on_device(to_recipe(resolved), steps, gpu)
        except DeviceOutOfMemory as exc:
            if device != "auto":
                raise
            click.echo(f"note: {exc.message}; traced on the CPU instead", err=True)
        else:
            click.echo(json.dumps(measured_json(measured, file), indent=2) if fmt == "json"
                       else measured_text(measured, file))
            return
    result = measure(to_recipe(resolved), steps, gpu)
    click.echo(json.dumps(probe_json(result, file), indent=2) if fmt == "json" else probe_text(result, file))


@main.command("gpu")
@click.option("--vram", type=float, metavar="GIB", help=_VRAM_HELP)
@click.option("--gpu", "gpu_name", metavar="NAME", help=_GPU_HELP + " Describes that card instead of this machine's.")
def gpu_command(vram: float | None, gpu_name: str | None) -> None:
    """Show this machine's GPUs: memory, bf16 and FlashAttention 2 support, which shipped
    recipes fit, and the largest model a standard QLoRA run fits.

    No GPU is not an error: it says so and exits 0.

    Example: recipe gpu        (or, for a card you do not have: recipe gpu --gpu t4)
    """
    from .fit import hardware
    from .report.fit import check_files, failure_text, target_gpu
    from .report.gpu import format_gpu, largest_qlora_model
    from .shipped import shipped_recipes

    if vram is not None or gpu_name is not None:
        gpus = (target_gpu(vram, gpu_name),)
    else:
        found = hardware.probe()
        if not found.gpus:
            click.echo(f"No GPU detected: {found.note}.\n"
                       "fit-check still works for any card: recipe fit-check --gpu rtx2080 (or --vram 8)")
            return
        gpus = found.gpus
    for gpu in gpus:
        rows, failures = check_files(shipped_recipes(), gpu, skip_abstract=True)
        click.echo(format_gpu(gpu, rows, largest_qlora_model(gpu)))
        for failure in failures:
            click.echo(f"  could not check {failure_text(failure)}", err=True)


_TRUST_HELP = ("Allow the Python code a model ships to run, for a recipe with model.trust_remote_code: true "
               "(refused without this flag, so a shared recipe never runs code silently).")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field for this run, e.g. --set training.learning_rate=1e-4 (repeatable); "
                   "checked like the file and recorded in the run folder.")
@click.option("--force", is_flag=True, help="Train even when the recipe does not fit the GPU, or without a GPU "
                                            "a model too large for the CPU.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder (one recipecli wrote, not a link).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the run folder.")
@click.option("--trust-remote-code", is_flag=True, help=_TRUST_HELP)
@click.option("--print-launch", is_flag=True, help="A distributed recipe: print the configs and each node's "
                                                   "accelerate launch command, and run nothing.")
@click.option("--slurm", is_flag=True, help="With --print-launch: print a SLURM batch script instead (sbatch it).")
def run(file: str, overrides: tuple[str, ...], force: bool, overwrite: bool, resume: bool,
        trust_remote_code: bool, print_launch: bool, slurm: bool) -> None:
    """Fine-tune: the recipe becomes a TRL SFTTrainer run in its run folder.

    Refuses, before loading anything (unless --force): a recipe that does not fit the detected
    GPU, printing the breakdown and the change that would fit; without a GPU, a model too large
    to train on the CPU. Refuses a run folder another run is using. Ctrl-C or SIGTERM saves a
    checkpoint first (exit 130); --resume goes on. Before training starts, they leave nothing.

    A recipe with a distributed strategy is launched through accelerate, one process per GPU
    (or per processes_per_node on the CPU), each of them `recipe run` again; --print-launch
    shows how, without running it.

    Example: recipe run recipes/tiny-demo.yaml --set training.max_steps=20
    """
    import os
    from pathlib import Path

    from .errors import UsageError
    from .read.load import load_recipe
    from .train import launch
    from .train.runfolder import RECIPE
    from .train.runner import run as train

    if slurm and not print_launch:
        raise UsageError("--slurm describes a launch: it goes with --print-launch", "add --print-launch", where="--slurm")
    recipe = load_recipe(file, overrides)
    rank = launch.in_rank() and recipe.strategy != "none"
    if print_launch:
        if recipe.strategy == "none":
            raise UsageError("nothing to launch: this recipe trains in one process",
                             "add a distributed section, e.g. --set distributed.strategy=ddp", where="--print-launch")
        from .fit import hardware

        planned = launch.plan(recipe, len(hardware.detect()), here=False, gpu_nodes=slurm)
        script = launch.slurm_script if slurm else launch.print_script
        flags = [f for f, on in (("--force", force), ("--overwrite", overwrite), ("--resume", resume),
                                 ("--trust-remote-code", trust_remote_code))
                 if on]
        click.echo(script(planned, recipe, Path(file).absolute(), [a for o in overrides for a in ("--set", o)] + flags),
                   nl=False)
        return
    if recipe.strategy != "none" and not rank:
        result = launch.start(file, overrides, force=force, overwrite=overwrite, resume=resume,
                              trust_remote_code=trust_remote_code)
        if result is None:  # a node other than 0: node 0 reports the run
            click.echo("done: this node's processes finished")
            return
    else:
        result = train(recipe, force=force, overwrite=overwrite, resume=resume, trust_remote_code=trust_remote_code)
    if rank and (os.environ.get("RANK", "0") != "0" or launch.LAUNCHED in os.environ):
        # One of the processes: the `recipe run` that launched them reports (exit 0, so accelerate
        # does not take a rank that stopped cleanly for a failure and stop the others mid-save).
        launch.leave(0)
    if result.interrupted:
        # The run folder's recipe.yaml holds the --set overrides too: resuming with it changes nothing.
        click.echo(f"interrupted at step {result.steps}; checkpoint {result.checkpoint}. "
                   f"Continue with: recipe run {result.run_dir / RECIPE} --resume", err=True)
        if rank:
            launch.leave(ExitCode.INTERRUPTED)
        sys.exit(ExitCode.INTERRUPTED)
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    click.echo(f"done: {result.steps} steps{loss}; run folder {result.run_dir}")
    if rank:  # rank 0 of a run accelerate launched by hand: the process group's teardown can hang
        launch.leave(0)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--trust-remote-code", is_flag=True, help=_TRUST_HELP)
def merge(run_dir: str, trust_remote_code: bool) -> None:
    """Merge a run's LoRA adapter into its base model and save it to RUN_DIR/merged.

    Example: recipe merge runs/tiny-demo
    """
    from pathlib import Path

    from .train.after import merge as merge_adapter

    click.echo(f"merged model saved to {merge_adapter(Path(run_dir), trust_remote_code=trust_remote_code)}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--prompt", required=True, help="What to ask, formatted as in training.")
@click.option("--input", "context", default="", help="alpaca data only: the Input section of the prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--trust-remote-code", is_flag=True, help=_TRUST_HELP)
def generate(run_dir: str, prompt: str, context: str, max_new_tokens: int, trust_remote_code: bool) -> None:
    """Answer a prompt with a trained run, formatting it exactly as the training data was.

    Example: recipe generate runs/tiny-demo --prompt "Reverse the words." --input "red green blue"
    """
    from pathlib import Path

    from .train.after import generate as answer

    click.echo(answer(Path(run_dir), prompt, max_new_tokens, input=context, trust_remote_code=trust_remote_code))


@main.command("data")
@click.argument("file", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. --set data.max_seq_length=256 (repeatable).")
@click.option("--show", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Print N training examples as formatted, with the tokens that carry the loss highlighted.")
@click.option("--plot", "plot_to", type=click.Path(dir_okay=False), metavar="PNG",
              help="Write the token-length histogram, with the max_seq_length cut-off marked, to this PNG file.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for tools.")
@click.option("--no-color", is_flag=True, help="Mark trained tokens with [[...]] instead of colour "
                                               "(the default when the output is not a terminal).")
@click.option("--trust-remote-code", is_flag=True, help=_TRUST_HELP)
def data_command(file: str, overrides: tuple[str, ...], show: int, plot_to: str | None, fmt: str, no_color: bool,
                 trust_remote_code: bool) -> None:
    """Show what the recipe's data becomes before anything trains, tokenized exactly as recipe run does.

    Per dataset and for the mix: records, token lengths against max_seq_length, truncation,
    dropped records, trained tokens, packing or padding, steps per epoch, duplicates and
    fingerprints, and warnings. Loads only the tokenizer, never the model's weights.

    Example: recipe data recipes/tiny-demo.yaml --show 2 --plot lengths.png
    """
    import os
    from pathlib import Path

    from .errors import UsageError
    from .read.load import load_recipe
    from .report.data import data_json, data_text
    from .train.datastats import collect, load_tokenizer, plot
    from .train.model import check_remote_code

    recipe = load_recipe(file, overrides)
    check_remote_code(recipe, trust_remote_code, f"recipe data {file}")
    stats = collect(recipe, load_tokenizer(recipe), show)
    if plot_to is not None:
        try:
            plot(Path(plot_to), stats)
        except OSError as e:
            raise UsageError(f"cannot write {plot_to}: {e.strerror}", "name a file in an existing, writable folder",
                             where="--plot") from e
    if fmt == "json":
        click.echo(json.dumps(data_json(stats), indent=2, ensure_ascii=False))
        return
    colour = not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    click.echo(data_text(stats, colour), color=colour)


def _convert_folder(src: str, output: str | None, lossy: bool, to_axolotl: bool, card) -> None:
    """`recipe convert FOLDER -o OUT`: every config under FOLDER, what became of each, a summary,
    and exit code 1 when any was not written."""
    from .convert.command import Converted, convert_folder
    from .convert.report import verdict_line
    from .errors import UsageError

    if output is None:
        raise UsageError(f"{src} is a folder: its configs convert into a folder", f"add -o OUT_FOLDER, e.g. "
                         f"recipe convert {src} {'--to' if to_axolotl else '--from'} axolotl -o converted", where="-o")
    written = failed = 0
    for _, done in convert_folder(src, output, lossy, to_axolotl):
        if not isinstance(done, Converted):
            failed += 1
            click.echo(_said(done), err=True)
            continue
        written += 1
        for message in done.messages:
            click.echo(message, err=True)
        click.echo(f"wrote {done.written}", err=True)
        if done.recipe is not None:
            click.echo(verdict_line(done.recipe, card), err=True)
    click.echo(f"{written} of {written + failed} converted into {output}"
               + (f"; {failed} not (each said above)" if failed else ""), err=True)
    if failed:
        sys.exit(ExitCode.INVALID)


@main.command()
@click.argument("src", type=click.Path())
@click.option("--from", "source_format", type=click.Choice(["axolotl"]),
              help="SRC is a config of this tool; it becomes a recipe.")
@click.option("--to", "target_format", type=click.Choice(["axolotl"]),
              help="SRC is a recipe (extends resolved first); it becomes a config of this tool.")
@click.option("-o", "--output", type=click.Path(), metavar="OUT",
              help="Write here (a new file, written whole; never over an existing one); for a folder SRC, the "
                   "folder its configs convert into.  [default: stdout]")
@click.option("--lossy", is_flag=True, help="Write even when keys have no counterpart: each dropped key, its "
                                            "value and line are listed in a comment block at the top.")
@click.option("--vram", type=float, metavar="GIB", help="A card of this memory for the fit-check verdict of a "
                                                       "converted recipe. " + _VRAM_HELP.split(": ", 1)[0] + ".")
@click.option("--gpu", "gpu_name", metavar="NAME", help="The card for the fit-check verdict of a converted "
                                                        "recipe.  [default: this machine's first GPU]")
def convert(src: str, source_format: str | None, target_format: str | None, output: str | None, lossy: bool,
            vram: float | None, gpu_name: str | None) -> None:
    """Convert an Axolotl config into a recipe, or a recipe into an Axolotl config.

    Every key is mapped or reported as SRC:line:col: key 'x': not converted: why; with any
    unmapped key nothing is written (exit 1) unless --lossy. A converted recipe is validated and
    gets fit-check's one-line verdict. Notes and verdict go to stderr, the file to OUT or stdout.
    SRC may be a folder: each config in it and its sub-folders converts into the folder -o names,
    at the same place; the others go on where one does not convert (exit 1).

    Example: recipe convert my-axolotl.yml --from axolotl -o my-recipe.yaml --gpu rtx2080
    """
    from .convert.command import from_axolotl_file, to_axolotl_file
    from .convert.report import verdict_line
    from .errors import UsageError
    from .report.fit import target_gpu

    if (source_format is None) == (target_format is None):
        raise UsageError("give --from axolotl (SRC is an Axolotl config) or --to axolotl (SRC is a recipe)",
                         "e.g. recipe convert config.yml --from axolotl -o recipe.yaml", where="--from/--to")
    for flag, value in (("--vram", vram), ("--gpu", gpu_name)):
        if target_format is not None and value is not None:
            raise UsageError(f"{flag} judges a converted recipe; with --to axolotl there is none",
                             f"fit-check the recipe itself: recipe fit-check {src} {flag} {value}", where=flag)
    # the card first: a wrong --gpu or --vram must stop the command before it writes anything
    card = target_gpu(vram, gpu_name) if vram is not None or gpu_name is not None else None
    if Path(src).is_dir():
        _convert_folder(src, output, lossy, target_format is not None, card)
        return
    if source_format is not None:
        done = from_axolotl_file(src, output, lossy)
    else:
        done = to_axolotl_file(src, output, lossy)
    for message in done.messages:
        click.echo(message, err=True)
    if done.written is None:
        click.echo(done.text, nl=False)
    else:
        click.echo(f"wrote {done.written}", err=True)
    if done.recipe is not None:
        click.echo(verdict_line(done.recipe, card), err=True)
