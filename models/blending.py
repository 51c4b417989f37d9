"""Style blends at inference: a weighted mix of a model's styles, at a chosen strength (``--style_scale``).

A StyleBlend travels where a style name does (predict.py's and app.py's items, decoding's ``styles``). What
a blend means depends on the style mode (models/style_modes.py), from the entry's own fields:

    style_embedding (embedding)  the style vector concatenated with the CLIP feature is
                                 scale * sum_i w_i * E[style_i]   (style_dim); scale 0: the zero vector
    style_tokens (token)         the <style_k> token's embedding is scale * sum_i w_i * T[style_i]   (E)
    neither, styled (prompt)     refused: the prompt names one style in words, there is nothing to mix
    not styled (none)            styles are ignored (a plain model)

The weights are >= 0 and normalised to sum to 1 (``Happy:7,Gloomy:3`` is ``Happy:0.7,Gloomy:0.3``): they
say which direction, ``scale`` says how far. A plain style name never becomes a blend at scale 1, so it
decodes exactly as it always did (models/decoding.py's own path).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.errors import UserError
from models.style_modes import StyleMode

if TYPE_CHECKING:
    from models.captioner import StyleCapModel


@dataclass(frozen=True)
class StyleBlend:
    """A mix of a model's styles for one caption. ``weights``: (style as the model spells it, weight),
    weights >= 0 summing to 1; ``scale``: the strength (0 = no style, 1 = as trained, > 1 exaggerated)."""
    weights: tuple[tuple[str, float], ...]
    scale: float = 1.0

    @property
    def label(self) -> str:
        """Its name in outputs (predictions' "style"): the one style's name, or "Happy:0.7,Gloomy:0.3"."""
        if len(self.weights) == 1:
            return self.weights[0][0]
        return ",".join(f"{name}:{w:g}" for name, w in self.weights)

    @property
    def anchor(self) -> str:
        """The style of largest weight (the first of equals): its context tokens give the blend's layout."""
        return max(self.weights, key=lambda nw: nw[1])[0]

    def record(self) -> dict:
        """The keys a prediction of this blend gets besides "style"."""
        return {"style_blend": dict(self.weights), "style_scale": self.scale}

    def __str__(self) -> str:
        return self.label


def make_blend(parts: list[tuple[str, float]], scale: float = 1.0) -> StyleBlend:
    """A StyleBlend from (style, weight) pairs (names already checked against the model): weights are
    numbers >= 0, not all 0, normalised to sum to 1; a style named twice gets the sum of its weights.
    ``scale`` is a finite number >= 0. Anything else is a UserError."""
    check_scale(scale)
    total: dict[str, float] = {}
    for name, w in parts:
        if not math.isfinite(w) or w < 0:
            raise UserError(f"style weight {w:g} for {name!r} is not a number >= 0; "
                            "a blend is NAME:WEIGHT,NAME:WEIGHT with weights >= 0, e.g. Happy:0.7,Gloomy:0.3")
        total[name] = total.get(name, 0.0) + w
    s = sum(total.values())
    if not total or s <= 0:
        raise UserError("the style weights of a blend sum to 0; give at least one positive weight, "
                        "e.g. Happy:0.7,Gloomy:0.3 (--style_scale 0 is the way to turn the style off)")
    return StyleBlend(tuple((name, w / s) for name, w in total.items()), float(scale))


def check_scale(scale: float) -> None:
    if not math.isfinite(scale) or scale < 0:
        raise UserError(f"--style_scale {scale:g} is not a number >= 0 "
                        "(0 = no style, 1 = as trained, above 1 = exaggerated)")


def check_blendable(mode: StyleMode, what: str = "a style blend or --style_scale") -> None:
    """UserError for a mode that has nothing to mix (prompt: the style is the prompt's words)."""
    if mode.styled and not (mode.style_embedding or mode.style_tokens):
        raise UserError(f"{what} needs a model with style_mode embedding or token; this model's "
                        f"style_mode {mode.name} writes the style's name into a text prompt, which cannot be "
                        "mixed or scaled: pass plain style names and no --style_scale")


def style_weights(model: "StyleCapModel", styles: list) -> torch.Tensor:
    """Styles (names, or StyleBlends) -> (B, S) float weights over the model's styles: one-hot rows for
    names, scale * weights for blends. One-hot rows give exactly the style's own vectors (x 1.0, + 0.0)."""
    w = torch.zeros(len(styles), len(model.cfg.styles))
    for i, s in enumerate(styles):
        if isinstance(s, StyleBlend):
            for name, weight in s.weights:
                w[i, model.style_id(name)] = s.scale * weight
        else:
            w[i, model.style_id(s)] = 1.0
    return w


def blend_context_embeds(model: "StyleCapModel", features: torch.Tensor, styles: list) -> torch.Tensor:
    """models.decoding.context_embeds for a batch that holds a StyleBlend: (B, D) features -> (B, K + C, E),
    the prefix from the blended style vectors, then the context, whose <style_k> tokens get the blended
    token embeddings. The context's layout (C) is the anchor style's (tokenizer.context_ids)."""
    check_blendable(model.tokenizer.mode)
    device = features.device
    weights = style_weights(model, styles).to(device)  # (B, S)
    prefix = model.prefix(features, weights)  # (B, K, E)
    ctx = torch.tensor([model.tokenizer.context_ids(s) for s in styles], dtype=torch.long, device=device)  # (B, C)
    if ctx.shape[1] == 0:
        return prefix
    embeds = model.embed_tokens(ctx)  # (B, C, E)
    if model.style_token_embedding is not None:
        table = model.style_token_embedding.weight  # (S, E)
        mixed = (weights.to(table.dtype) @ table).to(embeds.dtype)  # (B, E)
        is_style = (ctx >= model.tokenizer.vocab_size).unsqueeze(-1)  # (B, C, 1)
        embeds = torch.where(is_style, mixed.unsqueeze(1), embeds)
    return torch.cat((prefix, embeds.to(prefix.dtype)), dim=1)
