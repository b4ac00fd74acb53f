#!/bin/bash
# DDP on CPUs (gloo), e.g. to check a distributed change on a laptop:
#   bash launch/cpu_ddp.sh 2 --subset 2000 --epochs 2
# Why not `accelerate launch --multi_gpu`: without GPUs it starts N processes that each believe
# they are rank 0 of 1 (N identical trainings). torchrun with ACCELERATE_USE_CPU=true gives
# Accelerate a real MULTI_CPU process group; train.py refuses the broken launch with a message.
set -euo pipefail
N=${1:-2}; shift || true
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The project's own venv first (its torchrun imports the project), so that the venv need not be
# activated; then whatever torchrun PATH finds.
if [[ -x "$ROOT/.venv/bin/torchrun" ]]; then
    TORCHRUN="$ROOT/.venv/bin/torchrun"
elif command -v torchrun >/dev/null; then
    TORCHRUN=torchrun
else
    echo "error: torchrun is neither in $ROOT/.venv/bin nor on PATH; install the project into that venv" \
         "(python3 -m venv .venv && .venv/bin/pip install -e .) or activate the venv that has it" >&2
    exit 127
fi
# Split the cores between the processes, or they fight over them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / N > 0 ? $(nproc) / N : 1 ))}
# The commands train.py prints (e.g. how to --resume) repeat this script, not its torchrun line.
export CIFAR_LAB_LAUNCHER="bash $(printf '%q' "$0") $N"
ACCELERATE_USE_CPU=true exec "$TORCHRUN" --nproc_per_node "$N" "$ROOT/distributed/train.py" "$@"
