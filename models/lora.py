"""LoRA adapters (``peft``) on the language model of a StyleCapModel: between a frozen LM and full tuning.

The LM's weights stay frozen (``ModelConfig.finetune_gpt2`` is False, so checkpoints record the LM folder's
fingerprint and never store its weights); each targeted projection W (d_out x d_in) gains a trainable
low-rank update, y = W x + (alpha / r) * B (A x), with A (r x d_in) and B (d_out x r). B starts at zero, so a
fresh model decodes exactly as the frozen LM does. What training updates and checkpoints store: the adapters
(the ``lora_A`` / ``lora_B`` keys), the mapper and the style embeddings.

For inference ``merge_lora`` folds every adapter into its weight, W <- W + (alpha / r) * B A, and removes the
adapter layers: the model is then a plain LM of the original architecture, with no extra matmuls per token.

peft is imported only when a model has adapters: a run without --lora_r never loads it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from models.errors import UserError

if TYPE_CHECKING:
    from models.captioner import StyleCapModel

DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.0

# Default target modules per config.model_type: the attention projections of every block, the same set in each
# architecture. GPT-2 fuses q, k, v in one Conv1D (c_attn: E -> 3E) and projects back with attn.c_proj (E -> E);
# "attn.c_proj" names the attention's c_proj only, not the MLP's (mlp.c_proj). Llama-style models (Llama,
# SmolLM2, Qwen2, Mistral) have separate q_proj, k_proj, v_proj, o_proj Linear layers. Other model types fall back
# to peft's own table (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING), or need --lora_targets.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "attn.c_proj"),
    **{t: ("q_proj", "k_proj", "v_proj", "o_proj") for t in ("llama", "qwen2", "qwen3", "mistral", "gemma",
                                                             "gemma2", "phi3", "olmo", "olmo2")},
}

ADAPTER_PREFIX = "lora_"  # peft's LoraModel.prefix: every adapter parameter's name has ".lora_" in it


def lora_settings(r: int, alpha: float | None, dropout: float | None, targets: str | None,
                  finetune_lm: bool) -> dict:
    """train.py's --lora_* flags, checked, as ModelConfig fields (lora_r, lora_alpha, lora_dropout, lora_targets).
    r = 0: no adapters, and then no other --lora_* flag may be given. ``targets``: a comma list, None = the
    architecture's default (resolved by add_lora, which records it in the config)."""
    if r < 0:
        raise UserError(f"--lora_r {r} is negative; pass a rank such as 8 (0 = no LoRA)")
    if r == 0:
        given = [f for f, v in (("--lora_alpha", alpha), ("--lora_dropout", dropout), ("--lora_targets", targets))
                 if v is not None]
        if given:
            raise UserError(f"{', '.join(given)} needs --lora_r (the adapters' rank, e.g. --lora_r 8); "
                            "without it no adapters are trained")
        return {}
    if finetune_lm:
        raise UserError("--lora_r trains adapters on a frozen GPT-2, --finetune_gpt2 trains all its weights: "
                        "pass one of them (LoRA: drop --finetune_gpt2)")
    dropout = DEFAULT_DROPOUT if dropout is None else dropout
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--lora_dropout {dropout} is outside [0, 1); pass e.g. 0.05 (0 = none)")
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if alpha <= 0:
        raise UserError(f"--lora_alpha {alpha} must be positive; the update is scaled by alpha / r (default 16)")
    names = [t.strip() for t in (targets or "").split(",") if t.strip()]
    if targets is not None and not names:
        raise UserError(f"--lora_targets {targets!r} names no module; pass a comma list such as c_attn,attn.c_proj")
    return {"lora_r": r, "lora_alpha": float(alpha), "lora_dropout": float(dropout), "lora_targets": names}


def default_targets(model_type: str) -> list[str]:
    """The target modules for an LM of ``model_type`` (its config.model_type) when --lora_targets is not given."""
    if model_type in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise UserError(f"no default LoRA targets for model type {model_type!r}; pass --lora_targets with the names of "
                    "its attention projections (e.g. q_proj,k_proj,v_proj,o_proj)")


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of targets: the module's full name is the target or ends with '.' + target."""
    return name == target or name.endswith("." + target)


def add_lora(model: "StyleCapModel") -> None:
    """Inject the adapters of ``model.cfg`` into ``model.gpt`` in place (its class and attribute names stay, so
    forward, decoding and generate() are unchanged). Called at the end of StyleCapModel.__init__, after the LM
    was frozen: the LM's dropout stays off as for a frozen LM; --lora_dropout acts on the adapters' inputs.
    Resolves cfg.lora_targets (empty: the architecture's default) and records it in the config."""
    from peft import LoraConfig
    from peft.functional import inject_adapter_in_model
    cfg, lm = model.cfg, model.gpt
    if cfg.finetune_gpt2:
        raise UserError("a model with LoRA adapters keeps its LM frozen: set finetune_gpt2 False "
                        "(drop --finetune_gpt2)")
    targets = list(cfg.lora_targets) or default_targets(lm.config.model_type)
    names = [n for n, _ in lm.named_modules()]
    missing = [t for t in targets if not any(_matches(n, t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if hasattr(m, "weight") and n})
        raise UserError(f"--lora_targets {','.join(missing)}: no such module in the {lm.config.model_type} model; "
                        f"its layers with weights are named {', '.join(leaves[:12])}")
    cfg.lora_targets = targets
    # GPT-2's Conv1D stores W as (d_in, d_out): peft must know (fan_in_fan_out), per targeted module type
    conv1d = any(type(m).__name__ == "Conv1D" for n, m in lm.named_modules() if any(_matches(n, t) for t in targets))
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, fan_in_fan_out=conv1d, bias="none")
    # A's random init draws from a fork of the global RNG: building is seeded by the caller (train.py seeds before
    # it), and loading a checkpoint, which overwrites A and B, leaves predict.py --seed's sampling stream alone
    with torch.random.fork_rng(devices=[]):
        try:
            inject_adapter_in_model(peft_cfg, lm)
        except ValueError as e:  # e.g. a target that is a LayerNorm: peft adapts Linear, Conv1D, Embedding, Conv
            raise UserError(f"--lora_targets {','.join(targets)}: {str(e).splitlines()[0]}") from None


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key is a LoRA adapter parameter (lora_A, lora_B, ...), stored with a frozen LM."""
    return f".{ADAPTER_PREFIX}" in key


def adapter_parameters(model: nn.Module) -> int:
    """How many adapter parameters ``model`` has (0 once merged)."""
    return sum(p.numel() for n, p in model.named_parameters() if is_adapter_key(n))


def merge_lora(model: "StyleCapModel") -> "StyleCapModel":
    """Fold every adapter into its base weight (W <- W + alpha / r * B A, peft's LoraLayer.merge) and put the base
    layer back in its place: what peft's merge_and_unload does layer by layer, on a model that peft did not wrap.
    The merged model decodes as the unmerged one (to float rounding) without the adapters' extra matmuls;
    it is for inference only: it can no longer be trained or saved (its LM is no longer the folder's)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    lm = model.gpt
    n_adapters = adapter_parameters(model)
    layers = [(n, m) for n, m in lm.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(lm.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(lm, "peft_config"):
        del lm.peft_config  # no adapters left (as merge_and_unload)
    # what training updated, still counted by trainable_parameters (eval_config.json = the run's config.json);
    # also marks the model as merged
    model.merged_adapter_parameters = model.merged_adapter_parameters + n_adapters
    return model
