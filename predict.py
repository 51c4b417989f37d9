r"""Caption your own images (or a whole feature file) with a trained StyleCap model, in chosen styles.

    python predict.py --model_path output/<run>/checkpoints/best.pt --image_path photos/ --style Happy
    python predict.py --model_path output/<run> --image_path photos/ --style Happy --style sarcastic
    python predict.py --model_path output/<run> --image_path photos/ --style "Happy:0.7,Gloomy:0.3" --style_scale 1.5
    python predict.py --model_path output/<run> --list_styles
    python predict.py --model_path coco_weights.pt --gpt2_path pre_model/gpt2 --image_path cat.jpg

The model is rebuilt from the checkpoint alone (config, tokenizer, style list, CLIP): no training flags repeated.
Writes caption_generate.txt (image<TAB>caption; image<TAB>style<TAB>caption with several styles),
predictions.jsonl and predict.log to --output_path; a run that fails leaves none of them behind.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from loguru import logger

from models.captioner import ModelConfig, checkpoint_config, model_from_file, read_checkpoint
from stylecap.clip_check import check_clip
from stylecap.clip_utils import DEFAULT_CLIP
from stylecap.encoders import BACKENDS
from stylecap.eval.captioning import (caption_images, caption_items, checkpoint_path, eval_items, list_images,
                                      load_clip_for, plural, resolve_styles, with_scale)
from stylecap.eval.evaluation import (add_decode_args, captioned_image, captions_by_image, decode_config, log_preview,
                                      write_predictions)
from stylecap.extract.image_encoder import extract_features
from stylecap.features import clip_record
from stylecap.utils import UserError, resolve_device, run_main, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model_path", required=True, help="StyleCap checkpoint (e.g. output/<run>/checkpoints/best.pt), a run "
      "folder (its checkpoints/best.pt) or ClipCap weights")
    a("--image_path", help="an image file, a folder of images or a glob such as 'photos/*.jpg'")
    a("--recursive", action="store_true", help="with a folder as --image_path: its subfolders' images too")
    a("--features", help="caption every image of a feature file (from process_*.py) instead of image files")
    a("--clip_model_path", help=f"CLIP model used to encode --image_path (default: the one the checkpoint names, "
      f"else {DEFAULT_CLIP})")
    a("--clip_backend", choices=BACKENDS, default="auto", help="which library loads --clip_model_path: auto "
      "(from its form and contents, or the checkpoint's record), openai, open_clip or hf (docs/encoders.md)")
    a("--allow_clip_mismatch", action="store_true", help="caption even when --clip_model_path (or the CLIP named "
      "by --features) is not the CLIP the model was trained with (checked by sha256 and normalisation)")
    a("--allow_truncated", action="store_true", help="caption truncated JPEGs (the missing part is grey) "
      "instead of skipping them")
    a("--lm_path", "--gpt2_path", dest="gpt2_path", metavar="LM_PATH", help="language-model (GPT-2) folder: "
      "needed for ClipCap weights, or if a frozen LM moved; --gpt2_path is the older name")
    a("--style", action="append", help="a style name (case-insensitive), 'all' for every style of the model, or a "
      "blend of styles 'Happy:0.7,Gloomy:0.3' (weights >= 0, normalised to sum to 1; style_mode embedding or "
      "token); repeat it for several styles")
    a("--style_scale", type=float, default=1.0, help="strength of every style: 0 = no style, 1 = as trained "
      "(default), above 1 = exaggerated (style_mode embedding or token; see docs/prediction.md)")
    a("--style_file", help="a file with one style per line")
    a("--list_styles", action="store_true", help="print the model's styles, one per line, and exit")
    add_decode_args(p)
    a("--bs_eval", "--batch_size", dest="bs_eval", type=int, default=32,
      help="images encoded and captioned per batch (--batch_size: the older name)")
    a("--num_workers", type=int, default=2, help="image decoding workers")
    a("--output_path", default="output/predict", help="folder for caption_generate.txt, predictions.jsonl "
      "and predict.log")
    a("--save_images", action="store_true", help="also save copies of the images with their captions drawn under them")
    a("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    a("--seed", type=int, default=0, help="seed for --decode sample")
    return p


def requested_styles(args: argparse.Namespace, cfg: ModelConfig | None) -> list[str | None] | None:
    """None = each image's own style (feature files); a list = these styles for every image. ``cfg``: the
    checkpoint's config (None: ClipCap weights, a plain model). Checked before any weights load."""
    if cfg is None or cfg.style_mode == "none":
        if args.style or args.style_file or args.style_scale != 1.0:
            logger.warning("this model is not styled: --style and --style_scale are ignored")
        return [None]
    wanted = list(args.style or [])
    if args.style_file:
        if not Path(args.style_file).is_file():
            raise UserError(f"--style_file {args.style_file} not found; give a text file with one style per line")
        wanted += [ln.strip() for ln in Path(args.style_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if "all" in wanted:
        return resolve_styles(cfg, [], all_styles=True, scale=args.style_scale)
    if not wanted and not args.features:
        raise UserError(f"this model is styled: pass --style NAME (e.g. --style {cfg.styles[0]!r}), "
                        "--style all, or --style_file FILE (--list_styles prints the model's styles)")
    if not wanted:  # each image's own style: checked here, scaled in caption_feature_file
        with_scale(cfg, cfg.styles[0], args.style_scale)  # a bad scale or a prompt-mode model: refused now
        return None
    return resolve_styles(cfg, wanted, scale=args.style_scale)  # unknown style: UserError with the closest ones


def list_styles(args: argparse.Namespace) -> int:
    """--list_styles: the model's styles on stdout, one per line (nothing for a plain model)."""
    path, _ = checkpoint_path(args.model_path)
    cfg = checkpoint_config(read_checkpoint(path), path)
    if cfg is None or cfg.style_mode == "none":
        print(f"{path} is a plain (unstyled) model: it has no styles", file=sys.stderr)
        return 0
    print("\n".join(cfg.styles))
    return 0


@contextmanager
def output_folder(out: Path):
    """Log to out/predict.log for the run; if the run fails, remove the log (when this run began it) and
    the folders this run made (when they are empty), so that a failed run leaves nothing behind."""
    made = [q for q in (out, *out.parents) if not q.exists()]  # e.g. output/predict and output/
    log = out / "predict.log"
    had_log = log.exists()
    setup_logging(log)
    try:
        yield
    except BaseException:
        setup_logging(None)  # closes the file
        if not had_log:
            log.unlink(missing_ok=True)
        for q in made:  # innermost first
            if q.is_dir() and not any(q.iterdir()):
                q.rmdir()
        raise


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.list_styles:
        return list_styles(args)
    if bool(args.image_path) == bool(args.features):
        raise UserError("give exactly one of --image_path (images) or --features (a feature file)")
    with output_folder(Path(args.output_path)):
        return predict(args, sys.argv[1:] if argv is None else argv)


def predict(args: argparse.Namespace, argv: list[str]) -> int:
    """The run: the checkpoint read, the styles and images checked, then the weights loaded and captioning."""
    out = Path(args.output_path)
    logger.debug(f"command: python predict.py {shlex.join(argv)}")
    torch.manual_seed(args.seed)
    model_path, why = checkpoint_path(args.model_path)
    ck = read_checkpoint(model_path)
    styles = requested_styles(args, checkpoint_config(ck, model_path))  # before GPT-2 and CLIP load
    dc = decode_config(args)
    dc.check()
    paths, names = list_images(args.image_path, args.recursive) if args.image_path else ([], [])
    logger.info(f"model: {model_path} ({why})")
    device = resolve_device(args.device)
    model = model_from_file(ck, model_path, args.gpt2_path, device)
    del ck  # the weights are in the model now
    cfg = model.cfg
    lm = "GPT-2" if model.gpt.config.model_type == "gpt2" else model.gpt.config.model_type  # llama, qwen2 ...
    logger.info(f"model: {cfg.mapping_type} mapper, K={cfg.prefix_len}, style_mode {cfg.style_mode}, "
                f"{plural(len(cfg.styles), 'style')}, {lm} {'fine-tuned' if cfg.finetune_gpt2 else 'frozen'}")
    logger.info(f"decode: {dc.strategy} ({', '.join(f'{k}={v}' for k, v in asdict(dc).items() if k != 'strategy')})")
    if args.features:
        preds, sources = caption_feature_file(args, model, model_path, styles, dc), {}
    else:
        preds, sources = caption_files(args, model, model_path, paths, names, styles, dc, device)
    several = len({p["style"] for p in preds}) > 1  # caption_generate.txt gets a style column
    txt, jsonl = write_predictions(out, preds, style_column=several)
    log_preview(preds)
    if args.save_images and sources:
        (out / "images").mkdir(parents=True, exist_ok=True)
        for name, caps in captions_by_image(preds).items():
            flat = Path(name).with_suffix("").as_posix().replace("/", "__")  # sub/a.jpg -> sub__a.jpg
            captioned_image(sources[name], caps).save(out / "images" / f"{flat}.jpg", quality=90)
    logger.info(f"{plural(len(preds), 'caption')} -> {txt} and {jsonl}")
    return 0


def caption_feature_file(args: argparse.Namespace, model, model_path: Path, styles: list[str | None] | None,
                         dc) -> list[dict]:
    """--features: every image of the file, in ``styles`` or (None) in each image's own style."""
    from stylecap.features import load_features
    data = load_features(args.features)
    record = clip_record(data["meta"])
    logger.info(f"CLIP: {(record or {}).get('clip_model') or 'not named'} (the features' meta)")
    check_clip(model.cfg, model_path, record, f"--features {args.features} holds", args.allow_clip_mismatch,
               noun=" features")
    items = eval_items(data, model, None if styles in (None, [None]) else styles)
    if styles is None:  # each image's own style, at --style_scale
        items = [(image_id, row, with_scale(model.cfg, s, args.style_scale)) for image_id, row, s in items]
    return caption_items(model, data["clip_embedding"], items, dc, args.bs_eval, progress=True)


def caption_files(args: argparse.Namespace, model, model_path: Path, paths: list[Path], names: list[str],
                  styles: list[str | None], dc, device: torch.device) -> tuple[list[dict], dict[str, Path]]:
    """--image_path: encode the images with the model's CLIP and caption the readable ones in ``styles``.
    Returns the predictions and {image name: its file} of the captioned images."""
    clip_model, preprocess = load_clip_for(model, args.clip_model_path, device, model_path,
                                           args.allow_clip_mismatch, args.clip_backend)  # logs "CLIP: <path> (why)"
    encode = partial(extract_features, model=clip_model, preprocess=preprocess, batch_size=args.bs_eval,
                     num_workers=args.num_workers, device=device, allow_truncated=args.allow_truncated)
    preds, ok, bad = caption_images(model, encode, paths, styles, dc, args.bs_eval, names=names, progress=True)
    for i, reason in bad:
        logger.warning(f"skipped {names[i]}: {reason}")
    if not ok:
        what = "the image" if len(paths) == 1 else f"none of the {len(paths)} images"
        raise UserError(f"{what} could not be read; see the warning above" + "s" * (len(paths) > 1))
    return preds, {names[i]: paths[i] for i in ok}


if __name__ == "__main__":
    run_main(main)
