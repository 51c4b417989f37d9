"""CLIP loading (OpenAI TorchScript archive, plain state dict, or model name) and robust image decoding."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from stylecap.utils import UserError, sha256_file

VIT_B32_HINT = ("download ViT-B-32.pt from OpenAI's CLIP release (https://openaipublic.azureedge.net/clip/"
                "models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt) "
                "and put it at pre_model/ViT-B-32.pt")


def _import_clip():
    """openai-clip, without its import-time 'pkg_resources is deprecated' UserWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip
    return clip


def _resolve(path_or_name: str) -> Path:
    """A file path, or an openai-clip model name found in its download folder (no download here)."""
    clip = _import_clip()
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    if path_or_name in clip.available_models():
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(clip.clip._MODELS[path_or_name])
        if cached.is_file():
            return cached
        raise UserError(f"CLIP model '{path_or_name}' is not in openai-clip's download folder "
                        f"({cached.parent}); {VIT_B32_HINT}, and pass --clip_model_path pre_model/ViT-B-32.pt")
    raise UserError(f"CLIP model file {path_or_name} not found: {VIT_B32_HINT}")


def load_clip(path_or_name: str, device: torch.device | str = "cpu"):
    """Return (model, preprocess, info). ``model`` is fp32 in eval mode; use autocast for half precision.

    Accepts the OpenAI TorchScript archive (the real ViT-B-32.pt), a plain ``torch.save`` state dict
    in OpenAI's key layout, or a model name such as ``ViT-B/32`` already in openai-clip's cache.
    """
    clip = _import_clip()
    path = _resolve(path_or_name)
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation FutureWarning is noise here
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI archive
    except RuntimeError:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path} is neither a CLIP TorchScript archive nor a state dict ({e}); "
                            f"{VIT_B32_HINT}") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    try:
        model = clip.model.build_model(state_dict)  # infers the architecture from the shapes
    except (KeyError, AttributeError, RuntimeError) as e:
        raise UserError(f"{path} does not hold a CLIP model in OpenAI's layout ({e}); {VIT_B32_HINT}") from None
    model = model.float().eval().to(device)  # build_model leaves fp16 weights; keep fp32 master copy
    preprocess = clip.clip._transform(model.visual.input_resolution)
    info = {"clip_model": str(path_or_name), "clip_sha256": sha256_file(path),
            "dim": int(model.visual.output_dim), "input_resolution": int(model.visual.input_resolution)}
    return model, preprocess, info


class ImageLoadError(Exception):
    """An image that cannot be decoded; the extractor skips it and records the reason."""


def load_image(path: str | Path, allow_truncated: bool = False, min_size: int = 224) -> Image.Image:
    """Decode any PIL-readable image to RGB, honouring EXIF orientation.

    CMYK, L, P, RGBA (composited on white) and 16-bit images become RGB. Large JPEGs are decoded
    at a reduced DCT scale (``draft``) that still leaves at least ``min_size`` pixels per side.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError("missing file")
    if path.stat().st_size == 0:
        raise ImageLoadError("zero-byte file")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
                img = ImageOps.exif_transpose(img)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"not a readable image ({type(e).__name__})") from None
    except OSError as e:
        raise ImageLoadError(f"corrupt or truncated image ({e}); --allow_truncated loads truncated JPEGs") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * 255.0 / top, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")
