"""The training loop of one run: epochs of optimizer steps, validation, checkpoints, resume, and a clean stop.

A Trainer holds a run's pieces (model, optimizer, LR schedule, fp16 scaler, TrainState, checkpoints,
TensorBoard writer). Its methods are the loop's steps: ``resume``, ``start``, ``train_one_epoch``,
``validate``, ``save``, and ``fit``, which runs them until --epochs or a stop signal. Every rank of a
DDP run calls the same methods in the same order (several are collectives); rank 0 writes.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from loguru import logger
from torch.utils.data import DistributedSampler, Subset

from models import checkpoint_payload
from models.captioner import StyleCapModel, gpt2_fingerprint, load_checkpoint_file, trainable_parameters
from models.decoding import DecodeConfig, generate_captions
from stylecap.distributed import batch_share, from_rank0
from stylecap.features import FeatureStore
from stylecap.eval.tensorboard import add_metric_scalars
from stylecap.train import engine
from stylecap.train.data import CaptionDataset, SkipSampler
from stylecap.train.engine import CheckpointManager, GracefulStop, TrainState, all_rng_states, set_rng_state
from stylecap.train.prepare import TrainingData, make_loader
from stylecap.utils import UserError, atomic_write_json, code_version

TRAIN_SCALARS = ("loss", "lr", "samples_per_s", "grad_norm")  # TensorBoard train/<key> after each step


def check_resume(ck: dict, args: argparse.Namespace, world: int, path: Path) -> None:
    """An exact resume needs the batch layout and the frozen GPT-2 it was made with: refuse otherwise."""
    old = ck.get("args") or {}
    for flag in ("bs_train", "grad_accum", "shard_window", "shard_assignment"):  # shard_*: a sharded set's order
        if flag in old and old[flag] != getattr(args, flag):
            raise UserError(f"--resume {path}: it was made with --{flag} {old[flag]}, this run has --{flag} "
                            f"{getattr(args, flag)}; resume with the same setting, or start a new --output_path")
    changed = [f"--{f} {old[f]} -> {getattr(args, f)}" for f in ("epochs", "lr", "warmup_steps")
               if f in old and old[f] != getattr(args, f)]
    if changed:
        logger.warning(f"--resume {path}: {', '.join(changed)}: the LR schedule is recomputed for the new settings, "
                       "so this run will not equal an uninterrupted one")
    if ck.get("world_size", 1) != world:
        raise UserError(f"--resume {path}: it was made with {ck.get('world_size', 1)} processes, this run has {world}; "
                        "resume with the same torchrun --nproc_per_node, or start a new --output_path")
    if not args.finetune_gpt2 and ck.get("gpt2_fingerprint") not in (None, gpt2_fingerprint(args.gpt2_path)):
        raise UserError(f"--resume {path}: the frozen GPT-2 in {args.gpt2_path} is not the one the run was trained "
                        "with (weights fingerprint differs); pass --gpt2_path with the original GPT-2 folder")


class Trainer:
    """One run's training state and loop. Construction makes the optimizer (fused AdamW over the trainable
    parameters), the linear warm-up/decay schedule over --epochs, the fp16 GradScaler and a fresh TrainState;
    then ``resume(path)`` and ``start()`` (in this order), then ``fit()``."""

    def __init__(self, args: argparse.Namespace, model: StyleCapModel, data: TrainingData, train_ds: CaptionDataset,
                 val_ds: CaptionDataset, ckpts: CheckpointManager, *, rank: int, world: int, device: torch.device):
        self.args, self.model, self.data, self.ckpts = args, model, data, ckpts
        self.train_ds, self.val_ds = train_ds, val_ds
        self.rank, self.world, self.device = rank, world, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters (0.38 s -> 0.08 s per step for 156M parameters on this CPU)
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=args.weight_decay, fused=True)
        self.sampler = train_ds.make_sampler(world, rank, args.seed) if hasattr(train_ds, "make_sampler") else \
            DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)  # sharded: its own
        self.batches_per_epoch = -(-len(self.sampler) // args.bs_train)
        steps_per_epoch = -(-self.batches_per_epoch // args.grad_accum)
        from transformers import get_linear_schedule_with_warmup
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, args.warmup_steps,
                                                         args.epochs * steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
        self.state = TrainState()
        self.train_model: torch.nn.Module = model  # the DDP wrapper under torchrun (start())
        self.writer = None  # rank 0's TensorBoard SummaryWriter (start())
        self.val_loader = None  # this rank's share of the val batches (start())
        self.sample_order = np.zeros(0, dtype=np.int64)  # val records for val/samples, see sample_order (start())

    # ------------------------------------------------------------------ setup
    def resume(self, path: Path | None) -> None:
        """Restore weights, optimizer, schedule, scaler, TrainState and this rank's RNG streams from ``path``
        (refused when its settings cannot continue exactly); None starts fresh."""
        args = self.args
        if path is None:
            if args.resume == "auto":
                logger.info(f"--resume auto: no checkpoint in {self.ckpts.folder}, starting fresh")
            return
        ck = load_checkpoint_file(path)
        check_resume(ck, args, self.world, path)
        missing, unexpected = self.model.load_state_dict(ck["model"], strict=False)
        if unexpected or [k for k in missing if args.finetune_gpt2 or not k.startswith("gpt.")]:
            raise UserError(f"{path} does not fit these settings (missing {missing[:2]}, unexpected {unexpected[:2]}); "
                            "resume with the command (or --config config.json) that made it")
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.state = TrainState(**ck["train_state"])
        self.state.last_checkpoint = str(path)
        set_rng_state(ck.get("rng_per_rank", [ck["rng"]])[self.rank])
        logger.info(f"resumed from {path} at step {self.state.step}, epoch {self.state.epoch}, "
                    f"batch {self.state.batch_in_epoch}")

    def start(self) -> None:
        """Wrap the model for DDP, open TensorBoard and write config.json (rank 0), and make this rank's
        validation loader: each rank computes the val loss of its block of whole val batches."""
        args, model = self.args, self.model
        if dist.is_initialized():
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(args.output_path)
            self._write_config()
        _, val_lo, val_hi = batch_share(len(self.val_ds), args.bs_eval, self.rank, self.world)
        self.val_loader = make_loader(Subset(self.val_ds, range(val_lo, val_hi)), args.bs_eval, model.tokenizer.pad_id)
        self.sample_order = sample_order(self.data.val, args.seed)

    def _write_config(self) -> None:
        """The run folder's config.json (settings, model config, GPT-2, tokenizer, styles, sizes) and the
        run's one-line summary in the log."""
        args, model, tok, world = self.args, self.model, self.model.tokenizer, self.world
        n_train = trainable_parameters(model)  # = sum over self.params: parameters() yields a tied tensor once
        atomic_write_json(Path(args.output_path) / "config.json", {
            "args": vars(args), "model": asdict(model.cfg), "code_version": code_version(),
            # the LM (any architecture; the key names are GPT-2's, as before): hidden_size is GPT-2's n_embd
            "gpt2": {"path": args.gpt2_path, "n_embd": model.gpt.config.hidden_size,
                     "n_layer": model.gpt.config.num_hidden_layers, "model_type": model.gpt.config.model_type},
            "tokenizer": {"class": type(tok.tok).__name__, "vocab_size": tok.vocab_size, "end_token_id": tok.eos_id},
            "styles": self.data.styles, "trainable_parameters": n_train, "world_size": world,
            "effective_batch_size": args.bs_train * world * args.grad_accum})
        logger.info(f"run folder {Path(args.output_path)}; {len(self.train_ds)} train / {len(self.val_ds)} val "
                    f"captions; styles: {len(self.data.styles)}; trainable parameters {n_train / 1e6:.1f}M; "
                    f"effective batch size {args.bs_train * world * args.grad_accum} ({args.bs_train} x {world} "
                    f"processes x {args.grad_accum} accum)"
                    + (f"; DDP timeout {args.ddp_timeout:g} min" if dist.is_initialized() else ""))

    # ------------------------------------------------------------------ the loop's steps
    def save(self, name: str, rngs: list[dict] | None = None) -> Path | None:
        """Write checkpoint ``name`` from rank 0 (None on other ranks). Without ``rngs`` this gathers every
        rank's RNG state, so all ranks must call it."""
        rngs = rngs if rngs is not None else all_rng_states()
        if self.rank != 0:
            return None
        payload = checkpoint_payload(self.model, optimizer=self.optimizer.state_dict(),
                                     scheduler=self.scheduler.state_dict(),
                                     scaler=self.scaler.state_dict() if self.scaler is not None else None,
                                     train_state=asdict(self.state), rng=rngs[0], rng_per_rank=rngs,
                                     world_size=self.world, args=vars(self.args))
        path = self.ckpts.save(payload, name)
        self.state.last_checkpoint = str(path)
        return path

    def validate(self, tag_step: int, epoch_end: bool) -> dict:
        """Val loss (whole set) + samples; at epoch ends also caption metrics on --eval_subset images.
        ``best`` is kept by CIDEr when caption metrics run, else by val loss. All ranks call it: under DDP
        each takes its share of the val batches and of the images to caption, rank 0 scores, and every
        rank returns rank 0's metrics (the same as one process's): {'loss', 'perplexity', 'tokens', ...}."""
        args, state, writer = self.args, self.state, self.writer
        rngs = all_rng_states()  # validation draws no random numbers: the state to save for best.pt
        metrics = engine.evaluate_loss(self.model, self.val_loader, device=self.device, precision=args.precision)
        by_cider = args.eval_subset > 0
        caps = None
        if by_cider and epoch_end:
            from stylecap.eval.evaluation import quick_caption_metrics
            caps = quick_caption_metrics(self.model, self.data.val, args.eval_subset, args.bs_eval)  # None on ranks > 0
        if self.rank == 0:
            writer.add_scalar("val/loss", metrics["loss"], tag_step)
            logger.info(f"step {tag_step}: val/loss {metrics['loss']:.4f} (ppl {metrics['perplexity']:.2f})")
            rows = sample_rows(self.data.val, args.num_samples, self.validation_index(), order=self.sample_order)
            log_samples(self.model, self.data.val, rows, writer, tag_step)
            if caps is not None:
                metrics.update(caps)
                add_metric_scalars(writer, caps, "val", tag_step)  # x100, as the tables (and marked so)
                logger.info(f"step {tag_step}: val CIDEr {caps['CIDEr']:.4f}, BLEU-4 {caps['BLEU-4']:.4f} "
                            f"({args.eval_subset} images max)")
            score = metrics.get("CIDEr") if by_cider else -metrics["loss"]
            if score is not None and (state.best_metric is None or score > state.best_metric):
                state.best_metric = score
                self.save("best.pt", rngs)
        # every rank keeps rank 0's metrics and best; also the wait for rank 0 (bounded by --ddp_timeout)
        metrics, state.best_metric = from_rank0((metrics, state.best_metric))
        return metrics

    def validation_index(self) -> int:
        """k of the current validation, 0 for the run's first: the --eval_step validations and the epoch-end
        ones so far, counted from the TrainState (so a resumed run goes on where it stopped). Call it from
        validate: in on_step ``state.epoch`` counts the finished epochs, in end_epoch this one as well."""
        per_step = self.state.step // self.args.eval_step if self.args.eval_step else 0
        return per_step + self.state.epoch - 1

    def on_step(self, st: TrainState, m: dict, stop: GracefulStop | None = None) -> bool:
        """Logging, validation and periodic checkpoints after each optimizer step; True = stop here
        (a collective under DDP: every rank stops at the same step)."""
        args = self.args
        if self.rank == 0:
            for k in TRAIN_SCALARS:
                self.writer.add_scalar(f"train/{k}", m[k], st.step)
        if args.eval_step and st.step % args.eval_step == 0:
            self.validate(st.step, epoch_end=False)
        if args.save_by == "step" and st.step % args.save_step == 0:
            self.save(f"step_{st.step:08d}.pt")
        return stop is not None and stop.agreed()

    def train_one_epoch(self, stop: GracefulStop | None = None) -> dict:
        """The rest of the current epoch (from ``state.batch_in_epoch``), with ``on_step`` after every step.
        Returns stylecap.train.engine.train_one_epoch's {'loss', 'samples_per_s', 'batches', 'stopped'}."""
        args, state = self.args, self.state
        self.sampler.set_epoch(state.epoch)
        if hasattr(self.train_ds, "set_epoch"):  # the epoch of the text rows' noise (CaptionDataset)
            self.train_ds.set_epoch(state.epoch)
        loader = make_loader(self.train_ds, args.bs_train, self.model.tokenizer.pad_id,
                             SkipSampler(self.sampler, state.batch_in_epoch * args.bs_train), args.num_workers)
        return engine.train_one_epoch(self.train_model, loader, self.optimizer, self.scheduler, state,
                                      device=self.device, precision=args.precision, scaler=self.scaler,
                                      grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm,
                                      on_step=lambda st, m: self.on_step(st, m, stop), show_progress=self.rank == 0,
                                      total_batches=self.batches_per_epoch, log_every=args.log_every)

    def end_epoch(self, stats: dict) -> dict:
        """After a whole epoch: log it, validate (with caption metrics), record the history, checkpoint
        with --save_by epoch. Returns the validation metrics."""
        state = self.state
        logger.info(f"epoch {state.epoch}: train/loss {stats['loss']:.4f}, {stats['samples_per_s']:.1f} samples/s")
        state.epoch += 1
        state.batch_in_epoch = 0
        metrics = self.validate(state.step, epoch_end=True)
        state.history.append({"epoch": state.epoch, **metrics})
        if self.args.save_by == "epoch":
            self.save(f"epoch_{state.epoch:04d}.pt")
        return metrics

    def fit(self) -> int:
        """Train until --epochs; returns the exit code: 0 when done (last.pt saved), 128 + the signal when
        stopped by Ctrl-C/SIGTERM (a checkpoint saved at that step boundary), 130 when aborted by a second one."""
        t0 = time.time()
        try:
            with GracefulStop() as stop:
                while self.state.epoch < self.args.epochs:
                    stats = self.train_one_epoch(stop)
                    if not stats["stopped"]:
                        self.end_epoch(stats)
                    if stats["stopped"] or stop.agreed():  # at a step boundary: the checkpoint loses nothing
                        path = self.save(f"step_{self.state.step:08d}.pt")
                        if self.rank == 0:
                            self.writer.close()  # flush the TensorBoard events written so far
                            logger.warning(f"stopped: saved {path}; continue with --resume auto")
                        return stop.exit_code
        except KeyboardInterrupt:  # a second Ctrl-C: abort now
            logger.warning(f"aborted without saving; the last checkpoint is {self.state.last_checkpoint or 'none'}")
            return 130
        self.save("last.pt")
        if self.rank == 0:
            self.writer.close()
            logger.info(f"done in {time.time() - t0:.0f}s; checkpoints in {self.ckpts.folder}")
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0


