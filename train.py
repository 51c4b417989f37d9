r"""Train a StyleCap model (ClipCap mapper + style + GPT-2) on feature files; or evaluate one (--mode eval).

    python train.py --data_path data/features/personality/train.pkl --val_path .../val.pkl \
        --gpt2_path pre_model/gpt2 --finetune_gpt2 --output_path output/my_run
    tensorboard --logdir ./output
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from loguru import logger

from models.lora import lora_settings
from models.style_modes import STYLE_MODES
from stylecap.distributed import setup_distributed
from stylecap.eval.evaluation import add_eval_mode_args
from stylecap.train.data import drop_unknown_styles
from stylecap.train.engine import CheckpointManager
from stylecap.train.prepare import (DataPaths, build_seeded_model, encode_datasets, load_training_data,
                                    precision_warning, resume_from, run_folder)
from stylecap.train.prepare import make_loader  # noqa: F401  (train.make_loader: kept for existing callers)
from stylecap.train.trainer import Trainer
from stylecap.utils import UserError, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--config", help="JSON or YAML file of settings (a run folder's config.json works); flags override it")
    a("--mode", choices=["train", "eval"], default="train", help="train, or evaluate --model_path on --data_path")
    a("--data_path", nargs="+", action=DataPaths, help="training feature file(s) from process_*.py; several "
      "(--data_path A B or --data_path A --data_path B) are trained on together, e.g. image features and a "
      "process_text.py corpus, their styles the union (eval mode: the one split to score)")
    a("--val_path", help="validation feature file; without it a seeded split by image of --data_path")
    a("--val_fraction", type=float, default=0.05, help="share of images held out when --val_path is not given")
    a("--shard_window", type=int, default=0, help="sharded --data_path (docs/scale.md): shards shuffled together and "
      "kept mapped per rank; 0 = all of the rank's shards of the epoch")
    a("--shard_assignment", choices=["epoch", "fixed"], default="epoch", help="sharded --data_path: shards dealt "
      "to ranks anew each epoch (seeded), or once for the run (a node then only needs its ranks' shards)")
    a("--lm_path", "--gpt2_path", dest="gpt2_path", metavar="LM_PATH",
      help="Hugging Face causal-LM folder (weights, config, tokenizer): GPT-2, or a Llama- or Qwen2-style model "
      "such as SmolLM2 or Qwen2.5-0.5B (docs/decoders.md); default pre_model/gpt2. --gpt2_path is the older "
      "name. Eval mode: only for ClipCap weights or a frozen LM that moved")
    a("--output_path", help="run folder (default output/<data>-<mapper>-<tuned|frozen>-<style_mode>)")
    # model
    a("--mapping_type", choices=["mlp", "transformer"], default="mlp", help="mapper: ClipCap MLP or Transformer")
    a("--prefix_len", type=int, default=10, help="K, the number of prefix embeddings")
    a("--constant_len", type=int, default=10, help="Transformer mapper's clip length (projected feature tokens)")
    a("--clip_size", type=int, default=None, help="CLIP feature width (512 for ViT-B/32, 640 for RN50x4, 768 for "
      "ViT-L/14; default: the width of --data_path's features)")
    a("--num_layers", type=int, default=8, help="Transformer mapper depth")
    a("--style_mode", choices=["auto", *STYLE_MODES], default="auto",
      help="how style enters the model; auto = embedding when the data has styles, else none")
    a("--style_dim", type=int, default=64, help="width of the learned style embedding (style_mode embedding)")
    a("--normalize_prefix", action="store_true", help="L2-normalise CLIP features (saved, used everywhere); "
      "switched on when --data_path has text features (process_text.py)")
    a("--noise_variance", type=float, default=0.0, help="variance V of the Gaussian noise added to text feature "
      "rows (process_text.py files) in training, after L2 normalisation; CapDec's: 0.016 (0 = off; never in "
      "validation or on image rows)")
    a("--finetune_gpt2", action="store_true", help="'MLP + GPT-2 tuning': train GPT-2 too (else frozen)")
    a("--lora_r", type=int, default=0, help="LoRA: train rank-R adapters on the frozen GPT-2 (peft; e.g. 8; "
      "0 = off). Between frozen and --finetune_gpt2, which it excludes; see docs/lora.md")
    a("--lora_alpha", type=float, help="LoRA scale: the update is (alpha / r) B A (default 16, kept as r changes)")
    a("--lora_dropout", type=float, help="dropout on the adapters' inputs (default 0)")
    a("--lora_targets", help="comma list of module names to adapt (default per architecture: GPT-2 "
      "c_attn,attn.c_proj; Llama/Qwen2 q_proj,k_proj,v_proj,o_proj)")
    a("--gradient_checkpointing", action="store_true", help="recompute GPT-2 activations to save memory")
    a("--max_len", type=int, default=64, help="caption tokens kept in training (longer ones are truncated)")
    # optimisation
    a("--lr", type=float, default=2e-5, help="AdamW learning rate")
    a("--weight_decay", type=float, default=0.0, help="AdamW weight decay (ClipCap's: 0.0)")
    a("--epochs", type=int, default=10, help="training epochs")
    a("--bs_train", type=int, default=40, help="batch size per process")
    a("--bs_eval", type=int, default=64, help="batch size for validation loss and decoding (the decode batch "
      "size of predict.py, app.py and evaluate.py has this name too)")
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
    a("--log_every", type=int, default=50, help="steps between progress lines (step, loss, samples/s, ETA) when "
      "stderr is not a terminal (CI, nohup, Slurm; on one: a progress bar, the lines go to train.log); 0 = none")
    a("--num_samples", type=int, default=4, help="sample captions generated and logged at each validation")
    a("--eval_subset", type=int, default=200, help="val images captioned and scored at each epoch end (0 = off)")
    a("--resume", help="checkpoint path, or 'auto' for the newest checkpoint in the run folder (an exact resume); "
      "or an exported model folder (export.py): a new run from its weights (docs/export.md)")
    add_eval_mode_args(p)  # --model_path and the scoring and decoding flags, as evaluate.py --model_path
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
        if "lm_path" in cfg:  # the flag's new name; its setting is stored as gpt2_path
            cfg["gpt2_path"] = cfg.pop("lm_path")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UserError(f"--config {path}: unknown settings {unknown}; see train.py --help")
        parser.set_defaults(**{k: v for k, v in cfg.items() if k != "config"})
    args = parser.parse_args(argv)
    if args.mode == "train" and not args.data_path:
        raise UserError("--data_path is required: a feature file from process_flickr.py or process_personality.py")
    if isinstance(args.data_path, list) and len(args.data_path) == 1:
        args.data_path = args.data_path[0]  # one file: recorded as before (config.json, checkpoints)
    if args.mode == "eval" and isinstance(args.data_path, list):
        raise UserError(f"eval mode scores one --data_path, got {len(args.data_path)}; evaluate each split on its own")
    if args.mode == "train" and args.gpt2_path is None:
        args.gpt2_path = "pre_model/gpt2"
    if args.mode == "train":  # bad --lora_* combinations fail before any data is read
        lora_settings(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets, args.finetune_gpt2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "eval":
        from stylecap.eval.evaluation import run_eval_mode
        return run_eval_mode(args)
    rank, world, device = setup_distributed(args.device, args.ddp_timeout)
    data = load_training_data(args)  # also resolves --style_mode auto
    run_dir = run_folder(args)
    ckpts = CheckpointManager(run_dir / "checkpoints", args.max_checkpoint_num)
    if rank == 0:
        setup_logging(run_dir / "train.log")
    else:
        setup_logging(None, quiet=True)
    if rank == 0 and (why := precision_warning(args.precision, device)):  # bf16 on a CPU without native bf16
        logger.warning(why)
    data.val = drop_unknown_styles(data.val, data.styles)  # before any work: no epoch is lost to it
    resume = resume_from(args, ckpts)
    model = build_seeded_model(args, data, rank, device)  # seeds --seed, then --seed + rank
    train_ds, val_ds = encode_datasets(args, data, model, run_dir / "cache")
    trainer = Trainer(args, model, data, train_ds, val_ds, ckpts, rank=rank, world=world, device=device)
    trainer.resume(resume)
    trainer.start()
    return trainer.fit()


if __name__ == "__main__":
    run_main(main)
