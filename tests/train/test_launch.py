"""Distributed runs through accelerate: the plan, the generated configs (read back by accelerate's
own config loader and launch parser, for every strategy), the printed launch and SLURM scripts,
and two real processes training the tiny model over gloo on the CPU (slow).

Nothing of accelerate, torch or the training stack is mocked; the one stand-in is an
`accelerate` on PATH that prints its arguments, for checking that a printed script runs as shell.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from recipecli.cli import main
from recipecli.errors import UsageError
from recipecli.read.load import load_recipe
from recipecli.train import launch, runfolder

from ..conftest import RECIPES

DDP_DEMO = RECIPES / "tiny-demo-ddp.yaml"
STRATEGIES = ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


def _recipe(make_recipe, tmp_path, distributed: dict, method: str = "lora", **training):
    path = make_recipe({"method": method, "distributed": distributed, "training": training or None,
                        "output": {"dir": str(tmp_path / "run")}})
    return load_recipe(path)


def _accelerate_args(argv: list[str]):
    """What accelerate itself makes of a launch command: its parser, then its own validation."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    assert argv[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(argv[2:])
    return _validate_launch_command(args)[0]


# --- the plan ------------------------------------------------------------------------------------


def test_without_gpus_only_ddp_with_a_written_count_launches(make_recipe, tmp_path):
    for strategy in ("fsdp", "deepspeed_zero2"):
        with pytest.raises(UsageError, match="needs CUDA GPUs and none is visible") as refused:
            launch.plan(_recipe(make_recipe, tmp_path, {"strategy": strategy, "processes_per_node": 2}), 0)
        assert refused.value.path == "$.distributed.strategy" and "use strategy: ddp" in refused.value.hint
    with pytest.raises(UsageError, match="processes_per_node is left to the GPUs visible, and there is none"):
        launch.plan(_recipe(make_recipe, tmp_path, {"strategy": "ddp"}), 0)
    planned = launch.plan(_recipe(make_recipe, tmp_path, {"strategy": "ddp", "processes_per_node": 2}), 0)
    assert (planned.processes, planned.cpu) == (2, True)


def test_processes_per_node_defaults_to_the_visible_gpus_and_may_not_exceed_them(make_recipe, tmp_path):
    assert launch.plan(_recipe(make_recipe, tmp_path, {"strategy": "fsdp"}), 4).processes_per_node == 4
    with pytest.raises(UsageError, match="processes_per_node 8 but this machine shows 4 GPU"):
        launch.plan(_recipe(make_recipe, tmp_path, {"strategy": "ddp", "processes_per_node": 8}), 4)


@pytest.mark.parametrize("environ, rank", [({}, None), ({"NODE_RANK": "1"}, 1), ({"SLURM_NODEID": "1"}, 1),
                                           ({"NODE_RANK": "0", "SLURM_NODEID": "1"}, 0)])
def test_node_rank_comes_from_the_recipe_then_the_environment(make_recipe, tmp_path, environ, rank):
    recipe = _recipe(make_recipe, tmp_path, {"strategy": "ddp", "nodes": 2, "main_address": "10.0.0.1"})
    if rank is None:
        with pytest.raises(UsageError, match="2 nodes, and nothing says which one this machine is"):
            launch.node_rank(recipe, environ)
    else:
        assert launch.node_rank(recipe, environ) == rank


@pytest.mark.parametrize("value", ["2", "-1", "one", "1; rm -rf /"])
def test_a_node_rank_variable_out_of_range_is_refused(make_recipe, tmp_path, value):
    recipe = _recipe(make_recipe, tmp_path, {"strategy": "ddp", "nodes": 2, "main_address": "10.0.0.1"})
    with pytest.raises(UsageError, match="is not a node rank of 2 node"):
        launch.node_rank(recipe, {"NODE_RANK": value})


