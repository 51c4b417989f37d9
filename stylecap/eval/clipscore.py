"""CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021) of captions against CLIP image features.
The text side is the encoder's own (stylecap.encoders: openai-clip, open_clip, Hugging Face CLIP or SigLIP)."""
from __future__ import annotations

import numpy as np
import torch

from stylecap.encoders import ImageEncoder, openai_encoder

CLIPSCORE_PROMPT = "A photo depicts"  # Hessel et al.'s prefix, added to candidates and references


@torch.no_grad()
def _encode_text(clip_model, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """texts -> L2-normalised text features [B, D]. ``clip_model``: an ImageEncoder, or a bare openai-clip
    model (tokenised with clip.tokenize, truncated to 77 tokens, as before)."""
    enc = clip_model if isinstance(clip_model, ImageEncoder) else openai_encoder(clip_model, None)
    if not texts:
        return torch.zeros(0, 1)
    return torch.nn.functional.normalize(enc.encode_text(texts, batch_size), dim=-1)


def _prompted(caption: str, prompt: str) -> str:
    return f"{prompt} {caption}" if prompt else caption


@torch.no_grad()
def clip_score(image_features: torch.Tensor, captions: list[str], clip_model,
               references: list[list[str]] | None = None, *, prompt: str = CLIPSCORE_PROMPT,
               w: float = 2.5) -> dict:
    """CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021).

    CLIP-S(c, v) = w * max(cos(E_text(c), E_img(v)), 0), w = 2.5; RefCLIP-S(c, R, v) = harmonic
    mean of CLIP-S(c, v) and max(max_r cos(E_text(c), E_text(r)), 0). Like the authors' code,
    every text (candidate and reference) is encoded as "A photo depicts <text>".
    ``image_features`` are the raw CLIP image features of the feature file; we normalise them.
    """
    if image_features.shape[0] != len(captions):
        raise ValueError(f"{image_features.shape[0]} image features for {len(captions)} captions")
    if not captions:
        return {"CLIP-S": None, "RefCLIP-S": None, "n": 0, "per_caption": []}
    txt = _encode_text(clip_model, [_prompted(c, prompt) for c in captions])
    if image_features.shape[1] != txt.shape[1]:
        raise ValueError(f"image features are {image_features.shape[1]}-d but this CLIP's text "
                         f"embedding is {txt.shape[1]}-d: features and CLIP model do not match")
    img = torch.nn.functional.normalize(image_features.float().to(txt.device), dim=-1)
    clip_s = w * (img * txt).sum(-1).clamp(min=0)
    result = {"CLIP-S": float(clip_s.mean()), "RefCLIP-S": None, "n": len(captions),
              "per_caption": [{"CLIP-S": float(v)} for v in clip_s]}
    if references is not None:
        flat = [_prompted(r, prompt) for refs in references for r in refs]
        ref_emb = _encode_text(clip_model, flat)
        ref_s, start = [], 0
        for i, refs in enumerate(references):
            sims = ref_emb[start:start + len(refs)] @ txt[i]
            start += len(refs)
            ref_s.append(max(float(sims.max()), 0.0) if len(refs) else 0.0)
        for rec, a, b in zip(result["per_caption"], clip_s.tolist(), ref_s):
            rec["RefCLIP-S"] = 2 * a * b / (a + b) if a + b > 0 else 0.0
        result["RefCLIP-S"] = float(np.mean([r["RefCLIP-S"] for r in result["per_caption"]]))
    return result

