#!/usr/bin/env bash
# One node's launcher, started by srun from slurm/train.sbatch: torchrun with this node's rank,
# whose ranks run slurm/rank.sh (`python <args>` with the rank's log file).
set -euo pipefail
nproc=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
# torchrun would die on SIGUSR1 (the default action), which SLURM sends to the whole step. An
# ignored signal stays ignored across exec, so the ranks start with it ignored as well until the
# trainer installs its own handler (trainer/preemption.py) around the training loop.
trap '' USR1
# The node's CPUs shared by its ranks, unless OMP_NUM_THREADS is set.
cpus=${SLURM_CPUS_PER_TASK:-$nproc}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cpus >= nproc ? cpus / nproc : 1))}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_JOB_NUM_NODES" --node-rank="$SLURM_NODEID" --nproc-per-node="$nproc" \
    --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
    --no-python "$(dirname "$0")/rank.sh" "$@"
