#!/usr/bin/env bash
# Multi-node training on Slurm (docs/scale.md): one torchrun per node (srun), which starts one train.py process per
# GPU; the c10d rendezvous runs on the first node of the allocation. Submit from the repository root, on a
# filesystem every node mounts (the run folder, the features and the token cache must be shared):
#   sbatch --nodes 4 scripts/slurm_train.sh --data_path /shared/features/laion_shards \
#       --output_path /shared/runs/laion --resume auto [train.py flags ...]
# Always pass --resume auto: a requeued or resubmitted job then continues from the newest checkpoint
# (none yet: it starts fresh). Environment: NPROC_PER_NODE [$SLURM_GPUS_ON_NODE or gpu], MASTER_PORT [29500],
# MAX_RESTARTS [0], PYTHON [python]; DRY_RUN=1 prints each node's torchrun command instead of running it.
#SBATCH --job-name=stylecap
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"   # sbatch runs a copy of this file from its spool folder
if [[ -z ${SLURM_JOB_NODELIST:-} ]]; then
    echo "slurm_train.sh: not inside a Slurm allocation; submit it with sbatch (or use scripts/torchrun_multinode.sh)" >&2
    exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500} NNODES=$SLURM_NNODES RDZV_ID=$SLURM_JOB_ID
export NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-gpu}} STYLECAP_ROOT=$PWD
# srun: one task per node, each with its SLURM_NODEID (= NODE_RANK); a task that fails ends the others
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash scripts/torchrun_multinode.sh "$@"
