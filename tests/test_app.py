"""app.py's request handler with small real-class models: styled and plain models, bad uploads, bad styles.

The handler itself needs no gradio; building the page does (those tests skip without it)."""
from __future__ import annotations

import html
import json
import shutil
import struct
import zlib

import pytest
import torch

import app
import predict
from scripts import app_load
from models import ModelConfig, build_model, load_model
from models.captioner import checkpoint_payload
from models.decoding import DecodeConfig
from stylecap.eval.captioning import load_clip_for
from stylecap.utils import UserError
from tests.helpers import STYLES, free_port


def save_tiny_model(small_models, path, styled: bool):
    torch.manual_seed(0)
    cfg = ModelConfig(gpt2_path=str(small_models / "small_gpt2"), max_len=8,
                      **({"style_mode": "embedding", "styles": STYLES} if styled else {}))
    torch.save(checkpoint_payload(build_model(cfg)), path)
    return path


@pytest.fixture(scope="module")
def checkpoints(small_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("app_ckpt")
    return {"styled": save_tiny_model(small_models, d / "styled.pt", True),
            "plain": save_tiny_model(small_models, d / "plain.pt", False)}


def make_demo(small_models, ckpt) -> app.Demo:
    model = load_model(ckpt, None, "cpu")
    clip_model, preprocess = load_clip_for(model, str(small_models / "small_clip.pt"), "cpu", ckpt)
    return app.Demo(model, clip_model, preprocess, torch.device("cpu"), batch_size=64, max_images=4)


@pytest.fixture(scope="module")
def styled_demo(small_models, checkpoints):
    return make_demo(small_models, checkpoints["styled"])


@pytest.fixture(scope="module")
def plain_demo(small_models, checkpoints):
    return make_demo(small_models, checkpoints["plain"])


@pytest.fixture()
def images(demo_data, tmp_path):
    src = sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[:2]
    out = []
    for p in src:
        shutil.copy(p, tmp_path / p.name)
        out.append(str(tmp_path / p.name))
    return out


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def huge_png(path, side: int = 20000):
    """A valid PNG header claiming side x side pixels (400 M: past PIL's decompression-bomb limit)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return str(path)


def test_styled_captions_match_predict(styled_demo, images, small_models, checkpoints, tmp_path):
    status, page, jsonl = styled_demo.caption(images, ["Happy", "Gloomy"], decode="beam", beam_size=3, num_captions=2)
    preds = read_jsonl(jsonl)
    assert len(preds) == 2 * 2 * 2 and "8 captions for 2 images × 2 styles" in status
    assert {(p["image"], p["style"]) for p in preds} == {(f.split("/")[-1], s) for f in images for s in ("Happy", "Gloomy")}
    for p in preds:  # every caption on the page, grouped under its image and style, with its score
        assert html.escape(p["caption"]) in page
    assert page.count('class="sc-image"') == 2 and page.count('class="sc-style"') == 4 and "score -" in page
    # the same code as predict.py: its predictions.jsonl is identical for the same images and settings
    out = tmp_path / "predict_out"
    predict.main(["--model_path", str(checkpoints["styled"]), "--image_path", str(tmp_path / "*.jpg"),
                  "--clip_model_path", str(small_models / "small_clip.pt"), "--style_file", str(_styles(tmp_path)),
                  "--decode", "beam", "--beam_size", "3", "--num_generate", "2", "--output_path", str(out),
                  "--num_workers", "0"])
    assert read_jsonl(out / "predictions.jsonl") == preds


def _styles(tmp_path):
    f = tmp_path / "styles.txt"
    f.write_text("Happy\nGloomy\n")
    return f


def test_all_styles_in_one_batched_call(styled_demo, images, monkeypatch):
    import stylecap.eval.captioning
    n_gen, real_gen = [], stylecap.eval.captioning.generate_captions
    monkeypatch.setattr(stylecap.eval.captioning, "generate_captions",  # counts the calls, runs the real one
                        lambda model, feats, *rest: n_gen.append(feats.shape[0]) or real_gen(model, feats, *rest))
    status, _, jsonl = styled_demo.caption(images, [], all_styles=True)
    assert len(read_jsonl(jsonl)) == len(images) * len(STYLES)
    assert n_gen == [len(images) * len(STYLES)]  # every image x style in one generate call


def test_plain_model_captions_once_per_image(plain_demo, images):
    assert plain_demo.styles == []
    status, page, jsonl = plain_demo.caption(images, ["Happy"], decode="greedy")  # styles ignored
    preds = read_jsonl(jsonl)
    assert len(preds) == len(images) and all(p["style"] is None for p in preds)
    assert "sc-style-name" not in page and "×" not in status


def test_non_image_upload_is_reported_and_server_goes_on(styled_demo, images, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    status, page, jsonl = styled_demo.caption([str(bad)], ["Happy"])
    # issue 17 §5: named as ignored from its header (before: "not a readable image" after a decode attempt)
    assert "Error" in status and "ignored: notes.jpg (not an image)" in status
    assert page == "" and jsonl is None
    # mixed with good images: those are captioned, the bad one is named in the status
    status, page, jsonl = styled_demo.caption([str(bad)] + images, ["Happy"])
    assert len(read_jsonl(jsonl)) == len(images) and "ignored: notes.jpg (not an image)" in status


def test_truncated_and_enormous_images_are_reported(styled_demo, images, tmp_path):
    data = open(images[0], "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    huge = huge_png(tmp_path / "huge.png")
    status, _, jsonl = styled_demo.caption([cut, huge, images[1]], ["Happy"])
    assert "skipped cut.jpg: corrupt or truncated image" in status and "--allow_truncated" not in status
    # issue 22 §6: refused from its header, with the demo's limit (before: "skipped ...: image too large")
    assert "ignored: huge.png (over 179 MP; this demo's limit is 40 MP)" in status
    assert [p["image"] for p in read_jsonl(jsonl)] == [images[1].split("/")[-1]]


def test_unknown_style_and_bad_settings_are_reported(styled_demo, images):
    status, page, jsonl = styled_demo.caption(images, ["Hapy"])
    assert "Error: unknown style 'Hapy'" in status and "'Happy'" in status and jsonl is None
    status, _, _ = styled_demo.caption(images, [])
    assert "choose at least one style" in status
    status, _, _ = styled_demo.caption([], ["Happy"])
    assert "upload one or more images" in status
    status, _, _ = styled_demo.caption(images * 3, ["Happy"])  # 6 > max_images 4
    assert "at most 4" in status
    status, _, _ = styled_demo.caption(images, ["Happy"], decode="beam", beam_size=2, num_captions=3)
    assert "exceeds" in status
    status, _, jsonl = styled_demo.caption(images, ["Happy"])  # and the next request is served
    assert jsonl and len(read_jsonl(jsonl)) == len(images)


def test_repeated_file_names_stay_apart(styled_demo, images, tmp_path):
    other = tmp_path / "sub"
    other.mkdir()
    twin = other / images[0].split("/")[-1]
    shutil.copy(images[1], twin)
    _, _, jsonl = styled_demo.caption([images[0], str(twin)], ["Happy"])
    names = [p["image"] for p in read_jsonl(jsonl)]
    assert len(set(names)) == 2 and names[1] == names[0] + " (2)"


def test_sampling_follows_the_seed(styled_demo, images):
    run = lambda seed: read_jsonl(styled_demo.caption(images, ["Happy"], decode="sample", temperature=1.5,
                                                       topp=1.0, num_captions=2, seed=seed)[2])
    assert run(3) == run(3)


def test_bad_model_path_is_a_user_error(small_models, tmp_path):
    pytest.importorskip("gradio")
    with pytest.raises(UserError, match="not found"):
        app.main(["--model_path", str(tmp_path / "missing.pt"), "--clip_model_path", str(small_models / "small_clip.pt")])


def test_page_builds_with_and_without_styles(styled_demo, plain_demo, images):
    gr = pytest.importorskip("gradio")
    for demo in (styled_demo, plain_demo):
        page = app.build_ui(demo, images)
        assert isinstance(page, gr.Blocks)
        dropdown = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sc-styles")
        groups = [b for b in page.blocks.values() if isinstance(b, gr.Group)]
        assert groups[0].visible == bool(demo.styles)  # a plain model hides the style controls
        assert dropdown.choices == [(s, s) for s in demo.styles]


def test_no_telemetry_or_update_check():
    pytest.importorskip("gradio")
    from gradio import analytics
    assert not analytics.analytics_enabled()  # gradio's telemetry and its version check are both off
    theme = app.offline_theme()
    import gradio as gr
    assert not any(isinstance(f, gr.themes.GoogleFont) for f in theme._font + theme._font_mono)


def test_decode_batch_size_is_bs_eval_and_batch_size_stays():
    """Issue 16: app.py's decode batch size is --bs_eval, as in train.py, predict.py and evaluate.py;
    --batch_size stays as its alias."""
    for flag in ("--bs_eval", "--batch_size"):
        assert app.get_parser().parse_args(["--model_path", "m.pt", flag, "9"]).bs_eval == 9
    # the default is now 256 sequences (issue 22 §6, test_decode_batch_counts_sequences); was 1024 items


def test_app_imports_no_script():
    """Issue 16: the captioning app.py shares with predict.py lives in stylecap.eval.captioning."""
    import ast
    from pathlib import Path
    tree = ast.parse(Path(app.__file__).read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not modules & {"predict", "train", "evaluate"}


# ---- issue 22 section 6: the demo under load and bad input; issue 17 section 5: the page -----------------------
@pytest.fixture()
def count_decodes(monkeypatch):
    """Counts PIL decoders started (one per decoded image; reading a header starts none)."""
    import PIL.Image
    calls, real = [], PIL.Image._getdecoder
    monkeypatch.setattr(PIL.Image, "_getdecoder", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def test_pixel_limit_refuses_large_uploads_before_decoding(small_models, checkpoints, images, tmp_path,
                                                           count_decodes):
    """22 §6: an image over --max_pixels is refused from its header, never decoded, with the limit named."""
    assert app.get_parser().parse_args(["--model_path", "m.pt"]).max_pixels == 40_000_000
    demo = make_demo(small_models, checkpoints["styled"])
    demo.max_pixels = 300 * 300
    big = str(app_load.blank_png(tmp_path / "big.png", 400, 300))  # 0.12 MP > 0.09 MP
    status, _, jsonl = demo.caption([big, images[0]], ["Happy"])
    assert "ignored: big.png (400 × 300 = 0.12 MP; this demo's limit is 0.09 MP)" in status, status
    assert [p["image"] for p in read_jsonl(jsonl)] == [images[0].split("/")[-1]]
    assert len(count_decodes) == 1  # only the accepted image was decoded
    status, _, jsonl = demo.caption([big], ["Happy"])
    assert "Error" in status and "0.09 MP" in status and jsonl is None


def test_one_decode_per_image(styled_demo, images, count_decodes):
    """22 §6: the thumbnails are made from the decode CLIP's preprocessing uses, not a second one."""
    _, page, _ = styled_demo.caption(images, ["Happy"])
    assert len(count_decodes) == len(images) and page.count("data:image/jpeg;base64,") == len(images)


def test_request_cap_on_images_styles_beams_captions(small_models, checkpoints, images):
    """22 §6: a request's decoded sequences (images x styles x beam size or captions) are capped."""
    assert app.get_parser().parse_args(["--model_path", "m.pt"]).max_sequences == 4096
    demo = make_demo(small_models, checkpoints["styled"])
    demo.max_sequences = 10
    status, _, jsonl = demo.caption(images, ["Happy", "Gloomy", "Cynical (Doubtful, Skeptical)"], decode="beam",
                                    beam_size=2)
    assert ("2 images × 3 styles × beam 2 = 12 sequences to decode; this demo decodes at most 10 per request"
            in status and jsonl is None), status
    status, _, jsonl = demo.caption(images, [], all_styles=True, decode="sample", num_captions=2)
    assert "2 images × 3 styles × 2 captions = 12 sequences" in status and jsonl is None
    _, _, jsonl = demo.caption(images, ["Happy", "Gloomy"], decode="beam", beam_size=2)  # 8: served
    assert len(read_jsonl(jsonl)) == 4


def test_decode_batch_counts_sequences(small_models, checkpoints, images, monkeypatch):
    """22 §6: --bs_eval bounds the sequences of one batched call (beams included), so a beam-10 request
    never holds bs_eval x 10 sequences of logits and KV cache at once."""
    assert app.get_parser().parse_args(["--model_path", "m.pt"]).bs_eval == 256
    import stylecap.eval.captioning
    n_gen, real_gen = [], stylecap.eval.captioning.generate_captions
    monkeypatch.setattr(stylecap.eval.captioning, "generate_captions",  # counts the rows, runs the real one
                        lambda model, feats, *rest: n_gen.append(feats.shape[0]) or real_gen(model, feats, *rest))
    demo = make_demo(small_models, checkpoints["styled"])
    demo.batch_size = 8
    demo.caption(images, [], all_styles=True, decode="beam", beam_size=4)  # 6 items x 4 beams = 24 sequences
    assert n_gen == [2, 2, 2]


def test_non_image_uploads_are_named(styled_demo, images, tmp_path):
    """17 §5: a non-image upload is named as ignored, alone or among images."""
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list")
    status, _, jsonl = styled_demo.caption([str(notes)] + images, ["Happy"])
    assert "ignored: notes.txt (not an image)" in status and len(read_jsonl(jsonl)) == len(images)
    status, _, jsonl = styled_demo.caption([str(notes)], ["Happy"])
    assert "ignored: notes.txt (not an image)" in status and "upload one or more" not in status
    assert jsonl is None


def test_upload_preview_shows_images_and_names_the_rest(styled_demo, images, tmp_path):
    """17 §5: uploads get previews; what will not be captioned is named as soon as it is uploaded."""
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list")
    gallery, notice = styled_demo.preview([str(notes)] + images)
    assert [name for _, name in gallery] == [p.split("/")[-1] for p in images]
    assert "ignored: notes.txt (not an image)" in notice
    assert styled_demo.preview(None) == ([], "")


def test_examples_are_thumbnails_with_readable_names(styled_demo, images):
    """17 §5: the examples are a gallery of thumbnails with short names, not buttons named by hashes."""
    gr = pytest.importorskip("gradio")
    page = app.build_ui(styled_demo, images)
    gallery = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "sc-examples")
    assert isinstance(gallery, gr.Gallery)
    labels = [item["caption"] for item in gallery.value]
    assert labels == [app.example_label(k, p) for k, p in enumerate(images)]
    assert app.example_label(0, "x/02b897ec8bb8b9734bc0e1f4c0b087a7.jpg") == "1 · 02b897ec….jpg"
    assert app.example_label(1, "x/red_square.png") == "2 · red_square.png"


