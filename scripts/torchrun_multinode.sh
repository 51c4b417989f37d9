#!/usr/bin/env bash
# Multi-node training with plain torchrun (docs/scale.md): run the same command on every node, from the repository
# root on a shared filesystem, with only NODE_RANK changing. Arguments go to train.py unchanged:
#   node 0:  MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 NPROC_PER_NODE=8 scripts/torchrun_multinode.sh \
#                --data_path /shared/features/cc3m --output_path /shared/runs/cc3m --resume auto
#   node 1:  MASTER_ADDR=node0 NNODES=2 NODE_RANK=1 NPROC_PER_NODE=8 scripts/torchrun_multinode.sh  (same args)
# Environment (defaults in brackets):
#   MASTER_ADDR     host:port of the c10d rendezvous is MASTER_ADDR:MASTER_PORT; any node's address reachable from
#                   all of them (e.g. node 0's) [127.0.0.1, only right for NNODES=1]
#   MASTER_PORT     a free TCP port on that host [29500]
#   NNODES          number of nodes [$SLURM_NNODES or 1]
#   NODE_RANK       this node's index 0..NNODES-1 [$SLURM_NODEID or 0]; the c10d rendezvous assigns the global
#                   ranks itself (torchrun warns that it ignores --node_rank != 0); RDZV_BACKEND=static uses it
#   NPROC_PER_NODE  processes on this node: one per GPU [gpu, or 1 on a machine without CUDA]
#   RDZV_ID         the job's id, the same on every node [stylecap]; RDZV_BACKEND [c10d]
#   MAX_RESTARTS    torchrun's restarts of the whole group after a failure [0]; a restart resumes only when
#                   train.py has --resume auto
#   PYTHON          the interpreter with torch installed [python]
#   DRY_RUN=1       print the torchrun command line instead of running it
# torchrun sets MASTER_ADDR/MASTER_PORT (of the process group), RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
# GROUP_RANK for each process; train.py reads them (stylecap/distributed.py).
set -euo pipefail
cd "${STYLECAP_ROOT:-$(dirname "$0")/..}"
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}
if [[ $NPROC_PER_NODE == gpu ]] && ! ${PYTHON:-python} -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    NPROC_PER_NODE=1
fi
if [[ $NNODES -gt 1 && -z ${MASTER_ADDR:-} ]]; then
    echo "torchrun_multinode.sh: set MASTER_ADDR to an address of node 0 that every node reaches" >&2
    exit 2
fi
cmd=("${PYTHON:-python}" -m torch.distributed.run
     --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE"
     --rdzv_backend "${RDZV_BACKEND:-c10d}" --rdzv_endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}"
     --rdzv_id "${RDZV_ID:-stylecap}" --max_restarts "${MAX_RESTARTS:-0}"
     train.py "$@")
if [[ -n ${DRY_RUN:-} ]]; then
    echo "node $NODE_RANK: ${cmd[*]}"
    exit 0
fi
exec "${cmd[@]}"
