r"""Train a StyleCap model (ClipCap mapper + style + GPT-2) on feature files; or evaluate one (--mode eval).

    python train.py --data_path data/features/personality/train.pkl --val_path .../val.pkl \
        --gpt2_path pre_model/gpt2 --finetune_gpt2 --output_path output/my_run
    tensorboard --logdir ./output
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from loguru import logger
from torch.utils.data import DataLoader, DistributedSampler, Subset

from models import ModelConfig, build_model, checkpoint_payload
from models.captioner import gpt2_fingerprint, load_checkpoint_file
from models.decoding import DecodeConfig, generate_captions
from models.style_modes import STYLE_MODES
from stylecap.train.data import (CaptionDataset, SkipSampler, collate, drop_unknown_styles, encode_data, split_by_image,
                           style_vocabulary)
from stylecap.distributed import batch_share, from_rank0, setup_distributed
from stylecap.eval.evaluation import add_decode_args
from stylecap.train.engine import (CheckpointManager, GracefulStop, TrainState, all_rng_states, evaluate_loss,
                             set_rng_state, train_one_epoch)
from stylecap.features import FeatureStore, clip_record, load_features
from stylecap.utils import UserError, atomic_write_json, code_version, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="JSON or YAML file of settings (a run folder's config.json works); flags override it")
    a("--mode", choices=["train", "eval"], default="train", help="train, or evaluate --model_path on --data_path")
    a("--data_path", help="training feature file from process_*.py (eval mode: the split to score)")
    a("--val_path", help="validation feature file; without it a seeded split by image of --data_path")
    a("--val_fraction", type=float, default=0.05, help="share of images held out when --val_path is not given")
    a("--gpt2_path", help="Hugging Face GPT-2 folder (weights, config, tokenizer); default pre_model/gpt2. "
      "Eval mode: only for ClipCap weights or a frozen GPT-2 that moved")
    a("--output_path", help="run folder (default output/<data>-<mapper>-<tuned|frozen>-<style_mode>)")
    a("--model_path", help="eval mode: checkpoint to evaluate (a StyleCap checkpoint or a ClipCap state dict)")
    # model
    a("--mapping_type", choices=["mlp", "transformer"], default="mlp", help="mapper: ClipCap MLP or Transformer")
    a("--prefix_len", type=int, default=10, help="K, the number of prefix embeddings")
    a("--constant_len", type=int, default=10, help="Transformer mapper's clip length (projected feature tokens)")
    a("--clip_size", type=int, default=512, help="CLIP feature width (512 for ViT-B/32, 640 for RN50x4)")
    a("--num_layers", type=int, default=8, help="Transformer mapper depth")
    a("--style_mode", choices=["auto", *STYLE_MODES], default="auto",
      help="how style enters the model; auto = embedding when the data has styles, else none")
    a("--style_dim", type=int, default=64, help="width of the learned style embedding (style_mode embedding)")
    a("--normalize_prefix", action="store_true", help="L2-normalise CLIP features (saved, used everywhere)")
    a("--finetune_gpt2", action="store_true", help="'MLP + GPT-2 tuning': train GPT-2 too (else frozen)")
    a("--gradient_checkpointing", action="store_true", help="recompute GPT-2 activations to save memory")
    a("--max_len", type=int, default=64, help="caption tokens kept in training (longer ones are truncated)")
    # optimisation
    a("--lr", type=float, default=2e-5, help="AdamW learning rate")
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay (ClipCap's: 0.0)")
    a("--epochs", type=int, default=10, help="training epochs")
    a("--bs_train", type=int, default=40, help="batch size per process")
    a("--bs_eval", type=int, default=64, help="batch size for validation loss and decoding")
    a("--grad_accum", type=int, default=1, help="batches accumulated per optimizer step")
    a("--warmup_steps", type=int, default=5000, help="linear warm-up steps, then linear decay to 0")
    a("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm (0 = off)")
    a("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
      help="autocast precision; fp16 uses a GradScaler (meant for GPUs; it also runs on the CPU, slowly)")
    a("--seed", type=int, default=42, help="seed for weights, data order and dropout")
    a("--num_workers", type=int, default=0, help="DataLoader workers (features are in memory; 0 is usually best)")
    a("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    a("--ddp_timeout", type=float, default=120, help="minutes a DDP rank waits for the others (e.g. while rank 0 "
      "validates) before the run fails instead of hanging")
    # checkpoints and evaluation
    a("--save_by", choices=["step", "epoch"], default="epoch", help="periodic checkpoints every --save_step or epoch")
    a("--save_step", type=int, default=1000, help="optimizer steps between checkpoints with --save_by step")
    a("--max_checkpoint_num", type=int, default=3, help="periodic checkpoints kept (newest); best/last extra")
    a("--eval_step", type=int, default=0, help="optimizer steps between extra val-loss checks (validation "
      "always runs at each epoch end)")
    a("--num_samples", type=int, default=4, help="sample captions generated and logged at each validation")
    a("--eval_subset", type=int, default=200, help="val images captioned and scored at each epoch end (0 = off)")
    a("--resume", help="checkpoint path, or 'auto' for the newest checkpoint in the run folder")
    g = p.add_argument_group("eval mode")
    g.add_argument("--train_captions", help="training captions (feature file or json) for style fidelity, copy rate "
                   "and the baseline; default: the data the checkpoint was trained on")
    g.add_argument("--clip_model_path", help="CLIP model for CLIPScore; default: the one named in the features' meta")
    g.add_argument("--no_java", action="store_true", help="score without Java (METEOR and SPICE skipped)")
    from stylecap.eval.segmentation import SEGMENT_CHOICES
    g.add_argument("--segment", choices=SEGMENT_CHOICES, default="auto",
                   help="tokens of Chinese captions for the metrics (as evaluate.py --segment): auto (Chinese -> char)")
    g.add_argument("--allow_clip_mismatch", action="store_true", help="evaluate even when --data_path's features "
                   "are not of the CLIP the model was trained with (checked by sha256 and normalisation)")
    add_decode_args(g, with_max_len=False)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = get_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        path = Path(pre.config)
        if not path.is_file():
            raise UserError(f"--config {path} not found")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml
            cfg = yaml.safe_load(text) or {}
        else:
            cfg = json.loads(text)
        cfg = cfg.get("args", cfg)  # a run folder's config.json keeps the settings under "args"
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UserError(f"--config {path}: unknown settings {unknown}; see train.py --help")
        parser.set_defaults(**{k: v for k, v in cfg.items() if k != "config"})
    args = parser.parse_args(argv)
    if args.mode == "train" and not args.data_path:
        raise UserError("--data_path is required: a feature file from process_flickr.py or process_personality.py")
    if args.mode == "train" and args.gpt2_path is None:
        args.gpt2_path = "pre_model/gpt2"
    return args


def default_run_name(args) -> str:
    stem = Path(args.data_path).stem
    return f"{stem}-{args.mapping_type}-{'tuned' if args.finetune_gpt2 else 'frozen'}-{args.style_mode}"


def make_loader(ds, batch_size, pad_id, sampler=None, num_workers=0, shuffle=False) -> DataLoader:
    # own generator: creating the iterator must not draw from the global RNG (exact resume)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=partial(collate, pad_id=pad_id), generator=torch.Generator(),
                      pin_memory=torch.cuda.is_available(), drop_last=False)


def check_resume(ck: dict, args, world: int, path: Path) -> None:
    """An exact resume needs the batch layout and the frozen GPT-2 it was made with: refuse otherwise."""
    old = ck.get("args") or {}
    for flag in ("bs_train", "grad_accum"):
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "eval":
        from stylecap.eval.evaluation import run_eval_mode
        return run_eval_mode(args)
    rank, world, device = setup_distributed(args.device, args.ddp_timeout)
    train_data = load_features(args.data_path)
    if args.val_path:
        val_data = load_features(args.val_path)
    else:
        train_data, val_data = split_by_image(train_data, args.val_fraction, args.seed)
    styles = style_vocabulary(train_data)
    if args.style_mode == "auto":
        args.style_mode = "embedding" if styles else "none"
    if args.style_mode == "none":
        styles = []
    run_dir = Path(args.output_path or Path("output") / default_run_name(args))
    args.output_path = str(run_dir)
    ckpts = CheckpointManager(run_dir / "checkpoints", args.max_checkpoint_num)
    if rank == 0:
        setup_logging(run_dir / "train.log")
    else:
        setup_logging(None, quiet=True)
    val_data = drop_unknown_styles(val_data, styles)  # before any work: no epoch is lost to it
    newest = ckpts.newest()  # opens every checkpoint's header: once
    if args.resume is None and newest is not None:
        raise UserError(f"run folder {run_dir} already has checkpoints; pass --resume auto to continue "
                        "or a new --output_path")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    cfg = ModelConfig(gpt2_path=args.gpt2_path, mapping_type=args.mapping_type, prefix_len=args.prefix_len,
                      constant_len=args.constant_len, clip_size=args.clip_size, num_layers=args.num_layers,
                      style_mode=args.style_mode, styles=styles, style_dim=args.style_dim,
                      normalize_prefix=args.normalize_prefix, finetune_gpt2=args.finetune_gpt2, max_len=args.max_len)
    dim = train_data["clip_embedding"].shape[1]
    if dim != args.clip_size:
        raise UserError(f"{args.data_path} has {dim}-d features but --clip_size is {args.clip_size}; "
                        f"pass --clip_size {dim}")
    model = build_model(cfg)
    torch.manual_seed(args.seed + rank)  # then each rank its own dropout stream
    if args.gradient_checkpointing:
        model.gpt.activation_checkpointing_enable()
    model.to(device)
    tok = model.tokenizer
    cache = run_dir / "cache"
    # Tokenized once per machine: local rank 0 writes the cache, the other ranks then map the same file,
    # so N ranks share one copy of the tokens (as of the features) in the page cache.
    local_first = dist.is_initialized() and int(os.environ.get("LOCAL_RANK", 0)) != 0
    if local_first:
        dist.barrier()
    train_enc = encode_data(train_data, tok, args.max_len, cache, args.data_path)
    val_enc = encode_data(val_data, tok, args.max_len, cache, args.val_path or args.data_path)
    if dist.is_initialized() and not local_first:
        dist.barrier()
    train_ds = CaptionDataset(train_data["clip_embedding"], train_enc)
    val_ds = CaptionDataset(val_data["clip_embedding"], val_enc)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"empty training ({len(train_ds)}) or validation ({len(val_ds)}) set; check --data_path/--val_path")

    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (0.38 s -> 0.08 s per step for 156M parameters on this CPU)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, fused=True)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    batches_per_epoch = -(-len(sampler) // args.bs_train)
    steps_per_epoch = -(-batches_per_epoch // args.grad_accum)
    from transformers import get_linear_schedule_with_warmup
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup_steps, args.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    state = TrainState()

    resume = newest if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume is not None:
        ck = load_checkpoint_file(resume)
        check_resume(ck, args, world, resume)
        missing, unexpected = model.load_state_dict(ck["model"], strict=False)
        if unexpected or [k for k in missing if args.finetune_gpt2 or not k.startswith("gpt.")]:
            raise UserError(f"{resume} does not fit these settings (missing {missing[:2]}, unexpected {unexpected[:2]}); "
                            "resume with the command (or --config config.json) that made it")
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state = TrainState(**ck["train_state"])
        state.last_checkpoint = str(resume)
        set_rng_state(ck.get("rng_per_rank", [ck["rng"]])[rank])
        logger.info(f"resumed from {resume} at step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch}")
    elif args.resume == "auto":
        logger.info(f"--resume auto: no checkpoint in {ckpts.folder}, starting fresh")

    train_model = model
    if dist.is_initialized():
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir))
        n_train = sum(p.numel() for p in params)
        atomic_write_json(run_dir / "config.json", {
            "args": vars(args), "model": asdict(cfg), "code_version": code_version(),
            "gpt2": {"path": args.gpt2_path, "n_embd": model.gpt.config.n_embd, "n_layer": model.gpt.config.n_layer},
            "tokenizer": {"class": type(tok.tok).__name__, "vocab_size": tok.vocab_size, "end_token_id": tok.eos_id},
            "styles": styles, "trainable_parameters": n_train, "world_size": world,
            "effective_batch_size": args.bs_train * world * args.grad_accum})
        logger.info(f"run folder {run_dir}; {len(train_ds)} train / {len(val_ds)} val captions; styles: {len(styles)}; "
                    f"trainable parameters {n_train / 1e6:.1f}M; effective batch size "
                    f"{args.bs_train * world * args.grad_accum} ({args.bs_train} x {world} processes x {args.grad_accum} accum)"
                    + (f"; DDP timeout {args.ddp_timeout:g} min" if dist.is_initialized() else ""))

    # each rank computes the val loss of its block of whole val batches (those of one process); summed across ranks
    _, val_lo, val_hi = batch_share(len(val_ds), args.bs_eval, rank, world)
    val_loader = make_loader(Subset(val_ds, range(val_lo, val_hi)), args.bs_eval, tok.pad_id)
    sample_rows = _sample_rows(val_data, args.num_samples)

    def save(name: str, rngs: list[dict] | None = None) -> Path | None:
        """Write a checkpoint from rank 0. Without ``rngs`` this gathers every rank's RNG state, so all
        ranks must call it."""
        rngs = rngs if rngs is not None else all_rng_states()
        if rank != 0:
            return None
        payload = checkpoint_payload(model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                     clip=clip_record(train_data["meta"]),  # the CLIP it was trained on
                                     scaler=scaler.state_dict() if scaler is not None else None,
                                     train_state=asdict(state), rng=rngs[0], rng_per_rank=rngs, world_size=world,
                                     args=vars(args))
        path = ckpts.save(payload, name)
        state.last_checkpoint = str(path)
        return path

    def validate(tag_step: int, epoch_end: bool) -> dict:
        """Val loss (whole set) + samples; at epoch ends also caption metrics on --eval_subset images.
        ``best`` is kept by CIDEr when caption metrics run, else by val loss. All ranks call it: under DDP
        each takes its share of the val batches and of the images to caption, rank 0 scores, and every
        rank returns rank 0's metrics (the same as one process's)."""
        rngs = all_rng_states()  # validation draws no random numbers: the state to save for best.pt
        metrics = evaluate_loss(model, val_loader, device=device, precision=args.precision)
        by_cider = args.eval_subset > 0
        caps = None
        if by_cider and epoch_end:
            from stylecap.eval.evaluation import quick_caption_metrics
            caps = quick_caption_metrics(model, val_data, args.eval_subset, args.bs_eval)  # None on ranks > 0
        if rank == 0:
            writer.add_scalar("val/loss", metrics["loss"], tag_step)
            logger.info(f"step {tag_step}: val/loss {metrics['loss']:.4f} (ppl {metrics['perplexity']:.2f})")
            _log_samples(model, val_data, sample_rows, writer, tag_step)
            if caps is not None:
                metrics.update(caps)
                for k, v in caps.items():
                    writer.add_scalar(f"val/{k}", v, tag_step)
                logger.info(f"step {tag_step}: val CIDEr {caps['CIDEr']:.4f}, BLEU-4 {caps['BLEU-4']:.4f} "
                            f"({args.eval_subset} images max)")
            score = metrics.get("CIDEr") if by_cider else -metrics["loss"]
            if score is not None and (state.best_metric is None or score > state.best_metric):
                state.best_metric = score
                save("best.pt", rngs)
        # every rank keeps rank 0's metrics and best; also the wait for rank 0 (bounded by --ddp_timeout)
        metrics, state.best_metric = from_rank0((metrics, state.best_metric))
        return metrics

    def on_step(st: TrainState, m: dict) -> bool:
        """Logging, validation and periodic checkpoints after each optimizer step; True = stop here."""
        if rank == 0:
            for k in ("loss", "lr", "samples_per_s", "grad_norm"):
                writer.add_scalar(f"train/{k}", m[k], st.step)
        if args.eval_step and st.step % args.eval_step == 0:
            validate(st.step, epoch_end=False)
        if args.save_by == "step" and st.step % args.save_step == 0:
            save(f"step_{st.step:08d}.pt")
        return stop.agreed()

    t0 = time.time()
    try:
        with GracefulStop() as stop:
            while state.epoch < args.epochs:
                sampler.set_epoch(state.epoch)
                loader = make_loader(train_ds, args.bs_train, tok.pad_id,
                                     SkipSampler(sampler, state.batch_in_epoch * args.bs_train), args.num_workers)
                stats = train_one_epoch(train_model, loader, optimizer, scheduler, state, device=device,
                                        precision=args.precision, scaler=scaler, grad_accum=args.grad_accum,
                                        max_grad_norm=args.max_grad_norm, on_step=on_step, show_progress=rank == 0,
                                        total_batches=batches_per_epoch)
                if not stats["stopped"]:
                    logger.info(f"epoch {state.epoch}: train/loss {stats['loss']:.4f}, "
                                f"{stats['samples_per_s']:.1f} samples/s")
                    state.epoch += 1
                    state.batch_in_epoch = 0
                    state.history.append({"epoch": state.epoch, **validate(state.step, epoch_end=True)})
                    if args.save_by == "epoch":
                        save(f"epoch_{state.epoch:04d}.pt")
                if stats["stopped"] or stop.agreed():  # at a step boundary: the checkpoint loses nothing
                    path = save(f"step_{state.step:08d}.pt")
                    if rank == 0:
                        writer.close()  # flush the TensorBoard events written so far
                        logger.warning(f"stopped: saved {path}; continue with --resume auto")
                    return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: abort now
        logger.warning(f"aborted without saving; the last checkpoint is {state.last_checkpoint or 'none'}")
        return 130
    save("last.pt")
    if rank == 0:
        writer.close()
        logger.info(f"done in {time.time() - t0:.0f}s; checkpoints in {ckpts.folder}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _sample_rows(data: FeatureStore, n: int) -> list[dict]:
    """The first n distinct (image, style) pairs of the validation data: fixed across validations.
    Reads records one at a time: the validation split of a CC3M-size file is never materialised."""
    seen, rows = set(), []
    for i in range(len(data)):
        if len(rows) == n:
            break
        key = (int(data.caption_row[i]), int(data.caption_style[i]))
        if key not in seen:
            seen.add(key)
            rows.append(data.record(i))
    return rows


def _log_samples(model, data: FeatureStore, rows: list[dict], writer, step: int) -> None:
    if not rows:
        return
    device = next(model.parameters()).device
    feats = data["clip_embedding"][[r["clip_embedding"] for r in rows]]
    styles = [r.get("style") for r in rows] if model.cfg.style_mode != "none" else None
    outs = generate_captions(model, feats.to(device), styles, DecodeConfig(), with_scores=False)
    lines = ["| image | style | generated | reference |", "|---|---|---|---|"]
    for r, o in zip(rows, outs):
        lines.append(f"| {r['image_id']} | {r.get('style') or ''} | {o[0]['caption']} | {r['caption']} |")
        logger.info(f"  sample {r['image_id']} [{r.get('style') or '-'}]: {o[0]['caption']!r}")
    writer.add_text("val/samples", "\n".join(lines), step)


if __name__ == "__main__":
    run_main(main)