def test_all_styles_disables_the_chosen_chips(styled_demo):
    """17 §5: ticking 'all N styles' disables the style box, so which wins is visible."""
    assert app.style_box_update(True)["interactive"] is False
    assert app.style_box_update(False)["interactive"] is True


def test_score_is_explained_on_the_page(styled_demo, images):
    """17 §5: the page says what a caption's score is (models/decoding.py: summed log-probability)."""
    gr = pytest.importorskip("gradio")
    page = app.build_ui(styled_demo, images)
    text = " ".join(b.value for b in page.blocks.values() if isinstance(b, gr.Markdown) and b.value)
    assert "score" in text and "log-probability" in text and "summed over its tokens" in text


def test_queue_is_bounded(styled_demo):
    """22 §6: the request queue has a size; requests past it are turned away at once."""
    pytest.importorskip("gradio")
    port = free_port()
    args = app.get_parser().parse_args(["--model_path", "m.pt", "--queue_size", "5", "--port", str(port)])
    assert app.get_parser().parse_args(["--model_path", "m.pt"]).queue_size == 16
    page, url = app.serve(styled_demo, args, [])
    try:
        assert page._queue.max_size == 5 and url.startswith("http://127.0.0.1:")
    finally:
        page.close()


def test_load_test_answers_every_request_and_server_stays_up(styled_demo, demo_data, tmp_path):
    """22 §6: scripts/app_load.py with tiny bounds (2 clients, 2 s) on the app served in this process:
    every request answered as expected, including oversized (7000 x 7000 = 49 MP, over the 40 MP limit)
    and non-image uploads, none turned away, and the server still captioning afterwards."""
    pytest.importorskip("gradio_client", reason="the load test needs gradio_client (requirements-app.txt)")
    port = free_port()
    page, url = app.serve(styled_demo, app.get_parser().parse_args(["--model_path", "m.pt", "--port", str(port)]), [])
    try:
        out = tmp_path / "load.json"
        rc = app_load.main(["--url", url, "--images", str(demo_data / "personality" / "yfcc_images"),
                            "--clients", "2", "--seconds", "2", "--oversized_side", "7000", "--out", str(out)])
    finally:
        page.close()
    figures = json.loads(out.read_text())
    assert rc == 0 and figures["passed"] and figures["server_up_after"], figures["problems"]
    assert figures["outcomes"]["ok"] == figures["requests"] >= len(app_load.KINDS)  # each kind sent at least once
    assert figures["by_kind"]["oversized"]["n"] >= 1 and figures["well_formed"]["p95_s"] is not None
