"""Every place where StyleCap's code differs between the torch / transformers versions it supports.

requirements.txt states the supported ranges (docs/versions.md: each combination tested, with its command).
Code that must differ between versions calls one of these small, named shims; each says why it exists.
They detect the *feature* (an attribute, a field) where they can, not a version number: a release that
back-ports or removes a name is then handled by what it really has. No other module checks versions
(tests/test_compat.py greps for it).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import UserError


# ---- the KV cache's name ----------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _cache_field() -> str:
    """transformers 5 renamed the KV cache ``past_key_values`` -> ``cache``, in model outputs and in the
    ``generate()`` / ``forward()`` keyword (5.x still accepts the old keyword, with a deprecation warning;
    4.x knows only the old name). The output dataclass's fields tell which this transformers has."""
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions as Out
    return "cache" if "cache" in Out.__dataclass_fields__ else "past_key_values"


def output_cache(output: Any):
    """The KV cache of a causal LM's forward output (``use_cache=True``), under either name."""
    return getattr(output, _cache_field())


def cache_kwargs(cache: Any) -> dict:
    """``{name: cache}`` to pass a precomputed KV cache to ``generate()`` under this version's keyword."""
    return {_cache_field(): cache}


# ---- activation (gradient) checkpointing ------------------------------------------------------------
def enable_activation_checkpointing(lm: nn.Module) -> None:
    """transformers 5 renamed ``gradient_checkpointing_enable`` -> ``activation_checkpointing_enable`` (the
    old name warns and goes in 6.0); 4.x has only the old name."""
    enable = getattr(lm, "activation_checkpointing_enable", None) or lm.gradient_checkpointing_enable
    enable()


# ---- GPT-2's attention buffers ----------------------------------------------------------------------
# transformers before 4.2x saved GPT-2's causal mask (attn.bias, a (1, 1, n_positions, n_positions) lower
# triangle) and attn.masked_bias (-1e4) in the state dict; later releases make them non-persistent buffers
# or compute the mask, so those keys are "unexpected" there (ClipCap issue #76: its released weights would
# not load). Both are constants, never learned: dropping them loses nothing, and a version that still
# expects them rebuilds them itself, so their absence is harmless too.
GPT2_BUFFER_KEYS = re.compile(r"(.*\.)?h\.\d+\.attn\.(bias|masked_bias)")


def drop_legacy_gpt2_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without GPT-2's constant attention buffers (keys ``...h.{i}.attn.bias|masked_bias``)."""
    return {k: v for k, v in state.items() if not GPT2_BUFFER_KEYS.fullmatch(k)}


def load_lm_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a language model's weights saved by any supported transformers: strict, except for GPT-2's
    constant attention buffers, which may be present (older transformers) or absent (newer) on either side."""
    missing, unexpected = lm.load_state_dict(drop_legacy_gpt2_buffers(state), strict=False)
    missing = [k for k in missing if not GPT2_BUFFER_KEYS.fullmatch(k)]
    if missing or unexpected:
        raise UserError(f"the language model's weights do not fit its config: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}; the checkpoint or model folder is damaged or of another model")


# ---- Hugging Face image encoders (stylecap.encoders) ------------------------------------------------------
def pooled_features(out: Any) -> torch.Tensor:
    """get_image_features / get_text_features return the (B, D) tensor in transformers 4.x, an output whose
    pooler_output is that tensor in 5.x."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def pil_image_processor(folder: str | Path):
    """AutoImageProcessor with the PIL/numpy backend, whether or not torchvision is installed: transformers 5
    would otherwise pick its torchvision backend where torchvision exists, whose values differ (bicubic resize),
    so the same folder would give other features on another machine. 5.x says backend="pil", 4.x
    use_fast=False (both name the PIL processor); from_pretrained takes **kwargs, so only the version tells
    which keyword this one reads."""
    import transformers
    from transformers import AutoImageProcessor
    major = int(transformers.__version__.split(".")[0])
    kw = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    return AutoImageProcessor.from_pretrained(str(folder), **kw)
