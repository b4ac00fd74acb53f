#!/bin/bash
# DDP on CPUs (gloo), e.g. to check a distributed change on a laptop:
#   bash launch/cpu_ddp.sh 2 --subset 2000 --epochs 2
# Why not `accelerate launch --multi_gpu`: without GPUs it starts N processes that each believe
# they are rank 0 of 1 (N identical trainings). torchrun with ACCELERATE_USE_CPU=true gives
# Accelerate a real MULTI_CPU process group; train.py refuses the broken launch with a message.
set -euo pipefail
N=${1:-2}; shift || true
# Split the cores between the processes, or they fight over them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / N > 0 ? $(nproc) / N : 1 ))}
ACCELERATE_USE_CPU=true exec torchrun --nproc_per_node "$N" distributed/train.py "$@"
