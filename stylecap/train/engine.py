"""Training engine: one epoch, validation loss, checkpoints (keep-N, best, last, resume)."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import torch
import torch.distributed as dist
from loguru import logger
from tqdm import tqdm

from models.captioner import load_checkpoint_file
from stylecap.distributed import sum_across_ranks
from stylecap.utils import UserError, atomic_torch_save


class NonFiniteLossError(UserError):
    pass


@dataclass
class TrainState:
    step: int = 0             # optimizer steps done
    epoch: int = 0            # current epoch
    batch_in_epoch: int = 0   # batches of the current epoch already consumed
    best_metric: float | None = None
    last_checkpoint: str | None = None
    history: list = field(default_factory=list)


def autocast_ctx(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": list(_to_lists(random.getstate())),
          "numpy": _to_lists(np.random.get_state())}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _to_lists(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_to_lists(v) for v in x]
    return x


def all_rng_states() -> list[dict]:
    """Every rank's RNG state, in rank order (a collective under DDP: all ranks must call it).
    Each rank draws its own dropout masks, so an exact resume restores each rank's own stream."""
    st = rng_state()
    if _world_size() == 1:
        return [st]
    states: list = [None] * _world_size()
    dist.all_gather_object(states, st)
    return states


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def accumulate_gradients(model, micro_batches: list[dict], state: TrainState, *, device: torch.device,
                         precision: str = "fp32", scaler=None) -> dict:
    """Forward + backward over the micro-batches of one optimizer step; gradients are left in ``.grad``.

    The objective is the per-token mean over the whole effective batch: the sum of token losses over
    every micro-batch and every DDP rank, divided by the global count of labelled tokens. ClipCap's
    ``loss / grad_accum`` (a mean of per-batch means, then DDP's mean of per-rank means) weights a
    token by how full its batch was. DDP averages gradients over ranks, so each rank scales its sum by
    world / global_tokens. Returns {'loss': that mean, 'tokens': the global count}.
    """
    world = _world_size()
    counts = torch.tensor([float((b["labels"] != -100).sum()) for b in micro_batches], dtype=torch.float64)
    total_tokens = counts.sum().to(device)
    if world > 1:  # one tiny collective per step: the token count of the whole effective batch
        dist.all_reduce(total_tokens)
    scale = world / total_tokens.item()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    no_sync = getattr(model, "no_sync", None)
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        last = i == len(micro_batches) - 1  # DDP all-reduces the gradients once, after the last one
        with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
            with autocast_ctx(device, precision):
                out = model(batch["features"], batch["style_ids"], batch["input_ids"],
                            batch["attention_mask"], batch["labels"])
            if not torch.isfinite(out.loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({out.loss.item()}) at step {state.step + 1} (epoch {state.epoch}); last good "
                    f"checkpoint: {state.last_checkpoint or 'none yet'}; lower --lr or use --precision fp32/bf16")
            objective = out.loss_sum * scale
            (scaler.scale(objective) if scaler is not None else objective).backward()
        loss_sum += out.loss_sum.detach()
    if world > 1:  # for logging only: the same mean on every rank
        dist.all_reduce(loss_sum)
    return {"loss": loss_sum.item() / total_tokens.item(), "tokens": int(total_tokens.item())}


