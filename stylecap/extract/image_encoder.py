"""The image encoder behind every extraction: image files (or bytes) -> CLIP features, in batches.

Images are decoded as openai-clip decodes them (:func:`stylecap.clip_utils.open_image`), so the features
equal its own ``encode_image(preprocess(Image.open(p)))``; ``fast_jpeg_decode`` / ``exif_transpose`` opt
out. Bad images come back as (index, reason) instead of a tensor, so they are skipped and recorded without
ending the batch. :func:`extract_features` is the whole engine (paths -> embeddings; predict.py and the
benchmarks use it), :func:`encode_batches` the batch generator that stylecap.extract.pipeline's resumable runs and
stylecap.extract.conceptual's tar shards are built on.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from stylecap.clip_utils import ImageLoadError, open_image
from stylecap.cpu import cpu_bf16_warning
from stylecap.encoders import ImageEncoder, openai_encoder


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class ImageDataset(Dataset):
    """paths[k] -> (offset + k, tensor, None) or (offset + k, None, reason) for an unloadable image.
    ``decode``: open_image's keyword options (fast_jpeg_decode, exif_transpose, min_size)."""

    def __init__(self, paths, transform, allow_truncated=False, offset=0, decode: dict | None = None):
        self.paths, self.transform, self.allow_truncated, self.offset = paths, transform, allow_truncated, offset
        self.decode = decode or {}

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        i = self.offset + k
        try:
            return i, self.transform(open_image(self.paths[k], self.allow_truncated, **self.decode)), None
        except ImageLoadError as e:
            return i, None, str(e)
        except Exception as e:  # one odd file (bad EXIF, odd mode) must not end a day-long run
            return i, None, f"{type(e).__name__}: {e}"


def collate(batch):
    """-> (ok LongTensor [n_ok], images [n_ok, 3, H, W] or None, bad [(index, reason)])."""
    good = [b for b in batch if b[1] is not None]
    ok = torch.tensor([b[0] for b in good], dtype=torch.long)
    images = torch.stack([b[1] for b in good]) if good else None
    return ok, images, [(b[0], b[2]) for b in batch if b[1] is None]


