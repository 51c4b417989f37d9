"""Caption a feature file with a model, score it, and write predictions, metrics and the report.

Shared by ``predict.py --features``, ``evaluate.py --model_path`` (= ``train.py --mode eval``) and training's
end-of-epoch evaluation; the captioning itself is stylecap.eval.captioning's.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from loguru import logger

from models.captioner import StyleCapModel
from models.decoding import DecodeConfig
from stylecap.distributed import rank_and_world
from stylecap.encoders import spec_exists
from stylecap.eval.captioning import caption_items_across_ranks, eval_items, with_scale
from stylecap.utils import atomic_write_json, atomic_write_text


def add_decode_args(p: argparse.ArgumentParser, with_max_len: bool = True) -> None:
    """The decoding flags shared by predict.py and train.py --mode eval."""
    a = p.add_argument
    a("--decode", choices=["greedy", "beam", "sample"], default="greedy", help="decoding strategy")
    a("--beam_size", type=int, default=5, help="beams for --decode beam")
    a("--length_penalty", type=float, default=1.0, help="beam score = sum log p / length ** length_penalty")
    a("--temperature", type=float, default=1.0, help="sampling temperature")
    a("--topk", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    a("--topp", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    a("--num_generate", type=int, default=1, help="captions per image (beam or sample)")
    if with_max_len:
        a("--max_len", type=int, default=None, help="max new tokens (default: the model's limit)")


def add_eval_mode_args(p: argparse.ArgumentParser, run_flags: bool = False) -> argparse._ArgumentGroup:
    """The flags of eval mode (caption --data_path with --model_path, then score), one definition for
    ``train.py --mode eval`` and ``evaluate.py --model_path``; evaluate.py's scoring of a predictions file
    reads --train_captions, --clip_model_path, --no_java and --segment too. ``run_flags``: also the flags
    that train.py defines for training as well (--data_path, --lm_path/--gpt2_path, --device, --seed, --bs_eval,
    --ddp_timeout), with train.py's defaults, so that both scripts run the same evaluation."""
    from stylecap.eval.segmentation import SEGMENT_CHOICES
    g = p.add_argument_group("eval mode", "caption --data_path with --model_path, then score it (--train_captions,\n"
                             "--clip_model_path, --no_java and --segment also serve evaluate.py --predictions)")
    a = g.add_argument
    a("--model_path", help="eval mode: checkpoint to evaluate (a StyleCap checkpoint or a ClipCap state dict)")
    if run_flags:
        a("--data_path", help="eval mode: the feature file (from process_*.py) to caption and score")
        a("--lm_path", "--gpt2_path", dest="gpt2_path", metavar="LM_PATH", help="eval mode: language-model "
          "(GPT-2) folder, only for ClipCap weights or a frozen LM that moved; --gpt2_path is the older name")
        a("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
        a("--seed", type=int, default=42, help="seed of --decode sample (each batch has its own, from it)")
        a("--bs_eval", type=int, default=64, help="images x styles decoded per batch")
        a("--ddp_timeout", type=float, default=120, help="minutes a torchrun rank waits for the others")
    a("--train_captions", help="training captions (feature file, PersonalityCaptions or COCO json): trains the "
      "style-fidelity classifier, measures the share of copied captions and the most-frequent-caption baseline; "
      "eval mode's default: the data the checkpoint was trained on")
    a("--clip_model_path", help="CLIP model (e.g. pre_model/ViT-B-32.pt) for CLIPScore/RefCLIPScore; needs the "
      "references to be a feature file made with the same CLIP; eval mode's default: the one named in the "
      "features' meta")
    a("--clip_backend", choices=("auto", "openai", "open_clip", "hf"), default=None,
      help="which library loads --clip_model_path (default: auto, or the backend the features' meta names)")
    a("--no_java", action="store_true",
      help="do not use Java: pure-Python tokenization for BLEU/ROUGE-L/CIDEr; METEOR and SPICE skipped")
    a("--segment", choices=SEGMENT_CHOICES, default="auto",
      help="how Chinese (CJK) captions are split into tokens for every metric, the diversity measures and "
      "the style classifier: auto (default: each caption by its own script; Chinese -> char, other text "
      "through the PTB tokenizer; a mixed set is reported as mixed), char (each CJK character a token, as published Flickr30k-CN/COCO-CN tables), "
      "jieba (jieba words), none (PTBTokenizer only, which leaves Chinese sentences whole)")
    a("--allow_clip_mismatch", action="store_true", help="evaluate even when --data_path's features "
      "are not of the CLIP the model was trained with (checked by sha256 and normalisation)")
    add_decode_args(g, with_max_len=False)
    a("--style_scale", type=float, default=1.0, help="eval mode: caption each image in its own style at this "
      "strength (0 = no style, 1 = as trained, above 1 = exaggerated; style_mode embedding or token)")
    return g


def decode_config(args) -> DecodeConfig:
    """DecodeConfig from the flags of add_decode_args (max_len absent: the model's own limit)."""
    return DecodeConfig(args.decode, args.beam_size, args.length_penalty, args.temperature, args.topk, args.topp,
                        args.num_generate, getattr(args, "max_len", None))


def captioned_image(path: str | Path, captions: list[str], width: int = 512):
    """The image, resized to ``width``, with its captions written under it (PIL RGB image)."""
    from PIL import Image, ImageDraw
    from stylecap.clip_utils import load_image
    img = load_image(path)
    img = img.resize((width, max(1, round(img.height * width / img.width))))
    lines = [ln for c in captions for ln in textwrap.wrap(c, 64)]
    canvas = Image.new("RGB", (width, img.height + 14 * len(lines) + 10), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, ln in enumerate(lines):
        draw.text((6, img.height + 5 + 14 * i), ln, fill="black")
    return canvas


def write_predictions(folder: str | Path, preds: list[dict], style_column: bool = False) -> tuple[Path, Path]:
    """caption_generate.txt (image<TAB>caption, as ClipCap-Chinese; ``style_column``: image<TAB>style<TAB>caption)
    and predictions.jsonl."""
    folder = Path(folder)
    txt, jsonl = folder / "caption_generate.txt", folder / "predictions.jsonl"
    style = (lambda p: f"{p['style']}\t") if style_column else (lambda p: "")
    atomic_write_text(txt, "".join(f"{p['image']}\t{style(p)}{p['caption']}\n" for p in preds))
    atomic_write_text(jsonl, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    return txt, jsonl


def references_of(data: dict) -> list[dict]:
    return [{"image_id": c["image_id"], "style": c.get("style"), "caption": c["caption"]} for c in data["captions"]]


def log_preview(preds: list[dict], n: int = 5) -> None:
    for p in preds[:n]:
        style = f" [{p['style']}]" if p.get("style") else ""
        logger.info(f"{p['image']}{style}: {p['caption']}")
    if len(preds) > n:
        logger.info(f"... {len(preds) - n} more")


def quick_caption_metrics(model: StyleCapModel, data: dict, n_images: int, batch_size: int = 64) -> dict | None:
    """Greedy captions for the first ``n_images`` images, scored with BLEU-4, ROUGE-L and CIDEr only
    (no METEOR/SPICE: they start Java and cost seconds). Used at each epoch end to keep ``best``.
    Under torchrun all ranks call it and share the captioning; rank 0 scores and gets the metrics, the
    others get None."""
    from stylecap.eval.coco_metrics import score_captions
    from stylecap.eval.matching import match_predictions
    rank, _ = rank_and_world()
    preds = caption_items_across_ranks(model, data["clip_embedding"], eval_items(data, model, max_images=n_images),
                                       DecodeConfig(), batch_size, progress=rank == 0, with_scores=False)
    if rank != 0:
        return None
    mt = match_predictions(preds, references_of(data))
    scores = score_captions(mt.predictions, {k: mt.references[k] for k in mt.predictions}, spice=False,
                            metrics=("BLEU", "ROUGE-L", "CIDEr"), quiet=True)
    return {m: scores[m] for m in ("BLEU-4", "ROUGE-L", "CIDEr")}


def run_eval_mode(args: argparse.Namespace) -> int:
    """``evaluate.py --model_path`` and ``train.py --mode eval`` (the flags of add_eval_mode_args): caption
    --data_path with --model_path, score it, write the eval folder. Under torchrun every rank captions its
    share of the images; rank 0 gathers them, scores and writes."""
    from stylecap.utils import UserError
    if not args.model_path or not args.data_path:
        raise UserError("eval mode needs --model_path (a checkpoint) and --data_path (a feature file to score)")
    out = eval_folder(args.model_path, args.data_path, args.output_path)
    captioned = _caption_split(args, out)
    if captioned is None:  # ranks > 0: their share is with rank 0
        return 0
    _score_and_write(args, out, *captioned)
    return 0


def eval_folder(model_path: str | Path, data_path: str | Path, output_path: str | Path | None) -> Path:
    """--output_path, or output/eval-<run>-<split> (the run folder of .../<run>/checkpoints/x.pt)."""
    model_path, data_path = Path(model_path), Path(data_path)
    return Path(output_path or Path("output") / f"eval-{model_path.parent.parent.name or model_path.stem}-{data_path.stem}")


def _caption_split(args: argparse.Namespace, out: Path):
    """Every rank: load the model (the checkpoint file opened once) and the features, check that they are of
    the model's CLIP, caption its share. Rank 0 gets (model, the checkpoint's settings, data, decoding,
    all predictions); the others None."""
    import torch.distributed as dist
    from models.captioner import model_from_file, read_checkpoint
    from stylecap.clip_check import check_features_clip
    from stylecap.distributed import setup_distributed
    from stylecap.features import load_features
    from stylecap.utils import setup_logging
    model_path, data_path = Path(args.model_path), Path(args.data_path)
    rank, world, device = setup_distributed(args.device, args.ddp_timeout)
    try:
        if rank == 0:
            setup_logging(out / "eval.log")
        else:
            setup_logging(None, quiet=True)
        ck = read_checkpoint(model_path)  # the one read: the model, its CLIP record and its training settings
        model = model_from_file(ck, model_path, args.gpt2_path, device)
        settings = checkpoint_settings(ck)
        del ck  # the weights are in the model now
        # features of the model's CLIP (compared in memory), before they are loaded and captioned
        check_features_clip(model.cfg, model_path, data_path, "--data_path", args.allow_clip_mismatch)
        data = load_features(data_path)
        dc = decode_config(args)
        dc.max_len = None  # train.py's --max_len is the training truncation; decode to the model's own limit
        # --seed seeds each batch: --decode sample is repeatable, whatever the number of processes
        items = [(image_id, row, with_scale(model.cfg, style, args.style_scale))  # the same items at scale 1
                 for image_id, row, style in eval_items(data, model)]
        preds = caption_items_across_ranks(model, data["clip_embedding"], items, dc,
                                           args.bs_eval, progress=True, seed=args.seed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # the captions are gathered: rank 0 scores alone, the others are done
    return (model, settings, data, dc, preds) if rank == 0 else None


def _score_and_write(args: argparse.Namespace, out: Path, model: StyleCapModel, settings: dict, data: dict,
                     dc: DecodeConfig, preds: list[dict]) -> None:
    """Rank 0: predictions, eval_config.json, metrics.json, report.html and the TensorBoard events."""
    from stylecap.eval.scoring import run_evaluation
    from stylecap.eval.tables import format_table
    data_path = Path(args.data_path)
    _, jsonl = write_predictions(out, preds)
    log_preview(preds)
    train_args = write_eval_config(out, model, settings, Path(args.model_path), data_path, dc, args.style_scale)

    train_captions = args.train_captions
    if train_captions is None:  # default: the data the model was trained on, if it is still there
        trained_on = train_args.get("data_path")  # a list when trained on several files (text corpora too)
        files = [f for f in (trained_on if isinstance(trained_on, list) else [trained_on]) if f and Path(f).is_file()]
        train_captions = files if len(files) > 1 else (files[0] if files else None)
    meta = data.get("meta", {})
    clip_path = args.clip_model_path or meta.get("clip_model")
    clip_backend = args.clip_backend or (meta.get("clip_backend", "auto") if not args.clip_model_path else "auto")
    image_dir = meta.get("image_dir") if meta.get("image_dir") and Path(meta["image_dir"]).is_dir() else None
    metrics = run_evaluation(jsonl, data_path, out / "metrics.json", report=out / "report.html",
                             train_captions=train_captions or None, image_dir=image_dir,
                             clip_model_path=clip_path if clip_path and spec_exists(clip_path) else None,
                             java=False if args.no_java else None, segment=args.segment, clip_backend=clip_backend)
    print(format_table(metrics))
    _tensorboard_eval(out, metrics, preds, meta, settings["step"] or 0)
    logger.info(f"predictions, metrics.json and report.html in {out}")


def checkpoint_settings(ck) -> dict:
    """{"train_args", "model_config", "step"} of a checkpoint read with read_checkpoint ({}, {}, None for
    ClipCap weights)."""
    ck = ck if isinstance(ck, dict) and "format" in ck else {}  # a ClipCap state dict has no settings
    return {"train_args": ck.get("args") or {}, "model_config": ck.get("config") or {},
            "step": (ck.get("train_state") or {}).get("step")}  # optimizer steps done (None: ClipCap weights)


def write_eval_config(out: Path, model: StyleCapModel, settings: dict, model_path: Path, data_path: Path,
                      dc: DecodeConfig, style_scale: float = 1.0) -> dict:
    """eval_config.json: what was evaluated and how (the checkpoint's training settings, the decoding),
    so that compare.py can label eval folders by the settings in which they differ. ``settings``: from
    checkpoint_settings. A --style_scale other than 1 is recorded with the decoding ("decode.style_scale"
    in compare.py, "--style_scale" in the report's command). Returns the checkpoint's training settings
    ({} for ClipCap weights)."""
    from dataclasses import asdict
    from models.captioner import trainable_parameters
    params = trainable_parameters(model)  # each once: the tied GPT-2 embedding is one parameter, as in training
    atomic_write_json(out / "eval_config.json", {
        "model_path": str(model_path.resolve()), "data_path": str(data_path),
        "decode": {**asdict(dc), **({"style_scale": style_scale} if style_scale != 1.0 else {})},
        "train_args": settings["train_args"], "model_config": settings["model_config"],
        "trainable_parameters": params, "checkpoint_step": settings["step"]})
    return settings["train_args"]


def captions_by_image(preds: list[dict]) -> dict[str, list[str]]:
    """image -> its captions labelled with their style ("[Happy] ..."), for drawing under the image."""
    out: dict[str, list[str]] = {}
    for p in preds:
        out.setdefault(p["image"], []).append(f"[{p['style']}] {p['caption']}" if p.get("style") else p["caption"])
    return out


EVAL_TAGS = "z_eval"  # TensorBoard's Time Series page orders tag groups by name: after train/ and val/


def _tensorboard_eval(out: Path, metrics: dict, preds: list[dict], meta: dict, step: int,
                      n_images: int = 8) -> None:
    """Metrics as scalars (x100 as the tables) and a few images with their captions, for `tensorboard
    --logdir`, at ``step``: the evaluated checkpoint's optimizer step, so that they sit on the training
    axis next to the run's val/ curves (under z_eval/: a group after train/ and val/)."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter
    from stylecap.eval.inputs import image_paths_for
    from stylecap.eval.tensorboard import add_metric_scalars
    by_image = captions_by_image(preds)
    image_dir = meta.get("image_dir")
    files = image_paths_for(image_dir, list(by_image), None) if image_dir and Path(image_dir).is_dir() else {}
    with SummaryWriter(str(out)) as w:
        add_metric_scalars(w, metrics, EVAL_TAGS, step)
        shown = [image_id for image_id in by_image if image_id in files][:n_images]
        for i, image_id in enumerate(shown):
            img = captioned_image(files[image_id], by_image[image_id], 320)
            w.add_image(f"{EVAL_TAGS}/captions/{i}", np.asarray(img), step, dataformats="HWC")
