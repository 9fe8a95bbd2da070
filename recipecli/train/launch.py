"""Several processes for one recipe, launched by accelerate: never a launcher of our own.

    plan (processes, nodes, this node's rank) -> files (accelerate.yaml, deepspeed.json)
    -> command (`accelerate launch --config_file … -m recipecli run RECIPE …`, one per node)
    -> execute: write the files, run the command, turn Ctrl-C / SIGTERM into a checkpoint

`recipe run FILE` with a distributed strategy writes the files into the launch folder beside the
run folder (``.NAME.launch/``: the run folder itself is claimed only by rank 0, once the processes
have started) and runs the printed command; each process is again `recipe run`, which sees
torchrun's variables (``in_rank``) and trains. Rank 0 writes the same files into the run folder,
pointing at its own copies, so the folder alone launches the run again. ``--print-launch`` prints
the command of each node, ``--slurm`` a batch script, both after the files they need.

Nothing here imports torch; the callback that makes every rank stop at the same step imports it
inside.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NoReturn, Optional, Sequence

import yaml

from ..errors import Interrupted, RecipeError, UsageError
from ..read.recipe import Recipe
from ..units import GIB
from . import atomic, runfolder
from .runfolder import ACCELERATE_CONFIG, DEEPSPEED_CONFIG

ZERO_STAGE = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}
# Set by torchrun in every process it starts: a `recipe run` that sees them trains as one rank.
RANK_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE")
# Set for the processes `recipe run` launches: it reports the result, so rank 0 need not.
LAUNCHED = "RECIPECLI_LAUNCHED"


@dataclass(frozen=True)
class Launch:
    """A distributed run as accelerate is told to start it."""

    strategy: str  # ddp, fsdp, deepspeed_zero2, deepspeed_zero3
    nodes: int
    processes_per_node: int
    main_address: Optional[str]  # None on one node: this machine
    main_port: int
    cpu: bool  # no GPU: gloo over CPU processes (ddp only)

    @property
    def processes(self) -> int:
        return self.nodes * self.processes_per_node


def plan(recipe: Recipe, visible_gpus: int, here: bool = True, gpu_nodes: bool = False) -> Launch:
    """How the recipe's distributed section launches.

    Args:
        recipe: a recipe with a strategy other than none.
        visible_gpus: GPUs this machine shows (CUDA_VISIBLE_DEVICES respected); 0 trains on the CPU.
        here: the launch runs on this machine. False (--print-launch, --slurm) describes GPU
            machines even from one without GPUs (a login node), except ddp there, which this
            machine would run on its CPU.
        gpu_nodes: with here False, describe GPU machines for ddp too (a SLURM script).

    Raises:
        UsageError: no GPU and processes_per_node left out; a strategy accelerate cannot run on
            the CPU (fsdp and deepspeed need CUDA GPUs); more processes per node than GPUs.
    """
    dist = recipe.distributed
    where = recipe.locate(("distributed", "strategy"))
    if not here and visible_gpus == 0 and (dist.strategy != "ddp" or gpu_nodes):
        if dist.processes_per_node is None:
            raise UsageError("processes_per_node is left to the GPUs visible, and this machine has none",
                             "write distributed.processes_per_node: the GPUs of each node",
                             where=where, path="$.distributed.processes_per_node")
        return Launch(dist.strategy, dist.nodes, dist.processes_per_node, dist.main_address, dist.main_port, cpu=False)
    if visible_gpus == 0 and dist.strategy != "ddp":
        raise UsageError(f"{dist.strategy} needs CUDA GPUs and none is visible: on the CPU, accelerate runs ddp "
                         "(gloo) only", "use strategy: ddp to train on the CPU, or run on a machine with GPUs",
                         where=where, path="$.distributed.strategy")
    per_node = dist.processes_per_node
    if per_node is None:
        if visible_gpus == 0:
            raise UsageError("processes_per_node is left to the GPUs visible, and there is none",
                             "write distributed.processes_per_node (e.g. 2) to train with CPU processes",
                             where=where, path="$.distributed.processes_per_node")
        per_node = visible_gpus
    elif visible_gpus and per_node > visible_gpus:
        raise UsageError(f"processes_per_node {per_node} but this machine shows {visible_gpus} GPU(s)",
                         f"set processes_per_node to {visible_gpus} or less (one process per GPU), or leave it "
                         "out to use every visible GPU", where=recipe.locate(("distributed", "processes_per_node")),
                         path="$.distributed.processes_per_node")
    return Launch(dist.strategy, dist.nodes, per_node, dist.main_address, dist.main_port, cpu=visible_gpus == 0)


def node_rank(recipe: Recipe, environ: Mapping[str, str]) -> int:
    """This machine's node rank: the recipe's, else NODE_RANK, else SLURM_NODEID, else 0 on one node.

    Raises:
        UsageError: several nodes and nothing says which one this is, or a rank out of range.
    """
    dist = recipe.distributed
    if dist.node_rank is not None:
        return dist.node_rank
    for name in ("NODE_RANK", "SLURM_NODEID"):
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) >= dist.nodes:
                raise UsageError(f"{name}={value!r} is not a node rank of {dist.nodes} node(s)",
                                 f"set {name} to 0 … {dist.nodes - 1}", where=name)
            return int(value)
    if dist.nodes == 1:
        return 0
    raise UsageError(f"{dist.nodes} nodes, and nothing says which one this machine is",
                     "set NODE_RANK (SLURM sets SLURM_NODEID), or --set distributed.node_rank=K",
                     where=recipe.locate(("distributed", "nodes")), path="$.distributed.node_rank")


def files(launch: Launch, recipe: Recipe, folder: Path) -> dict[str, str]:
    """The generated configs, by file name, as they are written into ``folder``.

    accelerate.yaml is read by ``accelerate launch --config_file``; for ZeRO it names
    deepspeed.json in the same folder (absolute, so the launch works from any directory).
    """
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        # On the CPU, accelerate starts several processes only through torchrun's launcher, which
        # it picks for MULTI_GPU; the ranks then find no CUDA and join over gloo (use_cpu).
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(launch.strategy, "DEEPSPEED"),
        "downcast_bf16": "no",
        "gpu_ids": "all",
        "machine_rank": 0,  # each node passes its own: --machine_rank
        "main_training_function": "main",
        # The Trainer sets the precision the recipe chose (precision.choose) in every process.
        "mixed_precision": "no",
        "num_machines": launch.nodes,
        "num_processes": launch.processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": launch.cpu,
        "main_process_port": launch.main_port,
    }
    if launch.main_address is not None:
        config["main_process_ip"] = launch.main_address
    out = {}
    if launch.strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            # Wraps each decoder layer (the model's _no_split_modules), the unit FSDP gathers at once.
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": bool(recipe.distributed.fsdp_offload),
            "fsdp_reshard_after_forward": True,
            # Whole adapter and optimizer files on rank 0: what checkpoints.py checks and peft loads.
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False,  # the Trainer's gradient_checkpointing does it
        }
    elif launch.strategy in ZERO_STAGE:
        stage = ZERO_STAGE[launch.strategy]
        config["deepspeed_config"] = {"deepspeed_config_file": str(folder / DEEPSPEED_CONFIG),
                                      "zero3_init_flag": False}
        out[DEEPSPEED_CONFIG] = json.dumps(deepspeed_config(stage, recipe), indent=2) + "\n"
    out[ACCELERATE_CONFIG] = yaml.safe_dump(config, sort_keys=False)
    return out


def deepspeed_config(stage: int, recipe: Recipe) -> dict:
    """DeepSpeed's JSON for a ZeRO stage; "auto" values are filled by the Trainer from the recipe
    (batch sizes, accumulation, clipping, precision, learning rate), so they cannot disagree."""
    offload = recipe.distributed.zero_offload
    zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                  "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     # Whole weights in the saved adapter/model, not DeepSpeed's shards only.
                     "stage3_gather_16bit_weights_on_model_save": True})
    if offload in ("optimizer", "optimizer_and_parameters"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload in ("parameters", "optimizer_and_parameters"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if offload in ("optimizer", "optimizer_and_parameters"):
        # An offloaded step runs DeepSpeed's CPU Adam (rules.py requires adamw_torch for it).
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    return config


def launch_folder(run_dir: Path) -> Path:
    """Where `recipe run` writes the configs it launches with: beside the run folder, which only
    rank 0 takes (claim.py), once the processes run."""
    return run_dir.parent / f".{run_dir.name}.launch"


def command(folder: Path, recipe_file: Path, run_args: Sequence[str], rank: int | str,
            main_address: Optional[str] = None) -> list[str]:
    """The command one node runs: accelerate with the config in ``folder``, each process `recipe run`.

    Args:
        folder: where accelerate.yaml is.
        recipe_file: the recipe every process loads.
        run_args: `recipe run` options passed on (--set …, --resume, --overwrite, --force, …).
        rank: this node's rank (or a shell expression such as $SLURM_NODEID).
        main_address: the main node, over the config's (a shell expression in a SLURM script).
    """
    main = ["--main_process_ip", main_address] if main_address is not None else []
    return ["accelerate", "launch", "--config_file", str(folder / ACCELERATE_CONFIG), "--machine_rank", str(rank),
            *main, "-m", "recipecli", "run", str(recipe_file), *run_args]


def _quoted(argv: Sequence[str], keep: str = "") -> str:
    return " ".join(a if a == keep else shlex.quote(a) for a in argv)


def _writing(written: Mapping[str, str], folder: Path) -> list[str]:
    lines = [f"mkdir -p {shlex.quote(str(folder))}"]
    for name, text in written.items():
        lines += [f"cat > {shlex.quote(str(folder / name))} <<'RECIPE_EOF'", text.rstrip("\n"), "RECIPE_EOF"]
    return lines


def summary(launch: Launch, recipe: Recipe) -> str:
    """One line: processes, strategy and the global batch they make."""
    t = recipe.training
    return (f"{launch.nodes} node(s) x {launch.processes_per_node} process(es), {launch.strategy}"
            f"{' on the CPU (gloo)' if launch.cpu else ''}; global batch {recipe.global_batch(launch.processes)} = "
            f"micro-batch {t.micro_batch_size} x accumulation {t.gradient_accumulation_steps} x "
            f"{launch.processes} processes")


def print_script(launch: Launch, recipe: Recipe, recipe_file: Path, run_args: Sequence[str]) -> str:
    """What `recipe run FILE --print-launch` prints: the configs, then each node's command."""
    folder = launch_folder(recipe.output_dir)
    lines = [f"# {summary(launch, recipe)}",
             "# the configs (the same on every node; recipe run writes them itself):"]
    lines += _writing(files(launch, recipe, folder), folder)
    for rank in range(launch.nodes):
        where = "" if launch.nodes == 1 else f" ({launch.main_address} is node 0)" if rank == 0 else ""
        lines += [f"# node {rank} of {launch.nodes}{where}", _quoted(command(folder, recipe_file, run_args, rank))]
    return "\n".join(lines) + "\n"


