"""What the opt-in decoding flags of process_*.py cost in feature distance and gain in speed.

    python -m bench.decode_fidelity [--n 50] [--no_full] [--workers 2] [--out bench/decode_fidelity.json]

By default features equal openai-clip's ``encode_image(preprocess(Image.open(p)))``. This measures the
two opt-ins against that exact path, on photo-like JPEGs (stylecap/demo/photos.py; quality 90):

* ``--fast_jpeg_decode`` on ``n`` 1024x768 and ``n`` 2048x1536 JPEGs;
* ``--exif_transpose`` on ``n`` 1024x768 JPEGs tagged "rotate 90" (EXIF orientation 6, as phones write
  them); on untagged images it changes nothing.

Reported per flag and image set: the normalised pixel tensors' mean and max |difference| (and their
spread, for scale); the features' cosine distance (1 - cos) and relative L2 ||f - f_exact|| / ||f_exact||
(mean and max over images; for scale, also between different images of the set) with the small CLIP
of stylecap/demo/small_models.py and, unless --no_full, a full-size random-weight ViT-B/32
``clip.model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)`` (random weights: the released
ViT-B/32 may be more or less sensitive); speed as images/s of decode + preprocess alone (one process:
what a DataLoader worker runs, i.e. decode, resize, crop, RGB, as uint8) and end to end
(``extract_features``: DataLoader workers decode, the small CLIP encodes).
Timings interleave the variants and keep the best of ``--repeats``: the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import FULL_CLIP  # noqa: E402
from stylecap.clip_utils import _import_clip, load_clip, open_image  # noqa: E402
from stylecap.demo.photos import photo_like, save_jpeg  # noqa: E402
from stylecap.demo.small_models import make_clip  # noqa: E402
from stylecap.extract.image_encoder import extract_features, split_preprocess  # noqa: E402
from stylecap.utils import atomic_write_json  # noqa: E402

FLAGS = {"fast_jpeg_decode": {"fast_jpeg_decode": True}, "exif_transpose": {"exif_transpose": True}}
SETS = {"fast_jpeg_decode": ("1024x768", "2048x1536"), "exif_transpose": ("1024x768 EXIF-rotated",)}


def make_images(folder: Path, n: int) -> dict[str, list[Path]]:
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sets: dict[str, list[Path]] = {"1024x768": [], "2048x1536": [], "1024x768 EXIF-rotated": []}
    for i in range(n):
        small = photo_like(1000 + i, 1024, 768)
        sets["1024x768"].append(save_jpeg(small, folder / f"a{i:03d}.jpg"))
        sets["1024x768 EXIF-rotated"].append(save_jpeg(small, folder / f"r{i:03d}.jpg", exif=exif.tobytes()))
        sets["2048x1536"].append(save_jpeg(photo_like(2000 + i, 2048, 1536), folder / f"b{i:03d}.jpg"))
    return sets


def pixels(paths: list[Path], preprocess, opts: dict | None) -> torch.Tensor:
    """(N, 3, R, R) normalised pixels; opts None = openai-clip's own ``preprocess(Image.open(p))``."""
    from PIL import Image
    if opts is None:
        return torch.stack([preprocess(Image.open(p)) for p in paths])
    return torch.stack([preprocess(open_image(p, **opts)) for p in paths])


@torch.inference_mode()
def encode(model, x: torch.Tensor, batch: int = 25) -> torch.Tensor:
    return torch.cat([model.encode_image(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def distances(f: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = 1 - torch.nn.functional.cosine_similarity(f, ref, dim=-1)
    rel = (f - ref).norm(dim=-1) / ref.norm(dim=-1)
    return {"cosine_distance_mean": cos.mean().item(), "cosine_distance_max": cos.max().item(),
            "rel_l2_mean": rel.mean().item(), "rel_l2_max": rel.max().item()}


def rates(fns: dict, n: int, repeats: int) -> dict:
    """images/s of each fn (best of ``repeats``), the variants interleaved so that load spikes hit all."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: n / v for k, v in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="images per set (default: %(default)s)")
    ap.add_argument("--no_full", action="store_true", help="skip the full-size random-weight ViT-B/32")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for end to end (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats, best kept (default: %(default)s)")
    ap.add_argument("--parts", default="fidelity,speed", help="what to measure (default: %(default)s)")
    ap.add_argument("--out", default="bench/decode_fidelity.json", help="results file (default: %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    clip = _import_clip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_clip(tmp, seed=0)
        small, _, info = load_clip(str(tmp / "small_clip.pt"))
        models = {"small CLIP": small}
        if not args.no_full:
            torch.manual_seed(0)
            models["ViT-B/32 (random weights)"] = clip.model.CLIP(*FULL_CLIP).eval()
        preprocess = clip.clip._transform(info["input_resolution"])
        (tmp / "img").mkdir()
        t = time.perf_counter()
        sets = make_images(tmp / "img", args.n)
        print(f"made {sum(map(len, sets.values()))} images in {time.perf_counter() - t:.0f}s", flush=True)

        results: dict = {"n_per_set": args.n, "torch_threads": 2, "workers": args.workers, "fidelity": {}, "speed": {}}
        for name, paths in (sets.items() if "fidelity" in args.parts else ()):
            ref = pixels(paths, preprocess, None)
            exact = pixels(paths, preprocess, {})
            assert torch.equal(exact, ref), "the default decoding must give openai-clip's own pixels"
            ref_feats = {m: encode(model, ref) for m, model in models.items()}
            # scale: the distance between DIFFERENT images' exact features (each image vs the next one)
            results["fidelity"][f"between images | {name}"] = {
                m: distances(f.roll(1, dims=0), f) for m, f in ref_feats.items()}
            for flag, opts in FLAGS.items():
                if name not in SETS[flag]:
                    continue
                x = pixels(paths, preprocess, opts)
                d = (x - ref).abs()
                row = {"pixel_abs_diff_mean": d.mean().item(), "pixel_abs_diff_max": d.max().item(),
                       "pixel_spread_std": ref.std().item()}
                for m, model in models.items():
                    row[m] = distances(encode(model, x), ref_feats[m])
                results["fidelity"][f"{flag} | {name}"] = row
                print(f"{flag} | {name}: {json.dumps(row)}", flush=True)

        worker_tf, _ = split_preprocess(preprocess)  # what a DataLoader worker runs: decode, resize, crop, RGB
        for name in (("1024x768", "2048x1536") if "speed" in args.parts else ()):
            paths = sets[name]
            variants = {"exact": {}, **FLAGS}
            speed = rates({f"decode+preprocess {v}": (lambda o=o: [worker_tf(open_image(p, **o)) for p in paths])
                           for v, o in variants.items()}, len(paths), args.repeats)
            speed.update(rates({f"end to end {v}": (lambda o=o: extract_features(
                [str(p) for p in paths], small, preprocess, batch_size=25, num_workers=args.workers, **o))
                for v, o in variants.items()}, len(paths), args.repeats))
            results["speed"][name] = {k: round(v, 1) for k, v in speed.items()}
            print(f"speed {name} (images/s): {json.dumps(results['speed'][name])}", flush=True)
    atomic_write_json(args.out, results)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