def optimizer_step(optimizer, scheduler, params: list, *, scaler=None, max_grad_norm: float = 0.0) -> dict:
    """Unscale (fp16), clip, step, zero the gradients. Returns {'grad_norm', 'skipped'}.

    With a GradScaler, a step whose gradients hold inf/nan is skipped by the scaler (which then backs
    off its scale); the LR schedule then does not advance either."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    skipped = False
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skips optimizer.step() when the gradients are not finite
        scaler.update()
        skipped = scaler.get_scale() < scale
    else:
        optimizer.step()
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": float(norm), "skipped": skipped}


def progress_kind(enabled: bool, stream: TextIO | None = None) -> str:
    """How train_one_epoch reports progress on ``stream`` (default sys.stderr, where tqdm and the log write):
    'bar', a tqdm bar redrawn in place, on a terminal; 'lines', a log line every --log_every steps, on
    anything else (CI, nohup, Slurm: a redrawn bar would fill the log with carriage returns); 'off' when
    not ``enabled`` (ranks > 0, benchmarks). A terminal that reports no size (0 x 0: some container
    ttys) counts as not one: tqdm would draw an empty bar there."""
    if not enabled:
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        size = os.get_terminal_size(stream.fileno()) if stream.isatty() else None
    except (AttributeError, OSError, ValueError):  # no fileno (StringIO), closed
        size = None
    return "bar" if size is not None and size.columns > 0 and size.lines > 0 else "lines"


class EpochProgress:
    """train_one_epoch's report, after each optimizer step: the tqdm bar (``kind`` 'bar'), or every
    ``log_every`` steps and on the first step of the call a line 'epoch E step S (i/n): loss, lr,
    samples/s, ETA' -- at INFO ('lines': the console and train.log), at DEBUG under a bar (train.log
    only, so the log file reads the same on a terminal). The bar counts optimizer steps, as the ETA does."""

    def __init__(self, kind: str, state: TrainState, total_steps: int | None, log_every: int,
                 stream: TextIO | None, grad_accum: int):
        self.kind, self.total, self.log_every, self.epoch = kind, total_steps, log_every, state.epoch
        self.done = -(-state.batch_in_epoch // grad_accum)  # steps of this epoch done before (resume)
        self.run, self.t0 = 0, time.perf_counter()  # steps done by this call, for the ETA
        self.bar = tqdm(total=total_steps, initial=self.done, desc=f"epoch {state.epoch}", unit="step",
                        file=stream, leave=False) if kind == "bar" else None  # as captioning's bar

    def eta(self) -> str:
        if not self.total or not self.run:
            return "?"
        per_step = (time.perf_counter() - self.t0) / self.run
        return tqdm.format_interval(per_step * max(self.total - self.done, 0))

    def update(self, step: int, loss: float, lr: float, rate: float) -> None:
        self.done += 1
        self.run += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"step {step}, loss {loss:.3f}, lr {lr:.2e}, {rate:.1f} samples/s",
                                     refresh=False)
            self.bar.update(1)
            if self.done == self.total:  # tqdm skips draws within mininterval: the last step is always drawn
                self.bar.refresh()
        if self.kind != "off" and self.log_every > 0 and (step % self.log_every == 0 or self.run == 1):
            logger.log("DEBUG" if self.bar is not None else "INFO",
                       f"epoch {self.epoch} step {step} ({self.done}/{self.total or '?'}): loss {loss:.4f}, "
                       f"lr {lr:.2e}, {rate:.1f} samples/s, ETA {self.eta()}")

    @contextlib.contextmanager
    def aside(self):
        """Around on_step: the bar steps aside (cleared, then redrawn) so log lines land on lines of their own."""
        if self.bar is None:
            yield
            return
        self.bar.clear()
        try:
            yield
        finally:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(model, loader, optimizer, scheduler, state: TrainState, *, device: torch.device,
                    precision: str = "fp32", scaler=None, grad_accum: int = 1, max_grad_norm: float = 0.0,
                    on_step: Callable[[TrainState, dict], bool] | None = None, show_progress: bool = True,
                    total_batches: int | None = None, log_every: int = 50, stream: TextIO | None = None) -> dict:
    """Run the rest of one epoch from ``state.batch_in_epoch`` (always a step boundary).

    Each optimizer step takes ``grad_accum`` micro-batches (fewer for the epoch's last step).
    ``on_step`` runs after every step (logging, checkpoints, validation); returning True stops the
    epoch there, at a step boundary. A non-finite loss raises NonFiniteLossError naming the step.
    Progress (``show_progress``; see progress_kind and EpochProgress): a bar when ``stream`` (default
    sys.stderr) is a terminal, else a log line every ``log_every`` steps; ``total_batches`` of the
    epoch gives the bar its length and the ETA.
    Returns {'loss' (per-token mean over the epoch's steps), 'samples_per_s', 'batches', 'stopped'}.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, n_tokens, n_samples, n_batches, t0 = 0.0, 0, 0, 0, time.perf_counter()
    stopped = False
    batches = iter(loader)
    progress = EpochProgress(progress_kind(show_progress, stream), state,
                             -(-total_batches // grad_accum) if total_batches else None, log_every, stream, grad_accum)
    while group := list(itertools.islice(batches, grad_accum)):  # the micro-batches of one step
        acc = accumulate_gradients(model, group, state, device=device, precision=precision, scaler=scaler)
        stepped = optimizer_step(optimizer, scheduler, params, scaler=scaler, max_grad_norm=max_grad_norm)
        if stepped["skipped"]:
            logger.warning(f"step {state.step + 1}: fp16 gradients overflowed; step skipped, loss scale now "
                           f"{scaler.get_scale():g}")
        state.step += 1
        state.batch_in_epoch += len(group)
        n_batches += len(group)
        n_samples += sum(b["input_ids"].shape[0] for b in group)
        loss_sum += acc["loss"] * acc["tokens"]
        n_tokens += acc["tokens"]
        rate = n_samples / max(time.perf_counter() - t0, 1e-9)
        lr = scheduler.get_last_lr()[0]
        progress.update(state.step, acc["loss"], lr, rate)
        if on_step is not None:
            with progress.aside():
                stop = on_step(state, {"loss": acc["loss"], "lr": lr, "samples_per_s": rate,
                                       "grad_norm": stepped["grad_norm"]})
            if stop:
                stopped = True
                break
    progress.close()
    return {"loss": loss_sum / max(n_tokens, 1), "samples_per_s": n_samples / max(time.perf_counter() - t0, 1e-9),
            "batches": n_batches, "stopped": stopped}


class GracefulStop:
    """Ctrl-C (SIGINT) or SIGTERM (a cluster's preemption) asks the run to stop at the next optimizer-step
    boundary, where a checkpoint loses nothing: accumulated gradients are never dropped. A second signal
    aborts at once (KeyboardInterrupt) and keeps the last checkpoint. Use as a context manager around
    the training loop; ``agreed()`` is a collective under DDP, so every rank stops at the same step."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self) -> "GracefulStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(f"{signal.Signals(signum).name}: stopping after the current optimizer step and saving "
                       "a checkpoint (send it again to abort without saving)")

    def agreed(self) -> bool:
        """True when any rank was asked to stop."""
        flag = torch.tensor([float(self.signum is not None)])
        if _world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)  # the shell's convention: 130 for Ctrl-C


@torch.inference_mode()
def evaluate_loss(model, loader, *, device: torch.device, precision: str = "fp32") -> dict:
    """Mean per-token cross-entropy over the whole loader (sum over tokens / number of tokens).
    Under DDP every rank must call it with its own share of the batches: the sums and counts are added
    across ranks, so each rank gets the mean over the whole set (one process's, up to summation order)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_ctx(device, precision):
            out = model(batch["features"], batch["style_ids"], batch["input_ids"], batch["attention_mask"],
                        batch["labels"])
        total += out.loss.item() * out.n_tokens
        count += out.n_tokens
    model.train(was_training)
    total, count = sum_across_ranks([total, float(count)], device)
    count = int(count)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count}


class CheckpointManager:
    """ModelScope CheckpointHook semantics: save every interval, keep the newest ``keep`` (plus best/last)."""

    PATTERN = re.compile(r"(step|epoch)_(\d+)\.pt$")

    def __init__(self, folder: Path, keep: int = 3):
        self.folder, self.keep = Path(folder), keep
        self.folder.mkdir(parents=True, exist_ok=True)

    def periodic(self, kind: str | None = None) -> list[Path]:
        """Periodic checkpoints ('step' or 'epoch' ones, or both), oldest first."""
        found = [(int(m.group(2)), p) for p in self.folder.iterdir()
                 if (m := self.PATTERN.match(p.name)) and kind in (None, m.group(1))]
        return [p for _, p in sorted(found)]

    def save(self, payload: dict, name: str) -> Path:
        path = self.folder / name
        atomic_torch_save(payload, path)
        m = self.PATTERN.match(name)
        if m and self.keep > 0:  # keep-N within the kind: a stale step file never evicts epoch files
            for old in self.periodic(m.group(1))[:-self.keep]:
                old.unlink()
        return path

    def newest(self) -> Path | None:
        """The checkpoint with the most optimizer steps (periodic or last)."""
        cands = self.periodic() + [p for p in (self.folder / "last.pt",) if p.is_file()]
        best, best_step = None, -1
        for p in cands:
            step = load_checkpoint_file(p, mmap=True)["train_state"]["step"]  # lazy: reads no weights
            if step > best_step:
                best, best_step = p, step
        return best
