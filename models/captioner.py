"""StyleCapModel: CLIP feature (+ style) -> mapper -> K prefix embeddings -> causal LM -> caption.

One definition, used by train.py, predict.py, evaluation and the benchmarks. The language model is any
Hugging Face ``AutoModelForCausalLM`` folder (GPT-2 by default; Llama- and Qwen2-style models too, see
docs/decoders.md); it is called ``gpt`` and its folder ``gpt2_path`` in the code and the checkpoints, the
names they had when it was always GPT-2. Checkpoints carry the config they were made with; ``load_model``
rebuilds everything (LM config, tokenizer, styles) from the checkpoint alone. ClipCap's released state
dicts (coco_weights.pt, ...) load too.
"""
from __future__ import annotations

import difflib
import hashlib
import pickle
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.compat import GPT2_BUFFER_KEYS, drop_legacy_gpt2_buffers, load_lm_state
from models.errors import UserError
from models.lora import add_lora, is_adapter_key, merge_lora as merge_adapters
from models.mapper import build_mapper
from models.style_modes import STYLE_MODES, style_mode
from models.language_model import build_lm, switch_off_dropout, tokenizer_files
from models.tokenizer import CaptionTokenizer, load_hf_tokenizer

CHECKPOINT_FORMAT = "stylecap-checkpoint-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


class CaptionLoss(NamedTuple):
    loss: torch.Tensor      # mean cross-entropy over the labelled tokens
    n_tokens: int           # how many tokens were labelled
    loss_sum: torch.Tensor  # summed cross-entropy: the training objective sums over the effective batch


