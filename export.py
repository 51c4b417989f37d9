r"""Export a trained model as a self-contained folder to share: the layout the Hugging Face Hub expects.

    python export.py output/<run>/checkpoints/best.pt exported/my_model
    python export.py output/<run> exported/my_model --eval_dir output/eval-<run>-test

OUT_DIR gets config.json (model config, styles, the CLIP record, the language model's config, tokenizer
settings, training settings), model.safetensors (every weight, the language model's included, also a frozen
one: no pickle), the tokenizer files and README.md, a model card made from the run's settings and, with
--eval_dir, that evaluation's metrics and the command that produced them. The folder is written beside
OUT_DIR and renamed into place when complete. Nothing is uploaded: `huggingface-cli upload` (or a git push to
the Hub) shares the folder as it is. predict.py, evaluate.py / train.py --mode eval and app.py take the folder
as --model_path; train.py --resume FOLDER starts a new run from its weights. See docs/export.md.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from loguru import logger

from models.captioner import (CHECKPOINT_FORMAT, StyleCapModel, gpt2_fingerprint, model_from_file, read_checkpoint,
                              tokenizer_files, trainable_parameters)
from models.model_folder import write_model_folder
from stylecap.eval.captioning import checkpoint_path
from stylecap.utils import UserError, code_version, run_main, setup_logging, sha256_file

CARD_ARGS = ("data_path", "val_path", "gpt2_path", "mapping_type", "prefix_len", "style_mode", "finetune_gpt2", "epochs",
             "bs_train", "grad_accum", "lr", "warmup_steps", "precision", "seed")  # the card's training table


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", metavar="CKPT", help="a StyleCap checkpoint (output/<run>/checkpoints/best.pt), a run folder (its "
      "checkpoints/best.pt), ClipCap weights (with --gpt2_path) or an exported folder")
    a("out_dir", metavar="OUT_DIR", help="the folder to write (refused if it exists, unless --overwrite)")
    a("--eval_dir", help="an eval folder of this checkpoint (train.py --mode eval / evaluate.py --model_path): its "
      "metrics.json and the command that produced it go into the card and config.json")
    a("--gpt2_path", help="GPT-2 folder: needed for ClipCap weights, or if a frozen GPT-2 moved")
    a("--name", help="the model's name in the card (default: OUT_DIR's name)")
    a("--overwrite", action="store_true", help="replace an existing OUT_DIR (atomically: the old one is removed "
      "only once the new one is complete)")
    return p


def read_eval(eval_dir: Path, ck, step: int | None, out_dir: Path) -> dict:
    """{"metrics", "command", "command_from_folder", "data_path", "decode"} of an eval folder, which must
    have evaluated this checkpoint (the same model config and step in its eval_config.json)."""
    from stylecap.eval.report import reproduce_command
    metrics_file, cfg_file = eval_dir / "metrics.json", eval_dir / "eval_config.json"
    if not metrics_file.is_file():
        raise UserError(f"--eval_dir {eval_dir} has no metrics.json; pass the folder that train.py --mode eval or "
                        "evaluate.py --model_path wrote")
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    except ValueError as e:
        raise UserError(f"--eval_dir {eval_dir}: a JSON file there is damaged ({e}); evaluate again") from None
    ours = ck.get("config") if isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT else {}
    if cfg and ((cfg.get("model_config") or {}) != (ours or {}) or cfg.get("checkpoint_step") != step):
        raise UserError(f"--eval_dir {eval_dir} evaluated {cfg.get('model_path')} (step {cfg.get('checkpoint_step')}), "
                        f"not this checkpoint (step {step}); evaluate it: python train.py --mode eval --model_path "
                        f"{out_dir} --data_path TEST_FEATURES")
    command = cfg.get("command") or (reproduce_command(cfg, eval_dir / "report.html") if cfg else None)
    from_folder = reproduce_command({**cfg, "model_path": str(out_dir)}, eval_dir / "report.html") if cfg else None
    return {"metrics": metrics, "command": command, "command_from_folder": from_folder,
            "data_path": cfg.get("data_path"), "decode": cfg.get("decode"), "eval_dir": str(eval_dir)}


def versions() -> dict:
    import safetensors
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version(), "stylecap": code_version()}


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    out = Path(args.out_dir)
    if out.exists() and not args.overwrite:  # before any loading
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or another OUT_DIR")
    if args.eval_dir and not Path(args.eval_dir).is_dir():
        raise UserError(f"--eval_dir {args.eval_dir} is not a folder; pass an eval folder (with metrics.json)")
    path, why = checkpoint_path(args.checkpoint)
    ck = read_checkpoint(path)
    model = model_from_file(ck, path, args.gpt2_path)
    stylecap_ck = isinstance(ck, dict) and ck.get("format") == CHECKPOINT_FORMAT
    step = (ck.get("train_state") or {}).get("step") if stylecap_ck else None
    files = (ck.get("tokenizer_files") if stylecap_ck else None) or tokenizer_files(model.cfg.gpt2_path)
    if not any(n != "config.json" for n in files):
        raise UserError(f"{path} carries no tokenizer files and {model.cfg.gpt2_path} has none; pass --gpt2_path "
                        "with the GPT-2 folder it was trained with")
    info = {"lm_fingerprint": lm_fingerprint(ck if stylecap_ck else None, model), "step": step,
            "args": ck.get("args") if stylecap_ck else {},
            "source": {"checkpoint": str(path.resolve()), "chosen_as": why,
                       "sha256": sha256_file(path) if path.is_file() else None,
                       "kind": "model folder" if stylecap_ck and ck.get("model_folder") else
                               "stylecap checkpoint" if stylecap_ck else "clipcap weights"},
            "versions": versions()}
    if args.eval_dir:
        info["eval"] = read_eval(Path(args.eval_dir), ck, step, out)
    del ck
    card = model_card(model, info, args.name or out.resolve().name, out)
    write_model_folder(out, model, files, info, card, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    logger.info(f"exported {path} -> {out} ({size:.1f} MB: config.json, model.safetensors, README.md and "
                f"{len([n for n in files if n != 'config.json'])} tokenizer files)")
    return 0


def lm_fingerprint(ck: dict | None, model: StyleCapModel) -> str | None:
    """The frozen language model's fingerprint (train.py --resume FOLDER checks --gpt2_path against it); None
    for a fine-tuned one (its weights are the folder's own)."""
    if model.cfg.finetune_gpt2:
        return None
    return (ck or {}).get("gpt2_fingerprint") or gpt2_fingerprint(model.cfg.gpt2_path)


# ---- the model card ---------------------------------------------------------------------------------------
FRONT_MATTER = """---
library_name: stylecap
pipeline_tag: image-to-text
tags:
- image-captioning
- stylized-image-captioning
- clipcap
---
"""


def model_card(model: StyleCapModel, info: dict, name: str, out: Path) -> str:
    """README.md: YAML front matter (the Hub reads it), then the model, its use, training, evaluation, versions."""
    cfg, lm = model.cfg, model.gpt.config
    n_all = sum(t.numel() for t in {id(p): p for p in model.parameters()}.values())
    clip = cfg.clip or {}
    styles = ", ".join(f"`{s}`" for s in cfg.styles[:20]) + (f" ... ({len(cfg.styles)} in all)" if len(cfg.styles) > 20 else "")
    style_arg = f" --style {json.dumps(cfg.styles[0])}" if cfg.styles else ""
    lines = [FRONT_MATTER, f"# {name}", "",
             f"A StyleCap stylized image captioner: CLIP image feature{' + style' if cfg.styles else ''} -> "
             f"{cfg.mapping_type} mapper -> {cfg.prefix_len} prefix embeddings -> {type(model.gpt).__name__} "
             f"({lm.n_layer} layers, width {lm.n_embd}) -> caption. Exported by `export.py` from "
             f"`{info['source']['checkpoint']}`" + (f" (optimizer step {info['step']})." if info["step"] is not None else "."),
             "", "## Files", "", "| file | content |", "|---|---|",
             "| config.json | model config, styles, image encoder record, language model config, tokenizer settings, "
             "training settings (`args`) |",
             f"| model.safetensors | all {n_all / 1e6:.1f}M weights: mapper, style embeddings and the language model "
             f"({'fine-tuned' if cfg.finetune_gpt2 else 'frozen in training, included so that the folder is self-contained'}); "
             "safetensors, no pickle |",
             "| tokenizer files | the language model's tokenizer |", "| README.md | this card |", "",
             "## Use", "", "With the StyleCap code (nothing is downloaded; the image encoder is not in the folder):", "",
             "```bash",
             f"python predict.py --model_path {out} --image_path photos/{style_arg} --clip_model_path CLIP_MODEL",
             f"python train.py --mode eval --model_path {out} --data_path TEST_FEATURES",
             f"python app.py --model_path {out} --clip_model_path CLIP_MODEL",
             f"python train.py --config {out}/config.json --resume {out} --data_path TRAIN_FEATURES --output_path NEW_RUN",
             "```", "", "The last line starts a new run from these weights (step 0, new optimizer); see docs/export.md.", "",
             "## Model", "", "| setting | value |", "|---|---|",
             f"| mapper | {cfg.mapping_type}, K = {cfg.prefix_len} |",
             f"| style | {cfg.style_mode}; {len(cfg.styles)} styles{': ' + styles if styles else ''} |",
             f"| language model | {type(model.gpt).__name__} from `{cfg.gpt2_path}`, "
             f"{'fine-tuned' if cfg.finetune_gpt2 else 'frozen'}; {trainable_parameters(model) / 1e6:.2f}M trained parameters |",
             f"| image encoder | `{clip.get('clip_model') or 'not recorded'}`, sha256 `{clip.get('clip_sha256') or '-'}`, "
             f"{cfg.clip_size}-d features{', L2-normalised' if cfg.normalize_prefix else ''} |",
             f"| tokenizer | {type(model.tokenizer.tok).__name__}, {model.tokenizer.vocab_size} tokens, END id "
             f"{model.tokenizer.eos_id} |", ""]
    lines += training_section(info["args"]) + eval_section(info.get("eval"))
    v = info["versions"]
    lines += ["## Versions", "", f"Exported with torch {v['torch']}, transformers {v['transformers']}, safetensors "
              f"{v['safetensors']}, Python {v['python']}, StyleCap {v['stylecap']}. The folder loads under every "
              "transformers and torch of requirements.txt's ranges (docs/versions.md).", ""]
    return "\n".join(lines)


def training_section(args: dict) -> list[str]:
    if not args:
        return ["## Training", "", "Not recorded (ClipCap weights).", ""]
    rows = [f"| --{k} | `{args[k]}` |" for k in CARD_ARGS if k in args]
    return ["## Training", "", "The run's settings (all of them are config.json's `args`):", "", "| flag | value |",
            "|---|---|", *rows, ""]


def eval_section(ev: dict | None) -> list[str]:
    if not ev:
        return ["## Evaluation", "", "None given at export (`export.py ... --eval_dir EVAL_FOLDER` adds its metrics).", ""]
    from stylecap.eval.tables import format_table
    out = ["## Evaluation", "", f"On `{ev['data_path']}`, decoding {ev.get('decode')} (from `{ev['eval_dir']}`):", "",
           "```", format_table(ev["metrics"]), "```", ""]
    if ev.get("command"):
        out += ["The command that produced these numbers:", "", "```bash", ev["command"], "```", ""]
    if ev.get("command_from_folder"):
        out += ["The same evaluation of this folder (its weights are the checkpoint's):", "", "```bash",
                ev["command_from_folder"], "```", ""]
    return out


if __name__ == "__main__":
    run_main(main)
