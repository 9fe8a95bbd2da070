"""Print what `recipe gpu` prints: this machine's GPUs, their bf16/FlashAttention 2 support,
which shipped recipes fit and the largest model a standard QLoRA run fits.

    python check_gpu.py             # same as: recipe gpu
    python check_gpu.py --gpu t4    # a card you do not have
"""
import sys

from recipecli.cli import gpu_command

if __name__ == "__main__":
    # The command itself, not `recipe gpu`: its usage line names this script, and its errors
    # become the same messages and exit codes (cli.Command).
    gpu_command.main(sys.argv[1:], prog_name="check_gpu.py")
