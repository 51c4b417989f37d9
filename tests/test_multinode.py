"""Issue 20 section 2: multi-node training proven on one machine. Two "nodes" are two torchrun agents (one training
process each, gloo on the CPU) that meet at a c10d rendezvous on 127.0.0.1, started by the repository's own recipes:
scripts/slurm_train.sh (under a stand-in srun that starts the allocation's nodes as local processes) and
scripts/torchrun_multinode.sh (one command per node). Against one process with the same global batch: the same loss
and gradient norm at every step, the same gradient moments (AdamW's state) and weights at the end; after kill -9 of
both nodes mid-run, --resume auto ends with the uninterrupted two-node run's weights, bit for bit.

GPT-2's dropout is off (a copy of the small GPT-2 with p = 0): one process and two draw different dropout masks, so
only without dropout can their weights agree. Restoring each rank's dropout stream on resume is tested with dropout
on in tests/test_train.py (test_ddp_two_processes_gloo_resume_restores_each_ranks_rng).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from tests.helpers import free_port, synthetic_features
from tests.test_train import _wait_for, base_args, weights, with_flag

ROOT = Path(__file__).resolve().parents[1]

FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for srun: start the allocation's SLURM_NNODES tasks here, each with its SLURM_NODEID; fail if one fails
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" > "$SRUN_LOG.$i" 2>&1 & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _fake_slurm(tmp: Path, port: int) -> dict:
    """PATH with srun and scontrol stand-ins, and the environment sbatch gives a 2-node job."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf '127.0.0.1\\nlocalhost\\n'\n")  # show hostnames
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_NNODES": "2",
            "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(ROOT), "NPROC_PER_NODE": "1", "MASTER_PORT": str(port),
            "SRUN_LOG": str(tmp / "node")}


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _start_nodes(argv: list[str], log: Path) -> list[subprocess.Popen]:
    """scripts/torchrun_multinode.sh once per node, each in its own process group (a kill reaches its worker)."""
    port = str(free_port())
    return [subprocess.Popen(["bash", "scripts/torchrun_multinode.sh", *argv], cwd=ROOT, start_new_session=True,
                             env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NNODES="2", NODE_RANK=str(node),
                                      NPROC_PER_NODE="1"),
                             stdout=open(f"{log}.{node}", "w"), stderr=subprocess.STDOUT) for node in (0, 1)]


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def _no_dropout_gpt2(small_models: Path, tmp: Path) -> Path:
    gpt2 = tmp / "gpt2_p0"
    shutil.copytree(small_models / "small_gpt2", gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    cfg.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (gpt2 / "config.json").write_text(json.dumps(cfg))
    return gpt2


def test_two_nodes_tokenizing_into_one_shared_cache_do_not_collide(tmp_path):
    """Each node's local rank 0 tokenizes into the run folder's cache, which the nodes share: two writers of the same
    cache file at once. They shared one fixed temporary file, and one node's clean-up removed it under the other
    (FileNotFoundError in np.memmap, seen in the two-node test below); each now writes a temporary file of its own."""
    import numpy as np
    from stylecap.train.data import _FlatSink
    target = tmp_path / "cache" / "tokens_abc.pt.flat.tmp"
    one, two = _FlatSink(target), _FlatSink(target)  # node 0 and node 1, same content
    for sink in (one, two):
        sink.append(np.arange(5, dtype=np.int32))
    assert one.tensor().tolist() == [0, 1, 2, 3, 4]
    one.close()  # node 0 is done and cleans up while node 1 is still writing
    two.append(np.arange(2, dtype=np.int32))
    assert two.tensor().tolist() == [0, 1, 2, 3, 4, 0, 1]
    two.close()
    assert not list(target.parent.iterdir())


def test_slurm_script_generates_one_torchrun_per_node(tmp_path):
    """`bash -n` of both recipes; outside an allocation the Slurm one says so; inside one (stand-ins for srun and
    scontrol) each node runs torchrun with the first node's rendezvous, the job's id and its own node rank."""
    for script in ("slurm_train.sh", "torchrun_multinode.sh"):
        assert subprocess.run(["bash", "-n", f"scripts/{script}"], cwd=ROOT).returncode == 0
    env = {k: v for k, v in _env().items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", "scripts/slurm_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "not inside a Slurm allocation" in proc.stderr
    proc = subprocess.run(["bash", "scripts/slurm_train.sh", "--data_path", "x y"], cwd=ROOT, capture_output=True,
                          text=True, env=_env(DRY_RUN="1", **_fake_slurm(tmp_path, 29555)))
    assert proc.returncode == 0, proc.stderr
    common = (f"{sys.executable} -m torch.distributed.run --nnodes 2 --node_rank {{}} --nproc_per_node 1 --rdzv_backend "
              "c10d --rdzv_endpoint 127.0.0.1:29555 --rdzv_id 4242 --max_restarts 0 train.py --data_path x y")
    assert [(tmp_path / f"node.{i}").read_text().strip() for i in (0, 1)] == \
        [f"node {i}: " + common.format(i) for i in (0, 1)]


def test_two_nodes_equal_one_process_and_resume_exactly_after_both_are_killed(small_models, tmp_path):
    data = synthetic_features(tmp_path / "train.pt", n_images=24)
    val = synthetic_features(tmp_path / "val.pt", n_images=6, seed=1)
    gpt2 = _no_dropout_gpt2(small_models, tmp_path)
    argv = base_args(small_models, data, "OUT", "--epochs", "2", "--val_path", str(val), "--device", "cpu",
                     "--save_by", "step", "--save_step", "2", "--max_checkpoint_num", "0", "--log_every", "1")
    argv = with_flag(with_flag(argv, "--gpt2_path", str(gpt2)), "--num_samples", "0")
    args = lambda out, bs: with_flag(with_flag(argv, "--output_path", str(out)), "--bs_train", str(bs))
    # one process, batch 8; two nodes x batch 4 (the same 8 captions in every step: DistributedSampler's halves)
    assert train.main(args(tmp_path / "one", 8)) == 0
    port = free_port()
    proc = subprocess.run(["bash", "scripts/slurm_train.sh", *args(tmp_path / "two", 4)], cwd=ROOT, text=True,
                          env=_env(**_fake_slurm(tmp_path, port)), capture_output=True, timeout=300)
    assert proc.returncode == 0, (tmp_path / "node.0").read_text()[-2000:] + (tmp_path / "node.1").read_text()[-2000:]
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["effective_batch_size"] == 8
    for tag in ("train/loss", "train/grad_norm"):  # the global gradient's norm (after DDP's all-reduce), per step
        one, two = _scalars(tmp_path / "one", tag), _scalars(tmp_path / "two", tag)
        assert len(one) == len(two) == 6 and two == pytest.approx(one, rel=1e-4), tag
    ck1, ck2 = (torch.load(tmp_path / run / "checkpoints/last.pt", weights_only=True) for run in ("one", "two"))
    for k in ck1["model"]:
        assert torch.allclose(ck1["model"][k], ck2["model"][k], rtol=1e-4, atol=1e-5), k
    moments = lambda ck: [v for s in ck["optimizer"]["state"].values() for n, v in s.items() if n.startswith("exp_avg")]
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(moments(ck1), moments(ck2)))
    # kill -9 of both nodes (agents and workers) mid-run, then the same command on both with --resume auto
    nodes = _start_nodes(args(tmp_path / "killed", 4), tmp_path / "killed")
    _wait_for(tmp_path / "killed" / "checkpoints" / "step_00000002.pt", nodes[0])
    for p in nodes:
        os.killpg(p.pid, signal.SIGKILL)
    assert [p.wait() for p in nodes] == [-9, -9]
    assert not (tmp_path / "killed" / "checkpoints" / "last.pt").exists()
    nodes = _start_nodes(args(tmp_path / "killed", 4) + ["--resume", "auto"], tmp_path / "resumed")
    assert [p.wait(timeout=300) for p in nodes] == [0, 0], (tmp_path / "resumed.0").read_text()[-2000:]
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()
    a, b = weights(tmp_path / "two/checkpoints/last.pt"), weights(tmp_path / "killed/checkpoints/last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
