"""CLIP loading (OpenAI TorchScript archive, plain state dict, or model name) and image decoding as openai-clip does it."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from stylecap import DEFAULT_CLIP
from stylecap.utils import UserError, sha256_file

VIT_B32_HINT = ("download ViT-B-32.pt from OpenAI's CLIP release (https://openaipublic.azureedge.net/clip/"
                "models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt) "
                f"and put it at {DEFAULT_CLIP}")


# openai-clip 1.0.1's clip/clip.py runs `from pkg_resources import packaging`, and setuptools >= 67 then warns
# "pkg_resources is deprecated as an API" on every run of every entry point. Silence exactly that warning,
# raised from that module, for the whole process (a later bare `import clip`, e.g. in the demo or bench, too);
# every other warning, from clip or elsewhere, still shows.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning, module=r"clip\.clip$")


def _import_clip():
    """openai-clip (its 'pkg_resources is deprecated' warning silenced by the filter above)."""
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
                        f"({cached.parent}); {VIT_B32_HINT}, and pass --clip_model_path {DEFAULT_CLIP}")
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


# 16-bit (and 32-bit integer) greyscale: convert("RGB") clips these to 0..255, so nearly every pixel
# of a 16-bit image turns white (tested). They are scaled to 8 bits instead: the one mode where our
# pixels deliberately differ from openai-clip's.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")


def open_image(path: str | Path | bytes, allow_truncated: bool = False, *, fast_jpeg_decode: bool = False,
               exif_transpose: bool = False, min_size: int = 224) -> Image.Image:
    """Decode an image exactly as openai-clip's ``preprocess(Image.open(path))`` receives it.
    ``path`` may also be the file's bytes (e.g. a member of a tar shard), decoded the same way.

    By default the result is the file as ``Image.open`` gives it, fully decoded, in its own mode:
    CLIP's preprocess then resizes it (bicubic, short side) in that mode, centre-crops and applies
    ``convert("RGB")`` (openai-clip's ``_convert_image_to_rgb``). So RGBA, LA and P images are not
    composited on a background but converted as openai-clip converts them, EXIF orientation is NOT
    applied, and JPEGs are decoded at full resolution: the feature equals openai-clip's own, which is
    what ClipCap's features and released weights were made with (tests/test_features_exact.py).

    Exceptions, each where openai-clip's handling is bad or impossible:

    * 16-bit greyscale (modes I;16*, I): scaled from 0..65535 to 0..255 (``WIDE_MODES``), because
      ``convert("RGB")`` clips them and the image becomes almost entirely white;
    * truncated files, only with ``allow_truncated``: openai-clip cannot open them at all; PIL then
      decodes what is there (the rest is grey).

    Opt-ins (``--fast_jpeg_decode`` / ``--exif_transpose`` of process_*.py; their cost in feature
    distance and gain in speed are measured by ``python -m bench.decode_fidelity``, see the README):

    * ``fast_jpeg_decode``: decode JPEGs at a reduced DCT scale (PIL ``draft``) that still leaves at
      least ``min_size`` pixels per side (the CLIP input size): several times faster for large photos;
    * ``exif_transpose``: rotate/flip as the EXIF orientation tag says (the image as a viewer shows it).
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        source = io.BytesIO(path)  # the same decoder reads it: identical pixels to the file's
        if not len(path):
            raise ImageLoadError("zero-byte file")
    else:
        source = path = Path(path)
        if not path.is_file():
            raise ImageLoadError("missing file")
        if path.stat().st_size == 0:
            raise ImageLoadError("zero-byte file")
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:  # the pixels stay loaded after the file is closed
                if fast_jpeg_decode and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"not a readable image ({type(e).__name__})") from None
    except OSError as e:
        raise ImageLoadError(f"corrupt or truncated image ({e}); --allow_truncated loads truncated JPEGs") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    return _eight_bit(img)


def load_image(path: str | Path, allow_truncated: bool = False, min_size: int = 224, *,
               fast_jpeg_decode: bool = False, exif_transpose: bool = False) -> Image.Image:
    """:func:`open_image` converted to RGB with openai-clip's ``convert("RGB")`` (for display and thumbnails;
    CLIP features go through :func:`open_image` so that the resize happens in the file's own mode)."""
    return open_image(path, allow_truncated, fast_jpeg_decode=fast_jpeg_decode, exif_transpose=exif_transpose,
                      min_size=min_size).convert("RGB")


def _eight_bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer greyscale -> 8-bit L (see WIDE_MODES); every other mode unchanged."""
    if img.mode not in WIDE_MODES:
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(arr * 255.0 / top, 0, 255).astype(np.uint8))