def sample_order(data: FeatureStore, seed: int) -> np.ndarray:
    """Record indices of every distinct (image, style) pair of the validation data, in the order val/samples
    shows them: each style's pairs in a seeded random order, then the styles taken in turn (round-robin,
    in the data's style order). (n_pairs,) int64. A local numpy Generator: no global RNG is drawn from.
    One pass over two int arrays: a CC3M-size validation split is never materialised as records."""
    style = data.caption_style.numpy().astype(np.int64)  # (N,) -1 = plain
    keys = data.caption_row.numpy().astype(np.int64) * (len(data.styles) + 1) + style + 1
    _, first = np.unique(keys, return_index=True)  # (P,) the first record of each distinct pair
    first = first[np.random.default_rng(seed).permutation(len(first))]
    st = style[first]
    by_style = np.argsort(st, kind="stable")  # the shuffled pairs grouped by style, order kept within
    rank = np.empty_like(by_style)  # each pair's place within its style's shuffled list
    rank[by_style] = np.arange(len(st)) - np.searchsorted(st[by_style], st[by_style], side="left")
    return first[np.lexsort((st, rank))]  # round 0: one pair of each style, then round 1, ...


def sample_rows(data: FeatureStore, n: int, k: int = 0, *, seed: int = 0,
                order: np.ndarray | None = None) -> list[dict]:
    """The records captioned at validation k: the k-th window of n in ``order`` (sample_order(data, seed)
    when None), wrapping around, so that consecutive validations show every style and, over
    ceil(pairs / n) validations, every (image, style) pair. A pure function of its arguments."""
    order = sample_order(data, seed) if order is None else order
    n = min(n, len(order))
    return [data.record(int(order[(k * n + j) % len(order)])) for j in range(n)]


def log_samples(model: StyleCapModel, data: FeatureStore, rows: list[dict], writer, step: int) -> None:
    """Greedy captions of ``rows`` (from sample_rows): one log line each, and a markdown table in TensorBoard.
    Greedy decoding in eval mode draws no random numbers: the training RNG streams are untouched."""
    if not rows:
        return
    device = next(model.parameters()).device
    feats = data["clip_embedding"][[r["clip_embedding"] for r in rows]]  # (n, clip_size)
    styles = [r.get("style") for r in rows] if model.cfg.style_mode != "none" else None
    outs = generate_captions(model, feats.to(device), styles, DecodeConfig(), with_scores=False)
    lines = ["| image | style | generated | reference |", "|---|---|---|---|"]
    for r, o in zip(rows, outs):
        lines.append(f"| {r['image_id']} | {r.get('style') or ''} | {o[0]['caption']} | {r['caption']} |")
        logger.info(f"  sample {r['image_id']} [{r.get('style') or '-'}]: {o[0]['caption']!r}")
    writer.add_text("val/samples", "\n".join(lines), step)
