"""stylecap.train.engine: the loss over the effective batch (micro-batches and DDP ranks), fp16 with a GradScaler,
gradient checkpointing with a frozen GPT-2, and keep-N per checkpoint kind (issue 8 items 6, 7, 8)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from models import ModelConfig, build_model
from stylecap.train.data import CaptionDataset, collate, encode_data
from stylecap.train.engine import CheckpointManager, TrainState, optimizer_step, train_one_epoch
from stylecap.features import load_features
from tests.helpers import synthetic_features


def _model(gpt2: Path, finetune: bool = True, **kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(gpt2_path=str(gpt2), style_mode="embedding", finetune_gpt2=finetune,
                                    styles=["Happy", "Cynical (Doubtful, Skeptical)", "Gloomy"], **kw))
    for m in model.modules():  # dropout off: runs that see the same samples must give the same gradients
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _batches(model, feature_file: Path, n: int, per_batch: int) -> list[dict]:
    """n samples from the synthetic file (captions of different token lengths), cut into batches."""
    data = load_features(feature_file)
    data["captions"] = data["captions"][:n]
    ds = CaptionDataset(data["clip_embedding"], encode_data(data, model.tokenizer, max_len=32))
    items = [ds[i] for i in range(n)]
    return [collate(items[i:i + per_batch], model.tokenizer.pad_id) for i in range(0, n, per_batch)]


def _one_sgd_step(model, batches: list[dict], grad_accum: int) -> dict[str, torch.Tensor]:
    """The weights after one optimizer step of plain SGD with lr 1: w - grad, so weights compare gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    state = TrainState()
    train_one_epoch(model, batches, opt, sched, state, device=torch.device("cpu"), grad_accum=grad_accum,
                    max_grad_norm=0.0, show_progress=False, total_batches=len(batches))
    assert state.step == 1
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("eng") / "train.pkl", n_images=12)


def test_grad_accum_gives_the_gradients_of_the_full_batch(small_models, feature_file):
    """Issue 8 item 6: bs 4 x grad_accum 2 == bs 8 (the per-token mean over the effective batch)."""
    gpt2 = small_models / "small_gpt2"
    whole = _model(gpt2)
    full = _one_sgd_step(whole, _batches(whole, feature_file, 8, 8), grad_accum=1)
    split = _model(gpt2)
    batches = _batches(split, feature_file, 8, 4)
    n_tok = [int((b["labels"] != -100).sum()) for b in batches]
    assert n_tok[0] != n_tok[1]  # unequal token counts: a mean of per-batch means would differ
    accum = _one_sgd_step(split, batches, grad_accum=2)
    assert max((full[k] - accum[k]).abs().max().item() for k in full) < 1e-6


def _ddp_rank(rank: int, world: int, init_file: str, gpt2: str, feature_file: str, out: str) -> None:
    import torch.distributed as dist
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = _model(Path(gpt2))
    batches = _batches(model, Path(feature_file), 8, 4)  # rank r trains on samples 4r .. 4r+3
    ddp = nn.parallel.DistributedDataParallel(model)
    weights = _one_sgd_step(ddp, [batches[rank]], grad_accum=1)
    if rank == 0:
        torch.save({k.removeprefix("module."): v for k, v in weights.items()}, out)
    dist.destroy_process_group()


def test_two_ddp_ranks_give_the_gradients_of_one_process(small_models, feature_file, tmp_path):
    """Issue 8 item 6: 2 gloo ranks x bs 4 == 1 process x bs 8 (global token count across ranks)."""
    gpt2 = small_models / "small_gpt2"
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(gpt2), str(feature_file), str(out)), nprocs=2)
    ddp = torch.load(out, weights_only=True)
    whole = _model(gpt2)
    full = _one_sgd_step(whole, _batches(whole, feature_file, 8, 8), grad_accum=1)
    assert ddp.keys() == full.keys()
    assert max((full[k] - ddp[k]).abs().max().item() for k in full) < 1e-6


