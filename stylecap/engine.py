"""Training engine: one epoch, validation loss, checkpoints (keep-N, best, last, resume)."""
from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

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


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = st["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def train_one_epoch(model, loader, optimizer, scheduler, state: TrainState, *, device: torch.device,
                    precision: str = "fp32", scaler=None, grad_accum: int = 1, max_grad_norm: float = 0.0,
                    on_step: Callable[[TrainState, dict], None] | None = None, show_progress: bool = True,
                    total_batches: int | None = None) -> dict:
    """Run the rest of one epoch from ``state.batch_in_epoch``. Returns {'loss', 'samples_per_s', 'steps'}.

    ``on_step`` runs after every optimizer step (logging, checkpoints, validation). A non-finite loss
    raises NonFiniteLossError naming the step.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    total_loss, n_loss, n_samples, t0 = 0.0, 0, 0, time.perf_counter()
    bar = tqdm(loader, total=total_batches, initial=state.batch_in_epoch, disable=None if show_progress else True,
               desc=f"epoch {state.epoch}", dynamic_ncols=True, leave=False)
    for batch in bar:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        micro = state.batch_in_epoch % grad_accum
        sync = micro == grad_accum - 1 or state.batch_in_epoch + 1 == total_batches
        no_sync = getattr(model, "no_sync", None)
        with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
            with autocast_ctx(device, precision):
                loss = model(batch["features"], batch["style_ids"], batch["input_ids"],
                             batch["attention_mask"], batch["labels"]).loss
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at step {state.step + 1} (epoch {state.epoch}); last good "
                    f"checkpoint: {state.last_checkpoint or 'none yet'}; lower --lr or use --precision fp32/bf16")
            scaled = loss / grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        state.batch_in_epoch += 1
        n_samples += batch["input_ids"].shape[0]
        total_loss += loss.item()
        n_loss += 1
        if not sync:
            continue
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        rate = n_samples / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", sps=f"{rate:.1f}")
        if on_step is not None:
            on_step(state, {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "samples_per_s": rate})
    bar.close()
    return {"loss": total_loss / max(n_loss, 1), "samples_per_s": n_samples / max(time.perf_counter() - t0, 1e-9),
            "batches": n_loss}


@torch.inference_mode()
def evaluate_loss(model, loader, *, device: torch.device, precision: str = "fp32") -> dict:
    """Mean per-token cross-entropy over the whole loader (sum over tokens / number of tokens)."""
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
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": count}


class CheckpointManager:
    """ModelScope CheckpointHook semantics: save every interval, keep the newest ``keep`` (plus best/last)."""

    PATTERN = re.compile(r"(step|epoch)_(\d+)\.pt$")

    def __init__(self, folder: Path, keep: int = 3):
        self.folder, self.keep = Path(folder), keep
        self.folder.mkdir(parents=True, exist_ok=True)

    def periodic(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        found = [(int(m.group(2)), p) for p in self.folder.iterdir() if (m := self.PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, payload: dict, name: str) -> Path:
        path = self.folder / name
        atomic_torch_save(payload, path)
        if self.PATTERN.match(name) and self.keep > 0:
            for old in self.periodic()[:-self.keep]:
                old.unlink()
        return path

    def newest(self) -> Path | None:
        """The checkpoint with the most optimizer steps (periodic or last)."""
        cands = self.periodic() + [p for p in (self.folder / "last.pt",) if p.is_file()]
        best, best_step = None, -1
        for p in cands:
            step = torch.load(p, map_location="cpu", weights_only=True, mmap=True)["train_state"]["step"]  # lazy: reads no weights
            if step > best_step:
                best, best_step = p, step
        return best
