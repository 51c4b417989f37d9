r"""Caption your own images (or a whole feature file) with a trained StyleCap model, in chosen styles.

    python predict.py --model_path output/<run>/checkpoints/best.pt --image_path photos/ --style Happy
    python predict.py --model_path coco_weights.pt --gpt2_path pre_model/gpt2 --image_path cat.jpg

The model is rebuilt from the checkpoint alone (config, tokenizer, style list): no training flags repeated.
Writes caption_generate.txt (image<TAB>caption) and predictions.jsonl to --output_path.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from loguru import logger

from models import load_model
from stylecap.clip_utils import DEFAULT_CLIP
from stylecap.clip_check import check_clip
from stylecap.eval.captioning import (caption_images, caption_items, eval_items, list_images, load_clip_for,
                                      resolve_styles)
from stylecap.eval.evaluation import (add_decode_args, captioned_image, captions_by_image, decode_config, log_preview,
                                      write_predictions)
from stylecap.extract.image_encoder import extract_features
from stylecap.features import clip_record
from stylecap.utils import UserError, resolve_device, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model_path", required=True, help="StyleCap checkpoint (e.g. output/<run>/checkpoints/best.pt) or ClipCap weights")
    a("--image_path", help="an image file, a folder of images, or a glob such as 'photos/*.jpg'")
    a("--features", help="caption every image of a feature file (from process_*.py) instead of image files")
    a("--clip_model_path", help=f"CLIP model used to encode --image_path (default: the one the checkpoint names, "
      f"else {DEFAULT_CLIP})")
    a("--allow_clip_mismatch", action="store_true", help="caption even when --clip_model_path (or the CLIP named "
      "by --features) is not the CLIP the model was trained with (checked by sha256 and normalisation)")
    a("--gpt2_path", help="GPT-2 folder: needed for ClipCap weights, or if a frozen GPT-2 moved")
    a("--style", help="a style name (exact trait string), or 'all' for every style of the model")
    a("--style_file", help="a file with one style per line")
    add_decode_args(p)
    a("--bs_eval", "--batch_size", dest="bs_eval", type=int, default=32,
      help="images encoded and captioned per batch (--batch_size: the older name)")
    a("--num_workers", type=int, default=2, help="image decoding workers")
    a("--output_path", default="output/predict", help="folder for caption_generate.txt and predictions.jsonl")
    a("--save_images", action="store_true", help="also save copies of the images with their captions drawn under them")
    a("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    a("--seed", type=int, default=0, help="seed for --decode sample")
    return p


def requested_styles(args: argparse.Namespace, model) -> list[str | None] | None:
    """None = each image's own style (feature files); a list = these styles for every image."""
    if model.cfg.style_mode == "none":
        if args.style or args.style_file:
            logger.warning("this model is not styled: --style is ignored")
        return [None]
    if args.style == "all":
        return resolve_styles(model, [], all_styles=True)
    wanted = [args.style] if args.style else []
    if args.style_file:
        wanted += [ln.strip() for ln in Path(args.style_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not wanted and not args.features:
        raise UserError(f"this model is styled: pass --style NAME (e.g. --style {model.cfg.styles[0]!r}), "
                        "--style all, or --style_file FILE")
    return resolve_styles(model, wanted) or None  # unknown style: UserError with the closest valid names


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if bool(args.image_path) == bool(args.features):
        raise UserError("give exactly one of --image_path (images) or --features (a feature file)")
    out = Path(args.output_path)
    setup_logging(out / "predict.log")
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    model = load_model(args.model_path, args.gpt2_path, device)
    dc = decode_config(args)
    dc.check()
    styles = requested_styles(args, model)

    if args.features:
        from stylecap.features import load_features
        data = load_features(args.features)
        check_clip(model.cfg, args.model_path, clip_record(data["meta"]), f"--features {args.features} holds",
                   args.allow_clip_mismatch, noun=" features")
        items = eval_items(data, model, None if styles in (None, [None]) else styles)
        preds = caption_items(model, data["clip_embedding"], items, dc, args.bs_eval, progress=True)
        sources = {}
    else:
        paths = list_images(args.image_path)
        clip_model, preprocess = load_clip_for(model, args.clip_model_path, device, args.model_path,
                                               args.allow_clip_mismatch)
        encode = partial(extract_features, model=clip_model, preprocess=preprocess, batch_size=args.bs_eval,
                         num_workers=args.num_workers, device=device)
        preds, ok, bad = caption_images(model, encode, paths, styles, dc, args.bs_eval, progress=True)
        for i, reason in bad:
            logger.warning(f"skipped {paths[i]}: {reason}")
        if not ok:
            raise UserError(f"none of the {len(paths)} images could be read; see the warnings above")
        sources = {paths[i].name: paths[i] for i in ok}
    txt, jsonl = write_predictions(out, preds)
    log_preview(preds)
    if args.save_images and sources:
        by_image = captions_by_image(preds)
        (out / "images").mkdir(parents=True, exist_ok=True)
        for name, caps in by_image.items():
            captioned_image(sources[name], caps).save(out / "images" / (Path(name).stem + ".jpg"), quality=90)
    logger.info(f"{len(preds)} captions -> {txt} and {jsonl}")
    return 0


if __name__ == "__main__":
    run_main(main)
