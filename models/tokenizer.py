"""CaptionTokenizer: one place that turns (style, caption) into token ids, and ids back into text.

Training and decoding both build the style context here, so they cannot drift apart.
Sequence layout fed to GPT-2 (after the K prefix embeddings): the style context, which the mode's
entry in models.style_modes.MODES defines (none for embedding/none, <style_k> for token, the prompt's
tokens for prompt), then caption tokens + END.

END is the tokenizer's end token (eos_token): <|endoftext|> for GPT-2, </s> or <|end_of_text|> for Llama-style
tokenizers, <|endoftext|> or <|im_end|> for Qwen2's; [SEP] for BERT-style (Chinese) tokenizers. It ends every
training caption and stops generation.

Rules for any Hugging Face tokenizer (docs/decoders.md):
* No BOS: text is always tokenized with ``add_special_tokens=False``, so a tokenizer that adds a BOS
  (Llama's <s>) adds none, neither before the caption nor before a prompt. The K prefix embeddings start the
  sequence, in the BOS's place, as in ClipCap; training and decoding see the same layout.
* Padding: the pad token, or END when the tokenizer has none (GPT-2, Llama). Padding is masked by the
  attention mask and its labels are -100 (stylecap.train.data.collate labels by position, not by id), so a
  pad id equal to END never hides the real END's loss.
* Chat templates are never applied: captions are plain text after the prefix.

Style tokens <style_k> get ids >= the tokenizer's vocabulary size; their embeddings live in the model's own
trainable table, so the LM's vocabulary and output layer are unchanged (and they can never be generated:
models.decoding masks the ids past the tokenizer's vocabulary where the LM's output layer has such rows).
"""
from __future__ import annotations

from pathlib import Path

from models.blending import StyleBlend
from models.errors import UserError
from models.style_modes import STYLE_TOKEN, style_mode as lookup_style_mode


def load_hf_tokenizer(path: str | Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


class CaptionTokenizer:
    def __init__(self, hf_tokenizer, style_mode: str = "none", styles: list[str] | tuple = (),
                 prompt_template: str = "write a {style} caption:", legacy_clipcap: bool = False):
        self.tok = hf_tokenizer
        self.style_mode, self.styles = style_mode, list(styles)
        self.prompt_template, self.legacy_clipcap = prompt_template, legacy_clipcap
        self.bert_style = hf_tokenizer.sep_token is not None and hf_tokenizer.eos_token is None
        self.eos_id = hf_tokenizer.sep_token_id if self.bert_style else hf_tokenizer.eos_token_id
        if self.eos_id is None:
            raise UserError(f"the tokenizer {type(hf_tokenizer).__name__} has neither an end-of-text token (eos_token) "
                            "nor a [SEP] token (BERT-style): set eos_token in the LM folder's tokenizer_config.json")
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else self.eos_id
        self.vocab_size = len(hf_tokenizer)  # the tokenizer's vocabulary; ids >= this are style tokens
        self.style_index = {s: i for i, s in enumerate(self.styles)}
        self.mode = lookup_style_mode(style_mode)
        if self.mode.style_tokens:
            names = [STYLE_TOKEN.format(i) for i in range(len(self.styles))]
            hf_tokenizer.add_special_tokens({"additional_special_tokens": names})
            ids = hf_tokenizer.convert_tokens_to_ids(names)
            assert ids == list(range(self.vocab_size, self.vocab_size + len(names))), "style token ids"
        self._ctx_cache: dict[str | None, list[int]] = {}

    # ---- encoding -------------------------------------------------------------------------------
    def encode_caption(self, caption: str) -> list[int]:
        """Caption tokens followed by END (no BOS/CLS, whatever the tokenizer's default: the prefix plays that role)."""
        ids = self.tok(caption.strip(), add_special_tokens=False)["input_ids"]
        return ids if self.legacy_clipcap else ids + [self.eos_id]

    def encode_captions(self, captions: list[str]) -> list[list[int]]:
        """Batched (fast-tokenizer) version of encode_caption."""
        batch = self.tok([c.strip() for c in captions], add_special_tokens=False)["input_ids"]
        return batch if self.legacy_clipcap else [ids + [self.eos_id] for ids in batch]

    def context_ids(self, style: str | None) -> list[int]:
        """Tokens placed between the prefix and the caption (no loss on them). A StyleBlend has its anchor
        style's tokens; the model mixes the embedding of its <style_k> token (models/blending.py)."""
        if isinstance(style, StyleBlend):
            style = style.anchor
        if style not in self._ctx_cache:
            self._ctx_cache[style] = self.mode.context(self, style)
        return self._ctx_cache[style]

    @property
    def adds_context(self) -> bool:
        """Whether this mode puts context tokens between the prefix and the caption."""
        return self.mode.adds_context

    # ---- decoding -------------------------------------------------------------------------------
    @property
    def stop_ids(self) -> list[int]:
        """Generation stops here: END, or '.' for imported ClipCap models (trained without END)."""
        if self.legacy_clipcap:
            return [self.tok(".", add_special_tokens=False)["input_ids"][0]]
        return [self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text up to the first stop token (kept for ClipCap's '.', dropped for END)."""
        stop = set(self.stop_ids)
        out = []
        for i in ids:
            if i in stop:
                if self.legacy_clipcap:
                    out.append(i)
                break
            out.append(i)
        text = self.tok.decode(out, skip_special_tokens=True)
        if self.bert_style:  # BERT decoding puts spaces between characters; Chinese has none
            text = "".join(text.split())
        return text.strip()