# --- the generated configs, read back by accelerate ---------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("nodes", [1, 2])
def test_generated_configs_mean_to_accelerate_what_the_recipe_says(make_recipe, tmp_path, strategy, nodes):
    from accelerate.commands.config.config_args import ClusterConfig

    dist = {"strategy": strategy, "processes_per_node": 4, "nodes": nodes}
    if nodes > 1:
        dist["main_address"] = "10.0.0.1"
    recipe = _recipe(make_recipe, tmp_path, dist)
    planned = launch.plan(recipe, 4)
    folder = tmp_path / "launch"
    folder.mkdir()
    for name, text in launch.files(planned, recipe, folder).items():
        (folder / name).write_text(text)
    # accelerate's loader refuses unknown keys: a config it would not read fails here.
    config = ClusterConfig.from_yaml_file(str(folder / runfolder.ACCELERATE_CONFIG))
    assert (config.num_processes, config.num_machines, config.main_process_port) == (4 * nodes, nodes, 29500)
    args = _accelerate_args(launch.command(folder, tmp_path / "r.yaml", ["--resume"], nodes - 1))
    assert args.num_processes == 4 * nodes and args.machine_rank == nodes - 1
    assert args.training_script == "recipecli" and args.module and args.training_script_args[-1] == "--resume"
    assert (args.main_process_ip == "10.0.0.1") == (nodes > 1)
    assert args.use_fsdp == (strategy == "fsdp") and args.use_deepspeed == strategy.startswith("deepspeed")
    assert args.multi_gpu == (strategy == "ddp")
    if strategy == "fsdp":
        assert (str(args.fsdp_version), args.fsdp_auto_wrap_policy) == ("2", "TRANSFORMER_BASED_WRAP")
        assert args.fsdp_offload_params is False and args.fsdp_state_dict_type == "FULL_STATE_DICT"
    if strategy.startswith("deepspeed"):
        ds = json.loads((folder / runfolder.DEEPSPEED_CONFIG).read_text())
        assert args.deepspeed_config_file == str(folder / runfolder.DEEPSPEED_CONFIG)
        assert ds["zero_optimization"]["stage"] == launch.ZERO_STAGE[strategy]
        # The Trainer fills these from the recipe, so DeepSpeed and the recipe cannot disagree.
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    else:
        assert not (folder / runfolder.DEEPSPEED_CONFIG).exists()


@pytest.mark.parametrize("dist, offloaded", [
    ({"strategy": "fsdp", "fsdp_offload": True}, {"fsdp_offload_params": True}),
    ({"strategy": "deepspeed_zero2", "zero_offload": "optimizer"}, {"offload_optimizer"}),
    ({"strategy": "deepspeed_zero3", "zero_offload": "optimizer_and_parameters"}, {"offload_optimizer", "offload_param"}),
    ({"strategy": "deepspeed_zero3", "zero_offload": "parameters"}, {"offload_param"}),
])
def test_offload_reaches_the_generated_config(make_recipe, tmp_path, dist, offloaded):
    recipe = _recipe(make_recipe, tmp_path, {**dist, "processes_per_node": 2})
    written = launch.files(launch.plan(recipe, 2), recipe, tmp_path)
    if dist["strategy"] == "fsdp":
        assert yaml.safe_load(written[runfolder.ACCELERATE_CONFIG])["fsdp_config"]["fsdp_offload_params"] is True
    else:
        ds = json.loads(written[runfolder.DEEPSPEED_CONFIG])
        assert {k for k in ds["zero_optimization"] if k.startswith("offload")} == offloaded
        # DeepSpeed's CPU Adam runs an offloaded step; with the parameters alone the recipe's optimizer runs on the GPU
        assert ds.get("optimizer", {}).get("type") == ("AdamW" if "offload_optimizer" in offloaded else None)


