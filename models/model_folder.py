"""An exported model folder (export.py): one StyleCap model, laid out as the Hugging Face Hub lays out a model.

    config.json         the model: ModelConfig (styles, the CLIP record), the language model's config and
                        provenance, tokenizer settings, the training settings (under "args", as a run folder's
                        config.json, so ``train.py --config FOLDER/config.json`` takes them) and, when
                        exported with --eval_dir, the metrics and the command that reproduced them
    model.safetensors   every weight, the language model's included (also a frozen one): the folder is
                        self-contained. safetensors holds raw tensors only: no pickle, nothing that runs code
    tokenizer files     the language model folder's own (vocab.json, merges.txt, tokenizer_config.json, ...)
    README.md           the model card (export.py)

:func:`read_model_folder` returns the payload a checkpoint file holds (models.captioner.CHECKPOINT_FORMAT), read
from JSON, text and safetensors only: everything that reads a checkpoint reads a folder the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from models.captioner import CHECKPOINT_FORMAT, ModelConfig, StyleCapModel, gpt2_fingerprint
from models.errors import UserError

FOLDER_FORMAT = "stylecap-model-folder-v1"
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
# Settings that shape the weights: a new run started from a folder's weights must have the same ones.
SHAPING_FIELDS = ("mapping_type", "prefix_len", "constant_len", "clip_size", "num_layers", "num_heads", "style_mode",
                  "styles", "style_dim", "normalize_prefix", "prompt_template")


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding config.json and model.safetensors (export.py's layout)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


# ---- writing ---------------------------------------------------------------------------------------------
def untied_state(model: StyleCapModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(every weight once, {alias: name} of the tied ones). A state dict lists a tied tensor under each of its
    names (GPT-2's wte.weight and lm_head.weight: one V x E matrix); safetensors stores a tensor once."""
    state, tied, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = t.detach().cpu().contiguous()
    return state, tied


def folder_config(model: StyleCapModel, tokenizer_names: list[str], tied: dict[str, str], info: dict) -> dict:
    """config.json's content. ``info``: "lm_fingerprint" (the frozen LM's, else None), "args", "step",
    "source", "versions" and "eval" (or None), from export.py."""
    cfg, tok = model.cfg, model.tokenizer
    return {
        "format": FOLDER_FORMAT, "library_name": "stylecap",
        "model": asdict(cfg), "styles": list(cfg.styles), "clip": cfg.clip,
        "lm": {"class": type(model.gpt).__name__, "config": model.gpt.config.to_dict(), "source_path": cfg.gpt2_path,
               "fingerprint": info.get("lm_fingerprint"), "fine_tuned": cfg.finetune_gpt2,
               "weights": f"{WEIGHTS}, keys gpt.*"},
        "tokenizer": {"class": type(tok.tok).__name__, "vocab_size": tok.vocab_size, "end_token_id": tok.eos_id,
                      "pad_token_id": tok.pad_id, "style_tokens": tok.mode.style_tokens, "files": tokenizer_names},
        "tied_weights": tied,
        "args": info.get("args") or {}, "step": info.get("step"),
        "source": info.get("source") or {}, "versions": info.get("versions") or {}, "eval": info.get("eval"),
    }