class PilToUint8:
    """The PIL part of CLIP's preprocessing (resize, crop, RGB) -> uint8 [3, H, W], as ToTensor lays it out."""

    def __init__(self, pil_part):
        self.pil_part = pil_part

    def __call__(self, img):
        img = self.pil_part(img).convert("RGB")
        # numpy's transpose copy: torch's parallel permute-copy can stall on a busy 2-core machine
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def split_preprocess(preprocess):
    """Split CLIP's Compose([Resize, CenterCrop, to_rgb, ToTensor, Normalize]) (openai-clip's, open_clip's) into a
    worker part that returns uint8 (4x less to pass between processes and to copy to the GPU) and (mean, std) for the
    batched ToTensor + Normalize on the device, done with the same float ops, so values are identical.
    Another preprocess runs whole in the workers: (preprocess, None)."""
    ts = getattr(preprocess, "transforms", None)
    if not ts:  # not a Compose (e.g. a Hugging Face image processor): nothing to split, no torchvision import
        return preprocess, None
    from torchvision.transforms import Compose, Normalize, ToTensor
    if ts and len(ts) >= 2 and isinstance(ts[-2], ToTensor) and isinstance(ts[-1], Normalize):
        return PilToUint8(Compose(ts[:-2])), (ts[-1].mean, ts[-1].std)
    return preprocess, None


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """--autocast as the encoder's autocast dtype (None: fp32). auto: fp16 on CUDA, fp32 on the CPU -- on
    every CPU, also one with native bf16 (stylecap.cpu): bf16 changes the features (they are no longer
    openai-clip's) and the same command would then write other values on another machine. bf16 is opt-in."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def autocast_warning(name: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """Why --autocast ``name`` is a poor choice on ``device``, or None: bf16 on a CPU without native bf16
    runs about 3x slower than fp32 (stylecap.cpu). ``cpuinfo``: /proc/cpuinfo's text (None: this machine's)."""
    if device.type != "cpu" or autocast_dtype(name, device) is not torch.bfloat16:
        return None
    return cpu_bf16_warning("--autocast bf16", "--autocast none (fp32)", cpuinfo)


def _cpu_batches(dataset: ImageDataset, batch_size: int, threads: int):
    """Yield collate(...) of each batch of ``dataset``, decoded by a pool of ``threads`` threads (0: this thread).

    For an encoder on the CPU. Its intra-op threads already occupy every core the encoder runs on, so
    DataLoader worker processes decoding in parallel with it only oversubscribe the cores: each op of the
    encoder waits at its barrier for the thread that lost its core to a decoder (on 2 cores, the measured
    cost was about the decode time itself plus the workers' start and first batch). Here decoding and
    encoding take turns, each with all the cores: a batch is decoded by the pool (PIL releases the GIL while
    it decodes and resizes), then encoded. No worker processes to fork, nothing pickled between processes;
    the batches, and so the features, are exactly those of the DataLoader path."""
    from concurrent.futures import ThreadPoolExecutor
    n = len(dataset)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        get = pool.map if threads > 0 else map  # 0: decode in this thread, as DataLoader(num_workers=0) does
        for lo in range(0, n, batch_size):
            yield collate(list(get(dataset.__getitem__, range(lo, min(n, lo + batch_size)))))


def as_encoder(model) -> ImageEncoder:
    """An ImageEncoder (stylecap.encoders) as it is, or a bare openai-clip model wrapped in one."""
    return model if isinstance(model, ImageEncoder) else openai_encoder(model, None)


def encode_batches(paths, model, preprocess, *, batch_size=128, num_workers=0, device="cpu",
                   allow_truncated=False, autocast="auto", start=0, fast_jpeg_decode=False, exif_transpose=False):
    """Yield (ok, emb, bad, n) for each batch of paths[start:], batches at start + k * batch_size.
    ``model``: an ImageEncoder (any backend) or a bare openai-clip model; ``preprocess``: PIL -> [3, H, W]
    (the encoder's own, or one wrapping it, as app.py's thumbnail tap does). A torchvision Compose ending in
    ToTensor + Normalize (openai-clip's, open_clip's) is split (split_preprocess); any other runs whole.
    Images are decoded as openai-clip decodes them unless fast_jpeg_decode / exif_transpose (see open_image).
    ``num_workers`` decoders work in parallel: DataLoader worker processes that decode ahead while an
    accelerator encodes; on the CPU, threads that decode each batch between encoder batches (_cpu_batches).

    ok: LongTensor [n_ok] indices into ``paths``; emb: [n_ok, D] on ``device`` (autocast dtype), or
    None when the whole batch was bad; bad: [(index, reason)]; n: images the batch covered.
    """
    device, enc = torch.device(device), as_encoder(model)
    worker_tf, norm = split_preprocess(preprocess)
    decode = {"fast_jpeg_decode": fast_jpeg_decode, "exif_transpose": exif_transpose,
              "min_size": enc.input_resolution}  # draft never goes below CLIP's input size
    dataset = ImageDataset(paths[start:], worker_tf, allow_truncated, offset=start, decode=decode)
    if device.type == "cpu":
        loader = _cpu_batches(dataset, batch_size, num_workers)
    else:  # workers decode ahead while the device encodes
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if num_workers > 0 else None)
    if norm is not None:  # [3, 1, 1] each, as torchvision's normalize shapes them
        mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for v in norm)
    ac = autocast_dtype(autocast, device)
    amp = (lambda: torch.autocast(device.type, dtype=ac)) if ac is not None else contextlib.nullcontext
    with torch.inference_mode():
        for ok, x, bad in loader:
            emb = None
            if x is not None:
                x = x.to(device, non_blocking=True)
                if norm is not None:  # ToTensor: .float().div(255); Normalize: .sub_(mean).div_(std)
                    x = x.float().div_(255).sub_(mean).div_(std)
                with amp():
                    emb = enc.encode_image(x)  # [n_ok, D]
            yield ok, emb, bad, len(ok) + len(bad)


def extract_features(image_paths, model, preprocess, batch_size=128, num_workers=None, device="cpu",
                     allow_truncated=False, autocast="auto", progress=False, fast_jpeg_decode=False,
                     exif_transpose=False):
    """Encode images -> (emb fp32 [n_ok, D] on CPU, ok indices, bad [(index, reason)]). No files written.

    Embeddings stay on the device until the end, so the GPU never waits for a copy back."""
    from tqdm import tqdm
    num_workers = default_workers() if num_workers is None else num_workers
    rows, oks, bads = [], [], []
    with tqdm(total=len(image_paths), unit="img", disable=not progress) as bar:
        for ok, emb, bad, n in encode_batches(image_paths, model, preprocess, batch_size=batch_size,
                                              num_workers=num_workers, device=device,
                                              allow_truncated=allow_truncated, autocast=autocast,
                                              fast_jpeg_decode=fast_jpeg_decode, exif_transpose=exif_transpose):
            if emb is not None:
                rows.append(emb)
                oks.append(ok)
            bads += bad
            bar.update(n)
    dim = as_encoder(model).width
    emb = torch.cat(rows).float().cpu() if rows else torch.zeros(0, dim)
    return emb, (torch.cat(oks).tolist() if oks else []), bads
