"""Caption a feature file with a model, score it, and write predictions, metrics and the report.

Shared by ``predict.py --features``, ``train.py --mode eval`` and training's end-of-epoch evaluation.
"""
from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from models.captioner import StyleCapModel
from models.decoding import DecodeConfig, generate_captions
from stylecap.distributed import batch_share, gather_lists, rank_and_world
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


def eval_items(data: dict, model: StyleCapModel, styles: list[str] | None = None,
               max_images: int | None = None) -> list[tuple[str, int, str | None]]:
    """(image_id, feature row, style) to caption: each image with its own style(s) from the records,
    or with every style in ``styles``; plain models caption each image once."""
    items, seen = [], set()
    for c in data["captions"]:
        if model.cfg.style_mode == "none":
            wanted = [None]
        else:
            wanted = styles if styles is not None else [c.get("style")]
        for s in wanted:
            key = (c["image_id"], s)
            if key not in seen:
                seen.add(key)
                items.append((c["image_id"], c["clip_embedding"], s))
    if max_images is not None:
        keep = list(dict.fromkeys(i for i, _, _ in items))[:max_images]
        items = [it for it in items if it[0] in set(keep)]
    return items


def caption_items(model: StyleCapModel, features: torch.Tensor, items: list[tuple[str, int, str | None]],
                  dc: DecodeConfig, batch_size: int = 64, progress: bool = False,
                  with_scores: bool = True, seed: int | None = None, first_batch: int = 0) -> list[dict]:
    """Predictions {"image", "style", "caption", "score"}, ``num_generate`` per item, in item order.
    ``with_scores=False``: score None. ``seed``: each batch draws its samples from a seed of its own, made
    from (seed, its batch number counted from ``first_batch``), so --decode sample gives the same captions
    however the batches are spread over processes (None: the global RNG runs on, as predict.py's --seed).
    ``progress``: a bar in items/s with an ETA, and a closing log line with the rate."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    preds, t0 = [], time.perf_counter()
    with tqdm(total=len(items), disable=not progress, desc="captioning", unit="img", leave=False) as bar:
        for b, start in enumerate(range(0, len(items), batch_size)):
            chunk = items[start:start + batch_size]
            feats = features[[row for _, row, _ in chunk]].to(device)
            if seed is not None:
                torch.manual_seed(batch_seed(seed, first_batch + b))  # all devices
            outs = generate_captions(model, feats, [s for _, _, s in chunk], dc, with_scores)
            for (image_id, _, style), gens in zip(chunk, outs):
                for g in gens:
                    preds.append({"image": image_id, "style": style, "caption": g["caption"], "score": g["score"]})
            bar.update(len(chunk))
    if progress and items:
        took = time.perf_counter() - t0
        logger.info(f"captioned {len(items)} items in {took:.1f}s ({len(items) / max(took, 1e-9):.1f} items/s)")
    return preds


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``: numpy's SeedSequence mixes the pair, so that (seed, batch + 1) is not
    (seed + 1, batch) and runs with neighbouring --seed values share no batch's samples."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def caption_items_across_ranks(model: StyleCapModel, features: torch.Tensor,
                               items: list[tuple[str, int, str | None]], dc: DecodeConfig, batch_size: int = 64,
                               progress: bool = False, with_scores: bool = True,
                               seed: int | None = None) -> list[dict]:
    """caption_items under torchrun: each rank captions a contiguous block of whole batches, and every rank
    gets all predictions back in item order. The batches are the ones one process makes, so the result is
    identical to one process's (greedy and beam; sample too when ``seed`` is given). All ranks must call
    it; without a process group it is caption_items. Progress is shown by rank 0, for its own share."""
    rank, world = rank_and_world()
    first, lo, hi = batch_share(len(items), batch_size, rank, world)
    if progress and rank == 0 and world > 1:
        logger.info(f"captioning {len(items)} items on {world} processes; rank 0 does items {lo}-{hi - 1}")
    local = caption_items(model, features, items[lo:hi], dc, batch_size, progress and rank == 0, with_scores,
                          seed, first)
    return gather_lists(local)


def write_predictions(folder: str | Path, preds: list[dict]) -> tuple[Path, Path]:
    """caption_generate.txt (image<TAB>caption, as ClipCap-Chinese) and predictions.jsonl."""
    folder = Path(folder)
    txt, jsonl = folder / "caption_generate.txt", folder / "predictions.jsonl"
    atomic_write_text(txt, "".join(f"{p['image']}\t{p['caption']}\n" for p in preds))
    atomic_write_text(jsonl, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
    return txt, jsonl


def references_of(data: dict) -> list[dict]:
    return [{"image_id": c["image_id"], "style": c.get("style"), "caption": c["caption"]} for c in data["captions"]]


def log_preview(preds: list[dict], n: int = 5) -> None:
    for p in preds[:n]:
        style = f" [{p['style']}]" if p.get("style") else ""
        logger.info(f"{p['image']}{style}: {p['caption']}")


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


def run_eval_mode(args) -> int:
    """train.py --mode eval: caption --data_path with --model_path, score it, write the run folder.
    Under torchrun every rank captions its share of the images; rank 0 gathers them, scores and writes."""
    import torch.distributed as dist
    from models import load_model
    from stylecap.distributed import setup_distributed
    from stylecap.features import load_features
    from stylecap.eval.scoring import run_evaluation
    from stylecap.eval.tables import format_table
    from stylecap.utils import UserError, setup_logging
    if not args.model_path or not args.data_path:
        raise UserError("--mode eval needs --model_path (a checkpoint) and --data_path (a feature file to score)")
    model_path, data_path = Path(args.model_path), Path(args.data_path)
    out = Path(args.output_path or Path("output") / f"eval-{model_path.parent.parent.name or model_path.stem}-{data_path.stem}")
    rank, world, device = setup_distributed(args.device, args.ddp_timeout)
    try:
        if rank == 0:
            setup_logging(out / "eval.log")
        else:
            setup_logging(None, quiet=True)
        from stylecap.clip_check import check_features_clip  # features of the model's CLIP, before any work
        check_features_clip(model_path, data_path, "--data_path", getattr(args, "allow_clip_mismatch", False))
        model = load_model(model_path, args.gpt2_path, device)
        data = load_features(data_path)
        dc = decode_config(args)
        dc.max_len = None  # train.py's --max_len is the training truncation; decode to the model's own limit
        # --seed seeds each batch: --decode sample is repeatable, whatever the number of processes
        preds = caption_items_across_ranks(model, data["clip_embedding"], eval_items(data, model), dc,
                                           args.bs_eval, progress=True, seed=args.seed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # the captions are gathered: rank 0 scores alone, the others are done
    if rank != 0:
        return 0
    _, jsonl = write_predictions(out, preds)
    log_preview(preds)
    train_args = write_eval_config(out, model, model_path, data_path, dc)

    train_captions = args.train_captions
    if train_captions is None:  # default: the data the model was trained on, if it is still there
        trained_on = train_args.get("data_path")
        train_captions = trained_on if trained_on and Path(trained_on).is_file() else None
    meta = data.get("meta", {})
    clip_path = args.clip_model_path or meta.get("clip_model")
    image_dir = meta.get("image_dir") if meta.get("image_dir") and Path(meta["image_dir"]).is_dir() else None
    metrics = run_evaluation(jsonl, data_path, out / "metrics.json", report=out / "report.html",
                             train_captions=train_captions or None, image_dir=image_dir,
                             clip_model_path=clip_path if clip_path and Path(clip_path).is_file() else None,
                             java=False if args.no_java else None, segment=getattr(args, "segment", "auto"))
    print(format_table(metrics))
    _tensorboard_eval(out, preds, meta)
    logger.info(f"predictions, metrics.json and report.html in {out}")
    return 0


def write_eval_config(out: Path, model: StyleCapModel, model_path: Path, data_path: Path, dc: DecodeConfig) -> dict:
    """eval_config.json: what was evaluated and how (the checkpoint's training settings, the decoding),
    so that compare.py can label eval folders by the settings in which they differ. Returns the
    checkpoint's training settings ({} for ClipCap weights)."""
    from dataclasses import asdict
    from models.captioner import load_checkpoint_file
    ck = load_checkpoint_file(model_path, mmap=True)  # lazy: reads no weights
    ck = ck if isinstance(ck, dict) and "format" in ck else {}  # a ClipCap state dict has no settings
    train_args = ck.get("args") or {}
    params = sum(v.numel() for v in model.trainable_state_dict().values() if v.is_floating_point())
    atomic_write_json(out / "eval_config.json", {
        "model_path": str(model_path.resolve()), "data_path": str(data_path), "decode": asdict(dc),
        "train_args": train_args, "model_config": ck.get("config") or {}, "trainable_parameters": params})
    return train_args


def captions_by_image(preds: list[dict]) -> dict[str, list[str]]:
    """image -> its captions labelled with their style ("[Happy] ..."), for drawing under the image."""
    out: dict[str, list[str]] = {}
    for p in preds:
        out.setdefault(p["image"], []).append(f"[{p['style']}] {p['caption']}" if p.get("style") else p["caption"])
    return out


def _tensorboard_eval(out: Path, preds: list[dict], meta: dict, n_images: int = 8) -> None:
    """Metrics as scalars and a few images with their captions, for `tensorboard --logdir`."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter
    from stylecap.eval.coco_metrics import STANDARD
    from stylecap.eval.inputs import image_paths_for
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    by_image = captions_by_image(preds)
    image_dir = meta.get("image_dir")
    files = image_paths_for(image_dir, list(by_image), None) if image_dir and Path(image_dir).is_dir() else {}
    with SummaryWriter(str(out)) as w:
        for k in STANDARD:
            if metrics.get(k) is not None:
                w.add_scalar(f"eval/{k}", metrics[k], 0)
        shown = [image_id for image_id in by_image if image_id in files][:n_images]
        for i, image_id in enumerate(shown):
            img = captioned_image(files[image_id], by_image[image_id], 320)
            w.add_image(f"eval/captions/{i}", np.asarray(img), 0, dataformats="HWC")
