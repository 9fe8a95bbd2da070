#!/usr/bin/env bash
# benchmarks/gpu_probe.py on a GPU machine, from a fresh checkout: Python set up, then the run.
#
#   benchmarks/gpu_probe.sh fetch [NAME==VERSION...]
#       Where PyPI is reachable (a developer's machine): download the wheels a lent GPU machine
#       lacks into .whl/ (ignored by git through .git/info/exclude), for its Python 3.12 on x86-64,
#       at the versions this checkout's .venv runs, plus any named. About 17 MB; bitsandbytes (for --shipped) adds 43 MB.
#   benchmarks/gpu_probe.sh [gpu_probe.py options]
#       On the GPU machine. Results: $OUT/benchmarks/gpu_probe.json and gpu_probe.log beside it.
#   benchmarks/gpu_probe.sh run [gpu_run.py options]
#       The same set-up, then benchmarks/gpu_run.py (`recipe run` end to end): gpu_run.json, gpu_run.log.
#
# Why not `make install`: the Makefile pins torch==2.13.0, which on PyPI for Linux x86-64 is the
# CUDA build (several GB with its nvidia-* wheels). A lent GPU machine reaches no registry, and
# carrying that torch is far over what travels with the tree (64 MiB), so there the image's own
# python3 is used: it has a CUDA torch (2.11 when last seen; gpu_probe.json records the versions
# that ran), transformers, peft, accelerate, click, PyYAML and nvidia-ml-py. What it lacks (trl,
# datasets, jsonschema, ...) comes as wheels from .whl/, installed into a folder put first on
# PYTHONPATH, so the carried transformers/peft (this checkout's versions) win over the image's.
# Where there is a GPU, no Python with a CUDA torch and PyPI is reachable, .venv-gpu is made from it.
# With --device cpu the project's own .venv runs (made by make install when missing): the tests.
#
# From a session with a lent machine (one call, well inside its 10-minute limit):
#   run(command="bash benchmarks/gpu_probe.sh", carry=[".whl"], timeout_s=540)
# The Python part keeps to --budget-s (380 s); setting up takes well under a minute: about 7 in all.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = fetch ]; then
    shift
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    pins=$(.venv/bin/python - <<'EOF'
from importlib.metadata import version
# regex and fsspec: transformers and datasets bound their versions, the image's may be outside
names = ("transformers", "trl", "peft", "datasets", "dill", "multiprocess", "jsonschema",
         "jsonschema-specifications", "referencing", "rpds-py", "regex", "fsspec")
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
    # shellcheck disable=SC2086  # one word per pin
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pins "$@"
    du -sh .whl
    exit 0
fi

script=gpu_probe
if [ "${1:-}" = run ]; then
    shift
    script=gpu_run
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export OUT="${OUT:-$PWD/runs/$script}"
mkdir -p "$OUT/benchmarks"
log="$OUT/benchmarks/$script.log"

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

py=""
case " $* " in
    *" --device cpu "*|*" --dry-run "*)
        [ -x .venv/bin/python ] || make install
        py=.venv/bin/python ;;
    *)
        for candidate in ${PYTHON:-} python3 .venv/bin/python .venv-gpu/bin/python; do
            if command -v "$candidate" >/dev/null && has_cuda "$candidate"; then py=$candidate; break; fi
        done
        # a GPU but no CUDA torch: only then is the multi-GB CUDA build worth fetching (needs PyPI)
        if [ -z "$py" ] && command -v nvidia-smi >/dev/null && python3 -m venv .venv-gpu \
                && .venv-gpu/bin/pip install -q torch==2.13.0 && .venv-gpu/bin/pip install -q -e . \
                && has_cuda .venv-gpu/bin/python; then
            py=.venv-gpu/bin/python
        fi
        if [ -z "$py" ]; then
            echo "gpu_probe.sh: no Python here has a torch that sees a CUDA GPU, and none could be installed" >&2
            exit 2
        fi ;;
esac

if [ "$py" = python3 ] && compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/gpu_probe_site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    echo "python: $(command -v "$py")"
    "$py" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "huggingface_hub", "pyarrow",
             "jsonschema", "nvidia-ml-py", "bitsandbytes"):
    try:
        print(f"  {name} {version(name)}")
    except PackageNotFoundError:
        print(f"  {name} missing")
EOF
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
} 2>&1 | tee "$log"

# every import the run needs, before any GPU time is spent on it
if ! "$py" -c 'import recipecli.train.gpuprobe, recipecli.train.measure, recipecli.train.runner, trl.trainer.utils, peft, jsonschema' \
        >>"$log" 2>&1; then
    tail -5 "$log" >&2
    echo "gpu_probe.sh: a package is missing for $py; with PyPI: benchmarks/gpu_probe.sh fetch NAME==VERSION," \
         "then carry .whl" >&2
    exit 2
fi

set +e
"$py" "benchmarks/$script.py" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
exit "$status"