@dataclass
class ModelConfig:
    gpt2_path: str
    mapping_type: str = "mlp"          # mlp | transformer | linear (imported ClipCap, K > 10)
    prefix_len: int = 10               # K
    constant_len: int = 10             # the Transformer mapper's clip_length
    clip_size: int = 512               # CLIP feature width (640 for RN50x4)
    num_layers: int = 8                # Transformer mapper depth
    num_heads: int = 8
    style_mode: str = "none"           # a name in models.style_modes.STYLE_MODES
    styles: list = field(default_factory=list)
    style_dim: int = 64                # width of the learned style embedding (style_mode embedding)
    prompt_template: str = "write a {style} caption:"
    normalize_prefix: bool = False     # L2-normalise CLIP features, identically everywhere
    finetune_gpt2: bool = True         # False: GPT-2 frozen, not saved in checkpoints
    max_len: int = 64                  # caption tokens (END excluded) kept in training; decode limit
    legacy_clipcap: bool = False       # imported ClipCap model: no END token, stop at '.', <= 67 tokens
    # The CLIP of the training features (stylecap.features.clip_record: clip_model, clip_sha256, normalized),
    # beside clip_size: predict.py and eval mode refuse features or images of another CLIP. {}: the features
    # named no CLIP; None: no record (ClipCap weights, checkpoints saved before checkpoints had it).
    clip: dict | None = None
    # The styles learned from text rows only (process_text.py files, CapDec), none of their captions on an image;
    # train.py records them. Such a style is used like any other; the record is for reports and evaluation.
    text_styles: list = field(default_factory=list)
    # LoRA adapters on the frozen LM (models/lora.py); lora_r 0: none. lora_targets: module names ([] = the
    # architecture's default, resolved and recorded when the model is built)
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def gpt2_fingerprint(path: str | Path) -> str:
    """sha256 over the LM folder's weight files (all shards): a frozen LM must be the one trained with."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES) if path.is_dir() else []
    if not files:
        raise UserError(f"no language-model weights in {path}: put a Hugging Face GPT-2 (or other causal LM) "
                        "folder there (config.json, model.safetensors, tokenizer files); see pre_model/README.md")
    # hashing ~500 MB takes seconds: reuse the digest while the files are unchanged (every checkpoint asks)
    return _hash_files(tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))


@lru_cache(maxsize=8)
def _hash_files(files: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        p = Path(name)
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _check_gpt2_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"GPT-2 folder {path} not found or has no config.json: put a Hugging Face GPT-2 "
                        "folder there (e.g. the files of openai-community/gpt2), or another causal LM's "
                        "(--lm_path); see pre_model/README.md")
    return path


class StyleCapModel(nn.Module):
    def __init__(self, cfg: ModelConfig, gpt: nn.Module, tokenizer: CaptionTokenizer):
        super().__init__()
        mode = style_mode(cfg.style_mode)  # UserError for an unknown name
        if mode.styled and not cfg.styles:
            raise UserError(f"--style_mode {cfg.style_mode} needs styled data (records with 'style'); "
                            "use --style_mode none for plain captions")
        self.cfg, self.gpt, self.tokenizer = cfg, gpt, tokenizer
        embed_dim = gpt.get_input_embeddings().embedding_dim
        in_dim = cfg.clip_size + (cfg.style_dim if mode.style_embedding else 0)
        self.clip_project = build_mapper(cfg.mapping_type, in_dim, cfg.prefix_len, embed_dim,
                                         cfg.constant_len, cfg.num_layers, cfg.num_heads)
        n_styles = len(cfg.styles)
        # (S, style_dim) concatenated with the CLIP feature; or (S, E) embeddings of the <style_k> tokens
        self.style_embedding = nn.Embedding(n_styles, cfg.style_dim) if mode.style_embedding else None
        self.style_token_embedding = nn.Embedding(n_styles, embed_dim) if mode.style_tokens else None
        if self.style_token_embedding is not None:
            nn.init.normal_(self.style_token_embedding.weight, std=0.02)  # GPT-2's embedding init
        if not cfg.finetune_gpt2:
            # Frozen: no gradients, and no dropout noise in its activations. Dropout is switched off
            # (p = 0) rather than holding GPT-2 in eval mode, because transformers only runs gradient
            # checkpointing in train mode: in train mode with p = 0 the output equals eval mode's.
            self.gpt.requires_grad_(False)
            switch_off_dropout(self.gpt)
        self.merged_adapter_parameters = 0  # LoRA parameters folded into the LM (models.lora.merge_lora)
        if cfg.lora_r:  # adapters on the frozen LM, after freezing it: they are trainable
            add_lora(self)

    # ---- pieces -----------------------------------------------------------------------------------
    def prefix(self, features: torch.Tensor, style_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) CLIP features [+ (B,) style ids, or (B, S) style weights: see style_vectors] -> (B, K, E)."""
        x = features.float()
        if self.cfg.normalize_prefix:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        if self.style_embedding is not None:
            x = torch.cat((x, self.style_vectors(style_ids)), dim=-1)  # (B, D + style_dim)
        return self.clip_project(x)

    def style_vectors(self, style: torch.Tensor) -> torch.Tensor:
        """The style vectors concatenated with the CLIP features (style_mode embedding): (B,) style ids ->
        (B, style_dim) rows of the embedding; (B, S) float weights -> weights @ embedding, a blend of the
        styles at a strength (models/blending.py). All-zero weights: the zero vector, no style at all."""
        if style.is_floating_point():
            return style.to(self.style_embedding.weight.dtype) @ self.style_embedding.weight
        return self.style_embedding(style)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, E); ids >= the tokenizer's vocabulary are <style_k> tokens."""
        wte = self.gpt.get_input_embeddings()
        if self.style_token_embedding is None:
            return wte(ids)
        v = self.tokenizer.vocab_size
        is_style = ids >= v
        out = wte(ids.masked_fill(is_style, 0))
        style = self.style_token_embedding((ids - v).clamp_min(0)).to(out.dtype)
        return torch.where(is_style.unsqueeze(-1), style, out)

    def forward(self, features: torch.Tensor, style_ids: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        """features (B, D); input_ids/attention_mask/labels (B, T): context + caption + END, right-padded.

        With ``labels`` (-100 on context and padding) returns a CaptionLoss: the mean next-token
        cross-entropy over labelled tokens, and their count. The output layer runs only at positions
        that predict a labelled token: the K prefix positions, the context and the padding would waste
        most of GPT-2's largest matmul (E x 50257). Without labels returns GPT-2's output (logits).
        """
        prefix = self.prefix(features, style_ids)  # (B, K, E)
        embeds = torch.cat((prefix, self.embed_tokens(input_ids).to(prefix.dtype)), dim=1)  # (B, K+T, E)
        b, k = prefix.shape[:2]
        mask = torch.cat((attention_mask.new_ones(b, k), attention_mask), dim=1)
        if labels is None:
            return self.gpt(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        # the LM's body (GPT2Model, LlamaModel, ...) without its output layer
        hidden = self.gpt.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        # position K-1+t predicts token t: take the hidden states that predict a labelled token
        predicting = hidden[:, k - 1:-1]  # (B, T, E)
        keep = labels != -100  # (B, T)
        logits = self.gpt.get_output_embeddings()(predicting[keep])  # (N, V)
        loss_sum = F.cross_entropy(logits.float(), labels[keep], reduction="sum")
        n = int(keep.sum())
        return CaptionLoss(loss_sum / max(n, 1), n, loss_sum)

    # ---- saving -----------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: everything, or everything but a frozen GPT-2 (its LoRA adapters are stored)."""
        if self.merged_adapter_parameters:
            raise RuntimeError("a model with merged LoRA adapters is for inference only; save the unmerged model")
        return {k: v for k, v in self.state_dict().items() if stored_key(self.cfg, k)}

    def style_id(self, style: str | None) -> int:
        if not self.tokenizer.mode.styled:
            return 0
        if style not in self.tokenizer.style_index:
            near = difflib.get_close_matches(str(style), self.cfg.styles, n=3, cutoff=0.0)
            raise UserError(f"unknown style {style!r}; closest valid: {near} "
                            f"(the model knows {len(self.cfg.styles)} styles; --style all captions in every one)")
        return self.tokenizer.style_index[style]


def stored_key(cfg: ModelConfig, key: str) -> bool:
    """Whether a checkpoint of a ``cfg`` model stores state-dict ``key``: all but a frozen GPT-2's own weights."""
    return cfg.finetune_gpt2 or not key.startswith("gpt.") or is_adapter_key(key)


def trainable_parameters(model: nn.Module) -> int:
    """How many parameters training updates, each counted once: ``model.parameters()`` yields a shared tensor
    (GPT-2's tied input/output embedding, V x E) once, where a state dict lists it under both names.
    config.json (training) and eval_config.json (evaluation) both report this figure; so LoRA adapters merged
    into the LM for inference still count."""
    merged = getattr(model, "merged_adapter_parameters", 0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad) + merged


# ---- building and loading ---------------------------------------------------------------------------
def build_model(cfg: ModelConfig, gpt2_state: dict | None = None, gpt2_config: dict | None = None,
                tokenizer_dir: str | Path | None = None) -> StyleCapModel:
    """A model from its config. LM weights come from ``gpt2_state`` if given, else the folder cfg.gpt2_path."""
    gpt = build_lm(_check_gpt2_dir(cfg.gpt2_path) if gpt2_config is None else None, gpt2_config)
    if gpt2_state is not None:
        load_lm_state(gpt, gpt2_state)  # strict but for GPT-2's constant buffers (models.compat)
    hf_tok = load_hf_tokenizer(tokenizer_dir or _check_gpt2_dir(cfg.gpt2_path))
    tok = CaptionTokenizer(hf_tok, cfg.style_mode, cfg.styles, cfg.prompt_template, cfg.legacy_clipcap)
    rows = gpt.get_input_embeddings().num_embeddings
    if tok.vocab_size > rows:
        raise UserError(f"the tokenizer of {cfg.gpt2_path} has {tok.vocab_size} tokens but its language model "
                        f"only {rows} embedding rows; pass a folder whose tokenizer and model belong together")
    return StyleCapModel(cfg, gpt, tok)


def checkpoint_payload(model: StyleCapModel, **extra: Any) -> dict:
    """Model part of a checkpoint: config, weights, GPT-2 reference; ``extra`` adds training state.
    ``clip=record`` (a clip_record, or None when the features named none) sets the config's CLIP record.
    The record is also written under the top-level "clip" key that checkpoints had before ModelConfig.clip,
    so that older StyleCap code still finds it."""
    cfg = model.cfg
    if "clip" in extra:
        cfg = replace(cfg, clip=extra.pop("clip") or {})
    if cfg.clip is not None:
        extra["clip"] = cfg.clip or None  # {} (features naming no CLIP) was stored as None
    return {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(cfg),
        "model": model.trainable_state_dict(),
        "gpt2_config": model.gpt.config.to_dict(),
        "gpt2_fingerprint": None if cfg.finetune_gpt2 else gpt2_fingerprint(cfg.gpt2_path),
        "tokenizer_files": tokenizer_files(cfg.gpt2_path) if Path(cfg.gpt2_path).is_dir() else {},
        **extra,
    }


def config_of(ckpt: dict) -> ModelConfig:
    """A StyleCap checkpoint's ModelConfig. Checkpoints saved before ModelConfig.clip carry the CLIP record
    as the top-level "clip" key (None: the features named no CLIP), or, older still, none at all."""
    cfg = ModelConfig.from_dict(ckpt["config"])
    if "clip" not in ckpt["config"] and "clip" in ckpt:
        cfg.clip = ckpt["clip"] or {}
    return cfg


def model_from_checkpoint(ckpt: dict, gpt2_path: str | None = None) -> StyleCapModel:
    cfg = config_of(ckpt)
    if gpt2_path:
        cfg.gpt2_path = str(gpt2_path)
    state = drop_legacy_gpt2_buffers(ckpt["model"])  # saved by an older transformers (models.compat)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = None
        if ckpt.get("tokenizer_files"):
            for name, text in ckpt["tokenizer_files"].items():
                if isinstance(text, bytes):
                    (Path(tmp) / name).write_bytes(text)
                else:
                    (Path(tmp) / name).write_text(text, encoding="utf-8")
            tok_dir = tmp
        # GPT-2 weights are in the checkpoint (fine-tuned, or an exported model folder): no GPT-2 folder needed
        # (LoRA adapters are "gpt." keys too, but they sit on a frozen LM: they load below, after build_model)
        lm_keys = [k for k in state if k.startswith("gpt.") and not is_adapter_key(k)]
        if cfg.finetune_gpt2 or lm_keys:
            gpt_state = {k[4:]: state[k] for k in lm_keys}
            model = build_model(cfg, gpt_state, ckpt["gpt2_config"], tok_dir)
        else:
            fp = gpt2_fingerprint(_check_gpt2_dir(cfg.gpt2_path))
            if fp != ckpt["gpt2_fingerprint"]:
                raise UserError(f"GPT-2 in {cfg.gpt2_path} is not the one this model was trained with "
                                "(weights fingerprint differs); pass --gpt2_path (or --lm_path) with the original "
                                "language-model folder")
            model = build_model(cfg, tokenizer_dir=tok_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if stored_key(cfg, k) and not GPT2_BUFFER_KEYS.fullmatch(k)]
    if missing or unexpected:
        raise UserError(f"checkpoint does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def import_clipcap(state: dict[str, torch.Tensor], gpt2_path: str) -> StyleCapModel:
    """Load a released ClipCap state dict (coco_weights.pt, conceptual_weights.pt, transformer_weights.pt).

    The mapper type, K, clip size and depth are read from the keys and shapes. GPT-2's old attention
    buffers are dropped; every other key must load. The model decodes as the original: stop at '.'.
    """
    from transformers import GPT2Config
    state = drop_legacy_gpt2_buffers(state)  # ClipCap #76: saved by an older transformers
    gcfg = GPT2Config.from_pretrained(str(_check_gpt2_dir(gpt2_path)))
    e = state["gpt.transformer.wte.weight"].shape[1] if "gpt.transformer.wte.weight" in state else gcfg.n_embd
    if "clip_project.model.0.weight" in state:
        mapping, clip_size = "mlp", state["clip_project.model.0.weight"].shape[1]
        k, extra = state["clip_project.model.2.weight"].shape[0] // e, {}
    elif "clip_project.prefix_const" in state:
        mapping = "transformer"
        k = state["clip_project.prefix_const"].shape[0]
        clip_size = state["clip_project.linear.weight"].shape[1]
        layers = {int(m.group(1)) for key in state if (m := re.match(r"clip_project\.transformer\.layers\.(\d+)\.", key))}
        extra = {"constant_len": state["clip_project.linear.weight"].shape[0] // e, "num_layers": len(layers),
                 "normalize_prefix": True}  # the released transformer model used L2-normalised features
    elif "clip_project.weight" in state:
        mapping, clip_size = "linear", state["clip_project.weight"].shape[1]
        k, extra = state["clip_project.weight"].shape[0] // e, {}
    else:
        raise UserError("not a ClipCap checkpoint: no clip_project.* mapper keys "
                        "(expected clip_project.model.0.weight, clip_project.prefix_const or clip_project.weight)")
    if e != gcfg.n_embd:
        raise UserError(f"the checkpoint's GPT-2 width {e} differs from {gpt2_path}'s n_embd {gcfg.n_embd}; "
                        "pass the GPT-2 folder it was trained with")
    has_gpt = any(key.startswith("gpt.") for key in state)
    cfg = ModelConfig(gpt2_path=str(gpt2_path), mapping_type=mapping, prefix_len=k, clip_size=clip_size,
                      style_mode="none", finetune_gpt2=has_gpt, max_len=67, legacy_clipcap=True, **extra)
    if has_gpt:
        model = build_model(cfg, {key[4:]: v for key, v in state.items() if key.startswith("gpt.")}, gcfg.to_dict())
    else:
        model = build_model(cfg)
    model.load_state_dict(state, strict=has_gpt)  # strict: nothing else is silently ignored
    return model


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only``): a checkpoint is a
    pickle, and a pickle can run code. Anything else is refused with a one-line UserError that does not
    repeat torch's advice to retry with weights_only=False (following it would run the file's code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        failure = e
    with open(path, "rb") as f:  # read only on failure: a good checkpoint is opened once
        head = f.read(8)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip (before torch 1.6: a pickle)
        # e.g. a JPEG: torch calls it an unsafe pickle, but it is simply not a checkpoint
        raise UserError(f"{path} is not a StyleCap or ClipCap checkpoint ({_file_kind(head)}, not a PyTorch file); "
                        "pass the .pt file train.py wrote (output/<run>/checkpoints/best.pt) or ClipCap's weights")
    if isinstance(failure, pickle.UnpicklingError):
        raise UserError(f"refused to load {path}: it holds objects other than tensors and plain containers "
                        "(a pickle that could run code); StyleCap loads only checkpoints made of weights, "
                        "such as train.py's and ClipCap's") from None
    reason = str(failure).strip().splitlines()[0][:200] if str(failure).strip() else type(failure).__name__
    raise UserError(f"{path} is not a loadable checkpoint ({reason}); was it fully written?") from None


def _file_kind(head: bytes) -> str:
    """What a file's first bytes say it is, for the message that refuses it as a checkpoint."""
    kinds = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
             b"RIFF": "a RIFF (WebP/WAV) file", b"%PDF": "a PDF", b"\x1f\x8b": "a gzip file"}
    return next((kind for magic, kind in kinds.items() if head.startswith(magic)), "unknown content")


def read_checkpoint(path: str | Path) -> Any:
    """The checkpoint file's contents (a StyleCap payload or a ClipCap state dict), read once:
    :func:`model_from_file` builds the model from it, and callers read the training settings from it too."""
    path = Path(path)
    if path.is_dir():  # an exported model folder (export.py): read as the checkpoint it was made from
        from models.model_folder import read_model_folder
        return read_model_folder(path)
    if not path.is_file():
        raise UserError(f"model file {path} not found; train one with train.py (checkpoints are in the run "
                        "folder, e.g. output/<run>/checkpoints/best.pt)")
    return load_checkpoint_file(path)


def load_model(path: str | Path, gpt2_path: str | None = None, device: str | torch.device = "cpu",
               merge_lora: bool = True) -> StyleCapModel:
    """A StyleCap checkpoint (rebuilt from itself alone) or a ClipCap state dict (needs ``gpt2_path``)."""
    return model_from_file(read_checkpoint(path), path, gpt2_path, device, merge_lora)


def model_from_file(ckpt: Any, path: str | Path, gpt2_path: str | None = None,
                    device: str | torch.device = "cpu", merge_lora: bool = True) -> StyleCapModel:
    """The model of a checkpoint already read (:func:`read_checkpoint`) from ``path`` (named in errors).
    LoRA adapters are merged into the LM unless ``merge_lora`` is False: the same captions, faster (docs/lora.md)."""
    if checkpoint_config(ckpt, path) is not None:
        model = model_from_checkpoint(ckpt, gpt2_path)
        if model.cfg.lora_r and merge_lora:
            merge_adapters(model)
    else:
        if not gpt2_path:
            raise UserError(f"{path} is a ClipCap state dict: pass --gpt2_path pre_model/gpt2 (the English GPT-2)")
        model = import_clipcap(ckpt, gpt2_path)
    return model.to(device).eval()


def checkpoint_config(ckpt: Any, path: str | Path) -> ModelConfig | None:
    """The ModelConfig of a StyleCap checkpoint already read, None for ClipCap weights (a plain model whose
    config is read from its shapes when it is built); anything else is a UserError naming ``path``.
    Cheap: the styles can be checked from it before GPT-2 loads."""
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        return config_of(ckpt)
    if isinstance(ckpt, dict) and any(isinstance(k, str) and k.startswith("clip_project.") for k in ckpt):
        return None
    raise UserError(f"{path} is not a StyleCap or ClipCap checkpoint (neither train.py's format nor a state dict "
                    "with clip_project.* keys)")