def _linear_with_grads(grad_value: float, scale: float):
    layer = nn.Linear(4, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # the update is lr x the clipped, unscaled gradient
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for p in layer.parameters():
        p.grad = torch.full_like(p, grad_value * scale)  # what scaler.scale(loss).backward() leaves
    return layer, opt, sched


def test_fp16_scaler_unscales_before_clipping_and_skips_inf_steps():
    """Issue 8 item 7: the fp16 path's logic on the CPU (torch.amp.GradScaler('cpu'))."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.zeros(()))  # the scaler starts lazily, at the first scale(loss)
    layer, opt, sched = _linear_with_grads(0.5, scaler.get_scale())
    before = [p.detach().clone() for p in layer.parameters()]
    out = optimizer_step(opt, sched, list(layer.parameters()), scaler=scaler, max_grad_norm=1.0)
    true_norm = (20 * 0.5 ** 2) ** 0.5  # 16 weights + 4 biases of 0.5, after unscaling
    assert out["grad_norm"] == pytest.approx(true_norm) and not out["skipped"]
    update = torch.cat([(a - p.detach()).flatten() for a, p in zip(before, layer.parameters())])
    assert update.norm().item() == pytest.approx(0.1 * 1.0, rel=1e-4)  # clipped to norm 1, then lr 0.1
    assert sched.last_epoch == 1

    layer, opt, sched = _linear_with_grads(0.5, scaler.get_scale())
    next(layer.parameters()).grad[0, 0] = float("inf")  # fp16 overflow
    before = [p.detach().clone() for p in layer.parameters()]
    out = optimizer_step(opt, sched, list(layer.parameters()), scaler=scaler, max_grad_norm=1.0)
    assert out["skipped"] and scaler.get_scale() == 512.0  # backed off
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters()))  # weights untouched
    assert sched.last_epoch == 0  # the LR schedule does not advance on a skipped step


def test_gradient_checkpointing_drops_a_frozen_gpt2s_activations(small_models, feature_file):
    """Issue 8 item 7: with GPT-2 frozen, --gradient_checkpointing really works: GPT-2's block activations
    are not kept for backward (they are recomputed there), and the gradients are unchanged."""

    def step(checkpointing: bool) -> tuple[int, dict]:
        model = _model(small_models / "small_gpt2", finetune=False)
        if checkpointing:
            model.gpt.activation_checkpointing_enable()
        saved = [0]

        def pack(t):  # every tensor autograd keeps for backward, outside checkpointed regions
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            weights = _one_sgd_step(model, _batches(model, feature_file, 4, 4), grad_accum=1)
        return saved[0], weights

    kept_plain, w_plain = step(False)
    kept_ckpt, w_ckpt = step(True)
    assert kept_ckpt < kept_plain - 2_000_000  # the 2 blocks' activations (~3 MB here) are gone
    assert max((w_plain[k] - w_ckpt[k]).abs().max().item() for k in w_plain) < 1e-6


def test_keep_n_counts_step_and_epoch_checkpoints_separately(tmp_path):
    """Issue 8 item 8: a stale step file (e.g. from Ctrl-C) never pushes epoch checkpoints out."""
    ck = CheckpointManager(tmp_path, keep=2)
    ck.save({"train_state": {"step": 7}}, "step_00000007.pt")
    for e in (1, 2, 3):
        ck.save({"train_state": {"step": 10 * e}}, f"epoch_{e:04d}.pt")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt", "step_00000007.pt"]
    for s in (40, 50, 60):
        ck.save({"train_state": {"step": s}}, f"step_{s:08d}.pt")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch_0002.pt", "epoch_0003.pt", "step_00000050.pt", "step_00000060.pt"]


def _read_all(fd: int) -> str:
    """What was written to a pty so far (the reading end: master ``fd``)."""
    import select
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_bar_always_draws_the_epochs_last_step():
    """CI saw a bar that ended at 1/2: tqdm skips a redraw within mininterval (0.1 s) of the last one, so a
    fast final step was never drawn before close() cleared the bar. The last step is drawn whatever the timing."""
    import fcntl
    import struct
    import termios
    from stylecap.train.engine import EpochProgress
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    tty = os.fdopen(slave, "w")
    progress = EpochProgress("bar", TrainState(), total_steps=3, log_every=0, stream=tty, grad_accum=1)
    for step in (1, 2, 3):  # microseconds apart: well within mininterval
        progress.update(step, loss=1.0, lr=1e-3, rate=10.0)
    tty.flush()
    drawn = _read_all(master)
    progress.close()
    assert "3/3" in drawn and "step 3" in drawn
    tty.close()
    os.close(master)


def test_issue17_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(small_models, feature_file, tmp_path):
    """Issue 17 §2: train_one_epoch shows a tqdm bar (step, loss, samples/s, ETA) when its stream is a terminal
    (a real pty here), log lines every ``log_every`` steps on anything else, nothing when show_progress is off."""
    from loguru import logger
    from stylecap.train.engine import progress_kind
    import fcntl
    import struct
    import termios
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w")
    pipe = open(tmp_path / "err.txt", "w")
    assert progress_kind(True, tty) == "lines"  # a pty of 0 x 0 (as some containers give): tqdm would draw nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal window's size
    assert progress_kind(True, tty) == "bar" and progress_kind(True, pipe) == "lines"
    assert progress_kind(False, tty) == progress_kind(False, pipe) == "off"

    def epoch(stream, show: bool = True) -> list[str]:
        model = _model(small_models / "small_gpt2")
        batches = _batches(model, feature_file, 8, 2)  # 4 batches -> 2 steps of 2
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        logged: list[str] = []
        sink = logger.add(lambda m: logged.append(m.record["message"]), level="INFO")
        try:
            train_one_epoch(model, batches, opt, sched, TrainState(), device=torch.device("cpu"), grad_accum=2,
                            show_progress=show, total_batches=len(batches), log_every=1, stream=stream)
        finally:
            logger.remove(sink)
        return logged

    assert epoch(tty) == []  # the bar says it all on a terminal
    bar = _read_all(master)
    assert "epoch 0" in bar and "2/2" in bar and "step 2" in bar and "loss" in bar and "samples/s" in bar
    assert re.search(r"<\d\d:\d\d", bar)  # tqdm's ETA
    lines = epoch(pipe)
    assert [ln.split(" (")[0] for ln in lines] == ["epoch 0 step 1", "epoch 0 step 2"] and "ETA" in lines[-1]
    assert epoch(pipe, show=False) == []  # ranks > 0 and benchmarks
    tty.close()
    os.close(master)
