"""The language model under the prefix: any Hugging Face ``AutoModelForCausalLM`` (GPT-2, Llama, Qwen2, ...).

How it is built (from a folder or a checkpoint's config dict), how its dropout is switched off when it is frozen,
and which of its folder's files a checkpoint embeds. models.captioner's StyleCapModel holds it as ``gpt``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def build_lm(path: str | Path | None = None, lm_config: dict | None = None) -> nn.Module:
    """The causal LM: from its config dict (a checkpoint's "gpt2_config"; random weights, to be loaded), else
    from the folder ``path``. AutoModelForCausalLM picks the class from the config's model_type: a GPT-2
    folder or config gives GPT2LMHeadModel as before, a Llama one LlamaForCausalLM, and so on. fp32 whatever
    the folder's dtype (Qwen2.5 ships bf16): --precision decides the compute precision, by autocast.
    The folder's generation defaults (a chat model's temperature, top-p, repetition penalty) are dropped:
    StyleCap's decoding settings come from its DecodeConfig alone, the same for a folder and a checkpoint."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, GenerationConfig
    _quiet_transformers()
    if lm_config is not None:
        config = CONFIG_MAPPING[lm_config.get("model_type", "gpt2")].from_dict(lm_config)
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    lm.generation_config = GenerationConfig()
    return lm


def switch_off_dropout(lm: nn.Module) -> None:
    """Dropout p = 0 everywhere in ``lm``: its nn.Dropout modules (GPT-2) and the attention-dropout rates
    that Llama- and Qwen2-style attention modules keep as a float attribute and pass to the attention
    function in train mode (their config's attention_dropout)."""
    for m in lm.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    if isinstance(getattr(lm.config, "attention_dropout", None), float):
        lm.config.attention_dropout = 0.0


def tokenizer_files(gpt2_path: str | Path) -> dict[str, str | bytes]:
    """The LM folder's small tokenizer and config files, embedded in every checkpoint: text as str, and binary
    files (a SentencePiece tokenizer.model) as bytes."""
    out: dict[str, str | bytes] = {}
    for p in sorted(Path(gpt2_path).iterdir()):
        if p.is_file() and p.suffix in (".json", ".txt", ".model") and p.stat().st_size < 16 << 20:
            data = p.read_bytes()
            try:
                out[p.name] = data.decode("utf-8")
            except UnicodeDecodeError:
                out[p.name] = data
    return out