def write_model_folder(out: str | Path, model: StyleCapModel, tokenizer_files: dict[str, str], info: dict,
                       card: str, overwrite: bool = False) -> Path:
    """Write the folder at ``out`` atomically: everything goes to a hidden folder beside it, which is renamed
    to ``out`` once complete (an interrupted export leaves no half folder). An existing ``out`` is refused
    unless ``overwrite``."""
    from safetensors.torch import save_file
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or another OUT_DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        state, tied = untied_state(model)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "stylecap": FOLDER_FORMAT})
        names = sorted(n for n in tokenizer_files if n != CONFIG)  # the LM's config.json: under "lm" instead
        for name in names:
            (tmp / name).write_text(tokenizer_files[name], encoding="utf-8")
        config = folder_config(model, names, tied, info)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        _fsync_tree(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync_tree(folder: Path) -> None:
    """Flush the folder's files and the folder itself to disk before it is renamed into place."""
    for p in [*folder.iterdir(), folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is first renamed aside and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# ---- reading ---------------------------------------------------------------------------------------------
def read_folder_config(path: str | Path) -> dict:
    """config.json of an exported folder; a UserError for anything else (a run folder, a damaged folder)."""
    path = Path(path)
    if not is_model_folder(path):
        hint = (f"; it is a run folder: pass {path / 'checkpoints' / 'best.pt'}"
                if (path / "checkpoints" / "best.pt").is_file() else "")
        raise UserError(f"{path} is a folder but not an exported StyleCap model (no {CONFIG} and {WEIGHTS} from "
                        f"export.py){hint or '; pass a checkpoint file or a folder written by export.py'}")
    try:
        cfg = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path / CONFIG} is not valid JSON ({e}); export the model again with export.py") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FOLDER_FORMAT:
        raise UserError(f"{path} holds a {CONFIG} and {WEIGHTS} but is not a StyleCap model folder (format "
                        f"{cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FOLDER_FORMAT!r}): "
                        "a plain Hugging Face model folder is a --gpt2_path, not a --model_path")
    return cfg


def read_model_folder(path: str | Path) -> dict:
    """The checkpoint payload of an exported folder (see models.captioner.checkpoint_payload), with every
    weight, the language model's included, and the folder's path under "model_folder"."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    cfg = read_folder_config(path)
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path / WEIGHTS} is not a readable safetensors file ({e}); export the model again") from None
    for alias, name in cfg.get("tied_weights", {}).items():
        state[alias] = state[name]
    files = {}
    for name in cfg["tokenizer"]["files"]:
        if Path(name).name != name or name.startswith("."):  # a shared folder names no file outside itself
            raise UserError(f"{path / CONFIG} lists the tokenizer file {name!r}, which is not a plain file name; "
                            "export the model again")
        if not (path / name).is_file():
            raise UserError(f"{path} lacks the tokenizer file {name} that its {CONFIG} lists; export the model again")
        files[name] = (path / name).read_text(encoding="utf-8")
    files[CONFIG] = json.dumps(cfg["lm"]["config"])  # AutoTokenizer may read the model type from it
    return {"format": CHECKPOINT_FORMAT, "config": cfg["model"], "model": state, "gpt2_config": cfg["lm"]["config"],
            "gpt2_fingerprint": cfg["lm"].get("fingerprint"), "tokenizer_files": files,
            "args": cfg.get("args") or {}, "train_state": {"step": cfg.get("step")}, "model_folder": str(path)}


# ---- a new run from a folder's weights (train.py --resume FOLDER) ------------------------------------------
def start_from_folder(model: StyleCapModel, path: str | Path) -> None:
    """Load an exported folder's weights into a new run's freshly built ``model``: the mapper and style
    embeddings, and the language model's when this run tunes it. A frozen language model stays the one of
    --gpt2_path, which must then be the folder's (same fingerprint). The settings that shape the weights
    must equal the folder's; anything else (optimizer, schedule, data, step) starts fresh."""
    ck = read_model_folder(path)
    theirs, ours = ModelConfig.from_dict(ck["config"]), model.cfg
    differ = [f"{f} {_short(getattr(theirs, f))} (this run: {_short(getattr(ours, f))})"
              for f in SHAPING_FIELDS if getattr(theirs, f) != getattr(ours, f)]
    if differ:
        raise UserError(f"--resume {path}: the folder's model has {'; '.join(differ[:3])}; train with its settings "
                        f"(train.py --config {Path(path) / CONFIG} takes them) and data with the same styles")
    a, b = theirs.clip or {}, ours.clip or {}
    if a.get("clip_sha256") and b.get("clip_sha256") and a["clip_sha256"] != b["clip_sha256"]:
        raise UserError(f"--resume {path}: the folder's model was trained on features of another CLIP "
                        f"({a.get('clip_model')}) than --data_path's ({b.get('clip_model')}); extract with its CLIP")
    state = ck["model"]
    if not ours.finetune_gpt2:
        if theirs.finetune_gpt2 or ck["gpt2_fingerprint"] != gpt2_fingerprint(ours.gpt2_path):
            raise UserError(f"--resume {path}: this run freezes the language model of --gpt2_path {ours.gpt2_path}, "
                            "which is not the folder's (fine-tuned, or another fingerprint); pass --finetune_gpt2 to "
                            "start from the folder's language model")
        state = {k: v for k, v in state.items() if not k.startswith("gpt.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape: e.g. a --gpt2_path of another width
        raise UserError(f"--resume {path}: its weights do not fit this run's model ({str(e).splitlines()[-1].strip()}); "
                        "use the folder's --gpt2_path") from None
    missing = [k for k in missing if ours.finetune_gpt2 or not k.startswith("gpt.")]
    if missing or unexpected:
        raise UserError(f"--resume {path}: its weights do not fit this run's model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
