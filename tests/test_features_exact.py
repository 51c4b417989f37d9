"""Issue 8 item 3: by default a feature equals openai-clip's own ``encode_image(preprocess(Image.open(p)))``.

The reference is computed with openai-clip's ``_transform`` (the preprocess that ClipCap's features and
released weights were made with) on the file as ``Image.open`` returns it; ours goes through the real
extraction paths (process_flickr.py, and extract_features as predict.py uses it) with the small CLIP.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import process_flickr
from stylecap.clip_utils import _import_clip, load_clip, open_image
from stylecap.demo.photos import photo_like, save_jpeg
from stylecap.extract.image_encoder import extract_features
from stylecap.features import load_features


def _rgba(seed: int) -> Image.Image:
    img = photo_like(seed, 400, 300).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 400, dtype=np.float32), (300, 1)).astype(np.uint8)  # 0 .. opaque
    img.putalpha(Image.fromarray(alpha))
    return img


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict:
    """name -> path: JPEGs of several sizes, EXIF-rotated, and the modes convert('RGB') handles."""
    d = tmp_path_factory.mktemp("exact")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    paths = {
        "small.jpg": save_jpeg(photo_like(1, 320, 240), d / "small.jpg"),
        "xga.jpg": save_jpeg(photo_like(2, 1024, 768), d / "xga.jpg"),
        "large.jpg": save_jpeg(photo_like(3, 3000, 2000), d / "large.jpg"),
        "exif.jpg": save_jpeg(photo_like(4, 640, 480), d / "exif.jpg", exif=exif.tobytes()),
        "gray.jpg": save_jpeg(photo_like(5, 800, 600).convert("L"), d / "gray.jpg"),
        "cmyk.jpg": save_jpeg(photo_like(6, 500, 400).convert("CMYK"), d / "cmyk.jpg"),
    }
    _rgba(7).save(d / "rgba.png")
    photo_like(8, 500, 375).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    photo_like(9, 400, 300).convert("LA").save(d / "la.png")
    for name in ("rgba.png", "palette.png", "la.png"):
        paths[name] = d / name
    return paths


@pytest.fixture(scope="module")
def reference(small_models, images) -> dict:
    """image id (file stem) -> openai-clip's feature [D]: encode_image(_transform(res)(Image.open(p)))."""
    clip = _import_clip()
    model, _, info = load_clip(str(small_models / "small_clip.pt"))
    preprocess = clip.clip._transform(info["input_resolution"])
    out = {}
    with torch.inference_mode():
        for name, p in images.items():
            out[p.stem] = model.encode_image(preprocess(Image.open(p)).unsqueeze(0))[0]
    return out


def _assert_exact(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    # float tolerance relative to the feature's scale: batch vs single-image matmuls round differently
    tol = 1e-5 * float(ref.abs().max())
    diff = float((ours - ref).abs().max())
    assert diff <= tol, f"{name}: max |ours - openai-clip| = {diff:.3g} > {tol:.3g}"


def test_features_equal_openai_clip_process_flickr(small_models, images, reference, tmp_path):
    token = tmp_path / "caps.token"
    token.write_text("".join(f"{n}#0\ta picture .\n" for n in images))
    out = tmp_path / "exact.pkl"
    assert process_flickr.main(["--caption_path", str(token), "--image_path", str(next(iter(images.values())).parent),
                                "--clip_model_path", str(small_models / "small_clip.pt"), "--output_path", str(out),
                                "--val_ratio", "0", "--test_ratio", "0", "--batch_size", "4",
                                "--num_workers", "0"]) == 0
    d = load_features(out)
    assert d["meta"]["counts"]["images"] == len(images)
    ext = d["meta"]["extraction"]
    assert ext["fast_jpeg_decode"] is False and ext["exif_transpose"] is False
    for c in d["captions"]:
        _assert_exact(d["clip_embedding"][c["clip_embedding"]], reference[c["image_id"]], c["image_id"])


def test_features_equal_openai_clip_extract_features(small_models, images, reference):
    """The path predict.py captions images with."""
    model, preprocess, _ = load_clip(str(small_models / "small_clip.pt"))
    names = list(images)
    emb, ok, bad = extract_features([str(images[n]) for n in names], model, preprocess, batch_size=3, num_workers=0)
    assert ok == list(range(len(names))) and not bad
    for row, name in enumerate(names):
        _assert_exact(emb[row], reference[images[name].stem], name)


def test_opt_in_decoding_changes_features_and_is_recorded(small_models, images, reference, tmp_path):
    """--fast_jpeg_decode (large JPEGs) and --exif_transpose (EXIF-rotated) change exactly those images,
    are recorded in meta["extraction"], and a changed setting re-extracts (run_key)."""
    names = ["small.jpg", "large.jpg", "exif.jpg"]
    token = tmp_path / "caps.token"
    token.write_text("".join(f"{n}#0\ta picture .\n" for n in names))
    out = tmp_path / "f.pkl"
    argv = ["--caption_path", str(token), "--image_path", str(images["small.jpg"].parent),
            "--clip_model_path", str(small_models / "small_clip.pt"), "--output_path", str(out),
            "--val_ratio", "0", "--test_ratio", "0", "--batch_size", "4", "--num_workers", "0"]
    assert process_flickr.main(argv) == 0
    exact = load_features(out)
    assert process_flickr.main(argv + ["--fast_jpeg_decode", "--exif_transpose"]) == 0  # not "up to date"
    fast = load_features(out)
    assert fast["meta"]["extraction"]["fast_jpeg_decode"] is True and fast["meta"]["extraction"]["exif_transpose"] is True
    assert fast["meta"]["run_key"] != exact["meta"]["run_key"]
    row = {c["image_id"]: c["clip_embedding"] for c in fast["captions"]}
    for n in ("small", "large", "exif"):
        f = fast["clip_embedding"][row[n]]
        if n == "small":  # too small for a reduced DCT scale, no EXIF: unchanged
            _assert_exact(f, reference[n], n)
        else:
            assert float((f - reference[n]).abs().max()) > 1e-3 * float(reference[n].abs().max()), n


def test_open_image_opt_ins(images):
    assert open_image(images["exif.jpg"]).size == (640, 480)                       # as stored, like openai-clip
    assert open_image(images["exif.jpg"], exif_transpose=True).size == (480, 640)  # as displayed
    assert open_image(images["large.jpg"]).size == (3000, 2000)                    # full resolution
    fast = open_image(images["large.jpg"], fast_jpeg_decode=True, min_size=224)
    assert min(fast.size) >= 224 and fast.size[0] < 3000                          # reduced DCT scale
    assert open_image(images["rgba.png"]).mode == "RGBA"                           # left to convert("RGB")


def test_16bit_images_scaled_not_clipped_to_white(tmp_path):
    """convert('RGB') clips I;16 to 0..255: almost every pixel of a 16-bit image becomes white. Ours
    scales 0..65535 to 0..255 instead (the documented exception to openai-clip's behaviour)."""
    ramp = np.linspace(0, 65535, 300 * 200).reshape(200, 300).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    clipped = np.asarray(Image.open(tmp_path / "i16.png").convert("RGB"))
    assert (clipped == 255).mean() > 0.99                                           # what openai-clip would see
    ours = np.asarray(open_image(tmp_path / "i16.png").convert("RGB"))
    np.testing.assert_allclose(ours[..., 0].astype(float), ramp / 257.0, atol=1.0)  # the ramp, in 8 bits
