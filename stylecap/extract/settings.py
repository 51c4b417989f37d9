"""The extraction settings: the flags every process_*.py script shares, and the typed object built from them.

A script parses its flags, then calls :meth:`ExtractSettings.from_args`, which checks them (one-line
:class:`UserError` per problem) and resolves the defaults that depend on other flags (``chunk_batches``)
and ``--shard i/n``. The library reads only this object, never the argparse Namespace.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from stylecap import DEFAULT_CLIP
from stylecap.encoders import BACKENDS
from stylecap.extract.image_encoder import default_workers
from stylecap.utils import UserError

CHUNK_IMAGES = 2048  # default chunk size in images: a kill loses at most this much work


def add_args(p: argparse.ArgumentParser, help_for: dict[str, str] | None = None) -> None:
    """The flags the process_*.py scripts share. ``help_for``: {dest: help} for a script whose unit of
    work differs (process_conceptual.py shards and resumes by tar shard)."""
    p.add_argument("--clip_model_path", default=DEFAULT_CLIP,
                   help="CLIP weights: OpenAI's TorchScript archive (ViT-B-32.pt), a plain state dict, or a "
                        "model name such as ViT-B/32 already in openai-clip's cache (default: %(default)s); also "
                        "an open_clip checkpoint as ARCH:FILE (e.g. ViT-B-32:ckpt.pt) or folder, or a Hugging Face "
                        "CLIP/SigLIP folder (see docs/encoders.md)")
    add_backend_arg(p)
    p.add_argument("--batch_size", type=int, default=128,
                   help="images per encoder batch (default: %(default)s). Resume and --shard/--merge need the "
                        "same value in every run, since batch composition fixes the exact values")
    p.add_argument("--num_workers", type=int, default=default_workers(),
                   help="images decoded and preprocessed in parallel: DataLoader worker processes that decode ahead "
                        "of a GPU encoder; with --device cpu, threads that decode each batch between encoder "
                        "batches (default: min(4, CPU count))")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--autocast", choices=("auto", "none", "fp16", "bf16"), default="auto",
                   help="mixed precision for the encoder: auto = fp16 on CUDA, none (fp32) on the CPU (default: auto). "
                        "bf16 on the CPU is faster only with native bf16 (amx_bf16 or avx512_bf16 in "
                        "/proc/cpuinfo); without, about 3x slower than fp32, and a warning says so")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="encode only the first N images of each output file (quick trial runs)")
    p.add_argument("--fp16", action="store_true", help="store clip_embedding as float16 (half the size)")
    p.add_argument("--allow_truncated", action="store_true",
                   help="decode what is there of truncated images instead of skipping them")
    p.add_argument("--fast_jpeg_decode", action="store_true",
                   help="decode large JPEGs at a reduced DCT scale (still >= the CLIP input size per side): faster, "
                        "but features no longer equal openai-clip's (see README, 'Extracting CLIP features')")
    p.add_argument("--exif_transpose", action="store_true",
                   help="rotate images as their EXIF orientation tag says before encoding; openai-clip (and "
                        "ClipCap's features) encode the stored pixels, unrotated, which is the default")
    p.add_argument("--shard", default=None, metavar="i/n",
                   help="encode only shard i of n (0-based; contiguous blocks of whole batches) into "
                        "<output stem>.shard<i>of<n>.pkl; combine the n shard files with --merge")
    p.add_argument("--merge", action="store_true",
                   help="after all --shard i/n runs: rerun the same command with --merge instead of --shard "
                        "to combine the shard files into the final file(s), identical to a single run's")
    p.add_argument("--chunk_batches", type=int, default=None, metavar="K",
                   help=f"save progress every K batches in <output>.partial/ so a killed run resumes "
                        f"(default: about {CHUNK_IMAGES} images per chunk)")
    p.add_argument("--ddp_timeout", type=float, default=120, metavar="MIN",
                   help="under torchrun: minutes a rank that finished its share waits for the others before the "
                        "job fails (raise it when the ranks' shares take very different times; default: %(default)s)")
    for action in p._actions:  # argparse has no public setter for an added argument's help
        if help_for and action.dest in help_for:
            action.help = help_for[action.dest]


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    """--clip_backend, for every script that takes --clip_model_path (predict.py, app.py and eval mode too)."""
    p.add_argument("--clip_backend", choices=BACKENDS, default="auto",
                   help="which library loads --clip_model_path: auto (default: from its form and contents), "
                        "openai (openai-clip), open_clip, hf (a Hugging Face folder); see docs/encoders.md")


@dataclass(frozen=True)
class ExtractSettings:
    """What an extraction run was asked to do (the shared flags, checked). Which of them fix the output
    values -- and so go into run keys and meta["extraction"] -- is decided by pipeline.load_encoder."""
    clip_model_path: str = DEFAULT_CLIP
    batch_size: int = 128
    num_workers: int = 0
    device: str | None = None             # None: cuda when available
    autocast: str = "auto"                # auto | none | fp16 | bf16
    limit: int | None = None              # only the first N images of each output file
    fp16: bool = False                    # store clip_embedding as float16
    allow_truncated: bool = False
    fast_jpeg_decode: bool = False
    exif_transpose: bool = False
    chunk_batches: int = 1                # batches per saved chunk (resume granularity)
    shard: str | None = None              # "i/n" as given, recorded in conceptual's part files
    shard_index: int | None = None        # i of --shard i/n; None: not sharded
    shard_count: int | None = None        # n of --shard i/n
    merge: bool = False
    ddp_timeout: float = 120.0            # minutes a torchrun rank waits for the others
    clip_backend: str = "auto"            # auto | openai | open_clip | hf (stylecap.encoders)

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExtractSettings:
        """Check the shared flags (add_args) and build the settings; --shard i/n is parsed here."""
        if args.batch_size < 1 or args.num_workers < 0 or (args.limit is not None and args.limit < 1):
            raise UserError("--batch_size and --limit must be >= 1 and --num_workers >= 0")
        if args.ddp_timeout <= 0:
            raise UserError("--ddp_timeout must be > 0 (minutes)")
        chunk_batches = args.chunk_batches
        if chunk_batches is None:
            chunk_batches = max(1, CHUNK_IMAGES // args.batch_size)
        elif chunk_batches < 1:
            raise UserError("--chunk_batches must be >= 1")
        shard_index = shard_count = None
        if args.shard is not None:
            m = re.fullmatch(r"(\d+)/(\d+)", args.shard.strip())
            if not m or not int(m[1]) < int(m[2]):
                raise UserError(f"--shard {args.shard}: expected i/n with 0 <= i < n, e.g. --shard 0/4")
            if args.merge:
                raise UserError("--merge combines the shard files: run it without --shard")
            shard_index, shard_count = int(m[1]), int(m[2])
        return cls(clip_model_path=args.clip_model_path, batch_size=args.batch_size, num_workers=args.num_workers,
                   device=args.device, autocast=args.autocast, limit=args.limit, fp16=bool(args.fp16),
                   allow_truncated=bool(args.allow_truncated), fast_jpeg_decode=bool(args.fast_jpeg_decode),
                   exif_transpose=bool(args.exif_transpose), chunk_batches=chunk_batches, shard=args.shard,
                   shard_index=shard_index, shard_count=shard_count, merge=bool(args.merge),
                   ddp_timeout=float(args.ddp_timeout), clip_backend=args.clip_backend)