def slurm_script(launch: Launch, recipe: Recipe, recipe_file: Path, run_args: Sequence[str]) -> str:
    """What `recipe run FILE --print-launch --slurm` prints: a batch script, one task per node.

    SLURM picks the machines, so on several nodes the main address is the job's first node (an
    override of the recipe's, which resuming allows); each node runs node.sh, which passes its
    SLURM_NODEID as accelerate's machine rank. The launch folder must be on a shared filesystem.
    """
    folder = launch_folder(recipe.output_dir)
    several = launch.nodes > 1
    args = list(run_args) + (["--set", "distributed.main_address=$MAIN_ADDRESS"] if several else [])
    node = _quoted(command(folder, recipe_file, args, "$SLURM_NODEID", "$MAIN_ADDRESS" if several else None),
                   keep="$SLURM_NODEID")
    node = node.replace(shlex.quote("$MAIN_ADDRESS"), '"$MAIN_ADDRESS"').replace(
        shlex.quote("distributed.main_address=$MAIN_ADDRESS"), '"distributed.main_address=$MAIN_ADDRESS"')
    lines = ["#!/bin/bash", f"#SBATCH --job-name={recipe.name}", f"#SBATCH --nodes={launch.nodes}",
             "#SBATCH --ntasks-per-node=1",
             "" if launch.cpu else f"#SBATCH --gpus-per-node={launch.processes_per_node}",
             f"#SBATCH --output={recipe.output_dir.parent}/%x-%j.out",
             f"# {summary(launch, recipe)}", "set -euo pipefail"]
    if launch.nodes > 1:
        lines.append('export MAIN_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
    lines += _writing({**files(launch, recipe, folder), "node.sh": f"exec {node}\n"}, folder)
    lines += [f"srun --kill-on-bad-exit=1 bash {shlex.quote(str(folder / 'node.sh'))}"]
    return "\n".join(line for line in lines if line) + "\n"


def start(file: str, overrides: Sequence[str], *, force: bool, overwrite: bool, resume: bool,
          trust_remote_code: bool, gpus: Optional[Sequence] = None):
    """`recipe run FILE` for a distributed recipe: every check that can refuse, then this node's launch.

    Args:
        file, overrides: the recipe and its --set values, passed on to every process.
        force, overwrite, resume, trust_remote_code: `recipe run`'s flags, passed on likewise.
        gpus: this machine's GPUs; None detects them.

    Returns:
        The run's result as rank 0 recorded it in run.yaml (a RunResult), or None on a node
        other than 0, or when the processes ended without one.

    Raises:
        UsageError, DoesNotFit, InvalidRecipe: what the run would refuse, before any process
            starts (node 0 checks the run folder as rank 0 will take it).
        RecipeError: the processes failed (their errors are printed above).
    """
    from ..fit import hardware
    from ..read.load import load_recipe
    from . import claim
    from .model import check_remote_code, training_gpu
    from .preflight import refuse_unless_fits

    recipe = load_recipe(file, overrides)
    check_remote_code(recipe, trust_remote_code, f"recipe run {recipe.source}")
    gpus = hardware.detect() if gpus is None else tuple(gpus)
    visible = len(gpus) if training_gpu(gpus) is not None else 0
    launch = plan(recipe, visible)
    rank = node_rank(recipe, os.environ)
    overrides = list(overrides)
    if recipe.distributed.processes_per_node is None:
        # Every process, and the run folder's recipe.yaml, see the count this launch resolved.
        overrides.append(f"distributed.processes_per_node={launch.processes_per_node}")
        recipe = load_recipe(file, overrides)
    refuse_unless_fits(recipe, gpus[0] if visible else None, force)
    if rank == 0:  # rank 0 will take the run folder: whatever it would refuse is refused now
        with claim.claimed(recipe.output_dir, recipe, overwrite=overwrite, resume=resume) as taken:
            taken.undo()
    flags = [flag for flag, on in (("--force", force), ("--overwrite", overwrite), ("--resume", resume),
                                   ("--trust-remote-code", trust_remote_code)) if on]
    run_args = [arg for value in overrides for arg in ("--set", value)] + flags
    began = runfolder.now()
    status, signalled = execute(launch, recipe, Path(file).absolute(), run_args, rank)
    result = _recorded(recipe, began) if rank == 0 else None
    if result is None and signalled:
        raise Interrupted("interrupted before training started; nothing was saved")
    if result is None and status != 0:
        raise RecipeError(f"the training processes failed (accelerate exited with status {status})",
                          "the first error of a process is printed above; fix it and run again "
                          "(--resume when a checkpoint was saved)")
    return result


def _recorded(recipe: Recipe, began: str):
    """The result rank 0 wrote into run.yaml during this launch; None when it wrote none."""
    from .runner import RunResult

    run_dir = recipe.output_dir
    try:
        info = yaml.safe_load((run_dir / runfolder.RUN).read_text(encoding="utf-8"))
        result = info["result"]
        if result["finished"] < began:  # an earlier run's (ISO times in UTC compare as text)
            return None
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    saved = run_dir / (runfolder.FULL_MODEL if recipe.method == "full" else runfolder.ADAPTER)
    gib = lambda v: None if v is None else int(v * GIB)  # noqa: E731
    from . import checkpoints

    return RunResult(run_dir, None if result["interrupted"] else saved, checkpoints.last_complete(run_dir),
                     result["steps"], result["final_loss"], result["eval_loss"], result["interrupted"],
                     gib(result.get("estimated_reserved_gib")), gib(result.get("measured_reserved_gib")))


def in_rank(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a process torchrun started (accelerate launch): train as one rank of the run."""
    return all(name in environ for name in RANK_VARIABLES)


def rank_launch(recipe: Recipe, environ: Mapping[str, str], cuda: bool) -> Launch:
    """The launch a rank belongs to, read back from torchrun's variables (for the run folder)."""
    world = int(environ["WORLD_SIZE"])
    per_node = int(environ.get("LOCAL_WORLD_SIZE", world))
    dist = recipe.distributed
    return Launch(recipe.strategy, max(world // per_node, 1), per_node, dist.main_address, dist.main_port, cpu=not cuda)


def execute(launch: Launch, recipe: Recipe, recipe_file: Path, run_args: Sequence[str],
            rank: int) -> tuple[int, bool]:
    """Write the configs and run this node's command until every process has ended.

    Ctrl-C and SIGTERM are passed to the training processes as one SIGTERM each (again: at once),
    which checkpoint at the same step and exit; accelerate's own handler would give them 30 s.

    Returns:
        accelerate's exit status, and whether a signal was passed on.
    """
    folder = launch_folder(recipe.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files(launch, recipe, folder).items():
        atomic.write(folder / name, text)
    argv = command(folder, recipe_file, run_args, rank)
    accelerate = Path(sys.executable).with_name("accelerate")
    argv[0] = str(accelerate) if accelerate.exists() else "accelerate"
    print(f"launching: {summary(launch, recipe)}\n  {_quoted(command(folder, recipe_file, run_args, rank))}",
          file=sys.stderr, flush=True)
    # Its own session: the terminal's Ctrl-C reaches this process only, which forwards it once.
    process = subprocess.Popen(argv, start_new_session=True, env={**os.environ, LAUNCHED: "1"})
    signalled = []

    def forward(signum, frame):
        import psutil  # accelerate's dependency

        signalled.append(signum)
        try:
            workers = psutil.Process(process.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return
        for worker in workers:
            try:
                worker.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait(), bool(signalled)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def agreement(stop, decision):
    """A trainer callback that stops every rank at the same step once any rank got a signal.

    torchrun's ranks each get SIGTERM on their own, and may be a step apart; stopping at
    different steps would leave one rank saving while another waits in the next all-reduce.
    One MAX all-reduce per optimizer step of what the signal handler had set (``stop``) by then
    decides, on every rank alike, what the recorder acts on (``decision``): a signal arriving
    during the step's callbacks counts at the next step, never at this one on one rank only.
    """
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class StopTogether(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not (dist.is_available() and dist.is_initialized()):  # one process: nothing to agree on
                decision.signal_name = stop.signal_name
                return
            here = stop.signal_name  # once: the handler may set it at any moment
            flag = torch.tensor([1 if here is not None else 0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                decision.signal_name = here or "SIGTERM"  # another rank's, when not this one's

    return StopTogether()


def end_of_rank() -> None:
    """Wait for every rank. The process group stays until the process leaves (``leave``): tearing
    gloo's down from Python can deadlock, its worker thread waiting for the GIL that the thread
    joining it holds (seen under load: one rank hung at exit, so did the launcher)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave(code: int = 0) -> NoReturn:
    """End a rank's process now, its output flushed: nothing is left to do after ``end_of_rank``,
    and the interpreter's teardown of torch's process group is what can hang (see there)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