@pytest.mark.parametrize("strategy", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_accepts_its_generated_zero_section(make_recipe, tmp_path, strategy):
    """Only where the deepspeed extra is installed (pip install recipecli[deepspeed])."""
    zero_config = pytest.importorskip("deepspeed.runtime.zero.config")
    recipe = _recipe(make_recipe, tmp_path, {"strategy": strategy, "processes_per_node": 2,
                                             "zero_offload": "optimizer"})
    ds = json.loads(launch.files(launch.plan(recipe, 2), recipe, tmp_path)[runfolder.DEEPSPEED_CONFIG])
    zero = {k: v for k, v in ds["zero_optimization"].items() if v != "auto"}
    assert zero_config.DeepSpeedZeroConfig(**zero).stage == launch.ZERO_STAGE[strategy]


# --- printed launches ------------------------------------------------------------------------------


def _fake_accelerate(tmp_path) -> dict:
    """An `accelerate` that prints its arguments one per line, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "accelerate"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_print_launch_is_a_script_that_writes_the_configs_and_runs_each_node(make_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = make_recipe({"method": "lora", "output": {"dir": "runs/two"},
                        "distributed": {"strategy": "deepspeed_zero2", "processes_per_node": 4, "nodes": 2,
                                        "main_address": "10.0.0.1"}})
    out = CliRunner().invoke(main, ["run", str(path), "--print-launch", "--set", "training.max_steps=7"])
    assert out.exit_code == 0, out.output
    assert "# 2 node(s) x 4 process(es), deepspeed_zero2; global batch 8 = micro-batch 1 x accumulation 1 x 8" \
        in out.output
    commands = [line for line in out.output.splitlines() if line.startswith("accelerate launch")]
    assert len(commands) == 2 and not (tmp_path / "runs").exists()  # printed, nothing written or run
    env = _fake_accelerate(tmp_path)
    for rank, line in enumerate(commands):
        done = subprocess.run(["bash", "-c", out.output.split("# node 0")[0] + line], env=env,
                              capture_output=True, text=True, check=True)
        argv = ["accelerate", *done.stdout.splitlines()]
        args = _accelerate_args(argv)  # the configs the script wrote are there, and accelerate reads them
        assert args.machine_rank == rank and args.num_processes == 8 and args.use_deepspeed
        assert argv[argv.index("run") + 1:] == [str(path), "--set", "training.max_steps=7"]


def test_print_launch_of_a_recipe_without_a_strategy_is_a_usage_error(make_recipe):
    out = CliRunner().invoke(main, ["run", str(make_recipe()), "--print-launch"])
    assert out.exit_code == 2 and "nothing to launch: this recipe trains in one process" in out.output
    out = CliRunner().invoke(main, ["run", str(make_recipe()), "--slurm"])
    assert out.exit_code == 2 and "--slurm: --slurm describes a launch" in out.output


def test_slurm_script_passes_each_node_its_rank_and_the_first_node_as_main(make_recipe, tmp_path):
    path = make_recipe({"method": "lora", "output": {"dir": str(tmp_path / "runs" / "s")},
                        "distributed": {"strategy": "fsdp", "processes_per_node": 8, "nodes": 4,
                                        "main_address": "login1"}})
    out = CliRunner().invoke(main, ["run", str(path), "--print-launch", "--slurm"])
    assert out.exit_code == 0, out.output
    script = out.output
    assert script.startswith("#!/bin/bash\n") and "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid shell
    # Run the script's own lines up to srun (scontrol stands in for the allocation), then node.sh
    # as srun would on node 2: the rank and main address are expanded there, not in the batch script.
    head = script.split("srun ")[0].replace('$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)', "gpu-a")
    env = _fake_accelerate(tmp_path)
    subprocess.run(["bash", "-c", head], env=env, check=True)
    node_sh = launch.launch_folder(tmp_path / "runs" / "s") / "node.sh"
    done = subprocess.run(["bash", str(node_sh)], env={**env, "SLURM_NODEID": "2", "MAIN_ADDRESS": "gpu-a"},
                          capture_output=True, text=True, check=True)
    args = _accelerate_args(["accelerate", *done.stdout.splitlines()])
    assert (args.machine_rank, args.main_process_ip, args.num_processes, args.use_fsdp) == (2, "gpu-a", 32, True)
    assert args.training_script_args[-2:] == ["--set", "distributed.main_address=gpu-a"]


# --- two processes on the CPU ------------------------------------------------------------------


def _recipe_cli(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "recipecli", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / runfolder.METRICS).read_text().splitlines()]


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tmp_path):
    steps = ["--set", "training.max_steps=20"]
    _recipe_cli(str(RECIPES / "tiny-demo.yaml"), *steps, "--set", "output.dir=runs/one", cwd=tmp_path)
    done = _recipe_cli(str(DDP_DEMO), *steps, "--set", "output.dir=runs/two", cwd=tmp_path)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert "ddp on the CPU (gloo); global batch 8 = micro-batch 4 x accumulation 1 x 2 processes" in done.stderr
    assert done.stdout.count("done: 20 steps") == 1  # the launching `recipe run` reports, not every rank
    # One run folder (beside it, the launch folder), one adapter, each log line once.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".two.launch", "one", "two"]
    assert (two / "adapter" / "adapter_model.safetensors").is_file()
    logged = [r["step"] for r in _metrics(two) if "loss" in r]
    assert logged == [10, 20]
    loss_one, loss_two = (_metrics(d)[-2]["loss"] for d in (one, two))
    assert abs(loss_two - loss_one) <= 0.02 * loss_one, (loss_one, loss_two)
    run = yaml.safe_load((two / runfolder.RUN).read_text())
    assert run["global_batch"] == {"sequences": 8, "micro_batch_size": 4, "gradient_accumulation_steps": 1,
                                   "processes": 2}
    assert run["result"]["steps"] == 20
    # Each rank's part of the checkpoint is in the one checkpoint folder.
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (two / "checkpoint-20").iterdir()}
    # The folder launches the run again by itself: its config names nothing outside it.
    config = yaml.safe_load((two / runfolder.ACCELERATE_CONFIG).read_text())
    assert (config["num_processes"], config["distributed_type"], config["use_cpu"]) == (2, "MULTI_GPU", True)


@pytest.mark.slow
def test_sigterm_on_the_launcher_checkpoints_every_rank_and_resume_finishes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "runs" / "ddp"
    args = [sys.executable, "-m", "recipecli", "run", str(DDP_DEMO), "--set", "output.dir=runs/ddp",
            "--set", "training.max_steps=400", "--set", "training.logging_steps=1"]
    launcher = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / runfolder.METRICS).exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 130, err[-3000:]
    assert "interrupted at step" in err and "--resume" in err
    (checkpoint,) = run_dir.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 0 < step < 400 and {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    assert not (run_dir / "adapter").exists()
    resumed = _recipe_cli(str(run_dir / runfolder.RECIPE), "--resume", cwd=tmp_path)
    assert "done: 400 steps" in resumed.stdout
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    steps = [r["step"] for r in _metrics(run_dir) if "loss" in r]
    assert steps == sorted(set(steps))  # each step logged once, the resumed run going on from the checkpoint
