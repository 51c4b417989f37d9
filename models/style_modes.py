"""The style-injection modes: one table, read by the model, the tokenizer, the data encoder, train.py's
--style_mode choices, scripts/ablate_style.sh (its default MODES) and the tests. A new mode is one entry
in MODES plus the code it names.

Each mode says how style reaches GPT-2, through the prefix or through context tokens (or both):

    mode       prefix (B, K, E) from                      context tokens after the prefix (no loss)
    embedding  mapper(CLIP (D) ++ style embedding (64))   none
    token      mapper(CLIP (D))                           <style_k>: one id >= GPT-2's vocabulary
    prompt     mapper(CLIP (D))                           tokens("write a {style} caption:")
    none       mapper(CLIP (D))                           none (plain captions, no styles)

``auto`` is not a mode: train.py resolves it to embedding (the data has styles) or none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from models.errors import UserError

STYLE_TOKEN = "<style_{}>"  # the token of style k (style_mode token)


def no_context(tok: Any, style: str | None) -> list[int]:
    """Nothing between the prefix and the caption."""
    return []


def style_token_context(tok: Any, style: str | None) -> list[int]:
    """One <style_k> token; its id is GPT-2's vocabulary size + k (the model embeds it itself)."""
    return [tok.vocab_size + tok.style_index[style]]


def prompt_context(tok: Any, style: str | None) -> list[int]:
    """The tokens of the prompt template with the style's name filled in."""
    return tok.tok(tok.prompt_template.format(style=style), add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class StyleMode:
    name: str
    help: str
    styled: bool  # needs styled data (records with 'style'); False: plain captions, style ids all 0
    style_embedding: bool  # prefix: a learned (S, style_dim) embedding concatenated to the CLIP feature
    style_tokens: bool  # context: <style_k> tokens with their own trainable (S, E) embedding table
    context: Callable[[Any, "str | None"], list[int]]  # (CaptionTokenizer, style) -> context token ids

    @property
    def adds_context(self) -> bool:
        """Whether captions get context tokens (whose length differs between styles)."""
        return self.context is not no_context


MODES: dict[str, StyleMode] = {m.name: m for m in (
    StyleMode("embedding", "learned style vector concatenated to the CLIP feature before the mapper",
              styled=True, style_embedding=True, style_tokens=False, context=no_context),
    StyleMode("token", "one trainable <style_k> token between the prefix and the caption",
              styled=True, style_embedding=False, style_tokens=True, context=style_token_context),
    StyleMode("prompt", "the text prompt 'write a {style} caption:' between the prefix and the caption",
              styled=True, style_embedding=False, style_tokens=False, context=prompt_context),
    StyleMode("none", "no style: plain captions",
              styled=False, style_embedding=False, style_tokens=False, context=no_context),
)}
STYLE_MODES = tuple(MODES)  # the names, in the table's order: ("embedding", "token", "prompt", "none")


def style_mode(name: str) -> StyleMode:
    """The table's entry for ``name``, or a UserError that lists the valid names."""
    if name not in MODES:
        raise UserError(f"--style_mode {name!r} is not one of {', '.join(STYLE_MODES)}")
    return MODES[name]
