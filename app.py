r"""StyleCap web demo: upload photos, pick personalities, read the captions in the browser.

    python app.py --model_path output/demo_personality/checkpoints/best.pt --clip_model_path pre_model/small_clip.pt
    python app.py --model_path output/<run>/checkpoints/best.pt --host 0.0.0.0 --port 7860

The model and CLIP load once; each request runs the code predict.py runs (stylecap.eval.captioning.caption_images:
CLIP preprocessing, encoding, batched decoding), so the page gives the captions predict.py gives. The page is
served whole from this machine: no CDN, no analytics, no update check, system fonts only.
One upload cannot stall it: images over --max_pixels are refused from their header (never decoded), a request
decodes at most --max_sequences sequences, at most --queue_size requests wait, and each image is decoded once
(docs/web_demo.md has the load test's figures: scripts/app_load.py).
Needs the packages of requirements-app.txt (`make app` installs them).
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

# Offline by construction, set before gradio / huggingface_hub are imported: no telemetry, no
# version check (gradio runs it only with analytics on), no hub look-ups.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DO_NOT_TRACK"] = "1"

import torch
from loguru import logger

from models import load_model
from models.blending import check_blendable, make_blend
from models.decoding import DecodeConfig
from models.style_modes import style_mode
from stylecap.clip_utils import DEFAULT_CLIP
from stylecap.encoders import BACKENDS
from stylecap.eval.captioning import (caption_images, image_files, load_clip_for, match_style, resolve_styles,
                                      with_scale)
from stylecap.eval.evaluation import write_predictions
from stylecap.extract.image_encoder import extract_features
from stylecap.utils import UserError, resolve_device, run_main, setup_logging

DEFAULT_EXAMPLES = "data/demo/personality/yfcc_images"  # made by `make demo`
DECODINGS = ["greedy", "beam", "sample"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model_path", required=True, help="StyleCap checkpoint (e.g. output/<run>/checkpoints/best.pt) or ClipCap weights")
    a("--clip_model_path", help=f"CLIP model used to encode the images (default: the one the checkpoint names, "
      f"else {DEFAULT_CLIP})")
    a("--clip_backend", choices=BACKENDS, default="auto", help="which library loads --clip_model_path: auto "
      "(from its form and contents, or the checkpoint's record), openai, open_clip or hf (docs/encoders.md)")
    a("--lm_path", "--gpt2_path", dest="gpt2_path", metavar="LM_PATH", help="language-model (GPT-2) folder: "
      "needed for ClipCap weights, or if a frozen LM moved; --gpt2_path is the older name")
    a("--allow_clip_mismatch", action="store_true", help="serve even when --clip_model_path is not the CLIP "
      "the model was trained with (checked by sha256)")
    a("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    a("--port", type=int, default=7860, help="port to listen on")
    a("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    a("--examples", default=DEFAULT_EXAMPLES, help="folder whose first --n_examples images are offered as examples")
    a("--n_examples", type=int, default=4, help="example images shown under the upload box")
    a("--max_images", type=int, default=16, help="most images captioned per request")
    a("--max_pixels", type=int, default=40_000_000, help="largest image accepted, in pixels (width x height); "
      "a larger upload is refused from its header, before it is decoded (40 MP: a 7300 x 5500 photo)")
    a("--max_sequences", type=int, default=4096, help="most sequences one request may decode: images x styles x "
      "beam size (beam) or x captions (sample); a larger request is refused with the count")
    a("--queue_size", type=int, default=16, help="requests that may wait for the model; more are turned away at once")
    a("--bs_eval", "--batch_size", dest="bs_eval", type=int, default=256,
      help="sequences decoded per batched call: images x styles x beam size (beam) or x captions (sample). "
      "Memory per decoding step grows with it: 256 GPT-2 sequences hold ~51 MB of logits; the old default, "
      "1024 images x styles at beam 10, ~2 GB (--batch_size: the older name)")
    a("--max_file_size", default="25mb", help="largest upload accepted (gradio size string)")
    return p


@dataclass
class Demo:
    """The loaded model and CLIP, and the request handlers the page calls."""
    model: torch.nn.Module
    clip_model: torch.nn.Module
    preprocess: object
    device: torch.device
    batch_size: int = 256  # sequences per batched decoding call (beams and captions included)
    max_images: int = 16
    max_pixels: int = 40_000_000
    max_sequences: int = 4096
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stylecap-app-")))

    @property
    def styles(self) -> list[str]:
        """The model's styles; empty for a plain (unstyled) model."""
        return [] if self.model.cfg.style_mode == "none" else list(self.model.cfg.styles)

    @property
    def can_blend(self) -> bool:
        """Whether the model's styles can be mixed and scaled (style_mode embedding or token)."""
        mode = style_mode(self.model.cfg.style_mode)
        return mode.style_embedding or mode.style_tokens

    def caption(self, files, styles: list[str] | None = None, all_styles: bool = False, decode: str = "greedy",
                beam_size: int = 3, temperature: float = 1.0, topp: float = 1.0, num_captions: int = 1,
                seed: int = 0, strength: float = 1.0, mix_style: str | None = None, mix_weight: float = 0.5
                ) -> tuple[str, str, str | None]:
        """One request -> (status HTML, captions HTML, path of its predictions.jsonl or None).
        ``strength``: --style_scale; ``mix_style`` (optional) is mixed into every chosen style with weight
        ``mix_weight`` (see chosen_styles).

        Bad input (no image, unknown style, bad decoding settings, unreadable or too large uploads, too
        much to decode) is reported in the status; the server goes on serving."""
        try:
            return self._caption(files, styles, all_styles, decode, beam_size, temperature, topp, num_captions, seed,
                                 strength, mix_style, mix_weight)
        except UserError as e:
            logger.warning(f"request refused: {e}")
            return _status(f"Error: {e}", error=True), "", None

    def preview(self, files) -> tuple[list[tuple[str, str]], str]:
        """Uploads -> (gallery of the accepted images as (path, name), notice naming the ignored ones).
        Reads headers only: nothing is decoded here (the browser draws the previews)."""
        paths = upload_paths(files)
        names = unique_names(paths)
        keep, ignored = screen_uploads(paths, self.max_pixels)
        notice = "".join(_status(f"ignored: {names[i]} ({why})", error=True) for i, why in ignored)
        return [(str(paths[i]), names[i]) for i in keep], notice

    def _caption(self, files, styles, all_styles, decode, beam_size, temperature, topp, num_captions, seed,
                 strength=1.0, mix_style=None, mix_weight=0.5):
        paths = upload_paths(files)
        if not paths:
            raise UserError("upload one or more images (or click an example) first")
        if len(paths) > self.max_images:
            raise UserError(f"{len(paths)} images given; this demo captions at most {self.max_images} per request")
        names = unique_names(paths)
        keep, ignored = screen_uploads(paths, self.max_pixels)  # headers only: refused before any decode
        notes = [f"ignored: {names[i]} ({why})" for i, why in ignored]
        if not keep:
            raise UserError("nothing to caption: " + "; ".join(notes))
        chosen = self.chosen_styles(styles, all_styles, strength, mix_style, mix_weight)
        dc = DecodeConfig(decode, int(beam_size), 1.0, float(temperature), 0, float(topp),
                          1 if decode == "greedy" else int(num_captions))
        dc.check()
        per_item = sequences_per_item(dc)
        self.check_request(len(keep), len(chosen) if chosen != [None] else 0, dc)
        torch.manual_seed(int(seed or 0))  # sampling is reproducible for a given seed, as predict.py --seed
        t0 = time.perf_counter()
        tap = ThumbnailTap()  # thumbnails from the one decode CLIP's preprocessing makes
        encode = partial(extract_features, model=self.clip_model, preprocess=tap.wrap(self.preprocess),
                         batch_size=self.max_images, num_workers=0, device=self.device)
        kept = [paths[i] for i in keep]
        preds, ok, bad = caption_images(self.model, encode, kept, chosen, dc, max(1, self.batch_size // per_item),
                                        names=[names[i] for i in keep])
        seconds = time.perf_counter() - t0
        notes += [f"skipped {names[keep[i]]}: {page_reason(reason)}" for i, reason in bad]
        if not ok:
            raise UserError(f"none of the {len(paths)} uploads could be read as an image: " + "; ".join(notes))
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.out_dir))
        _, jsonl = write_predictions(folder, preds)
        n_styles = len(chosen) if chosen != [None] else 0
        summary = (f"{len(preds)} caption{'s' * (len(preds) != 1)} for {len(ok)} image{'s' * (len(ok) != 1)}"
                   + (f" × {n_styles} style{'s' * (n_styles != 1)}" if n_styles else "")
                   + f" in {seconds:.2f} s ({decode})")
        logger.info(summary + "".join(f"; {s}" for s in notes))
        status = _status(summary) + "".join(_status(s, error=True) for s in notes)
        thumbs = dict(zip((names[keep[i]] for i in ok), tap.thumbs))
        return status, results_html(preds, thumbs), str(jsonl)

    def check_request(self, n_images: int, n_styles: int, dc: DecodeConfig) -> None:
        """UserError when images x styles x (beam size or captions) is over ``max_sequences``."""
        total = n_images * max(1, n_styles) * sequences_per_item(dc)
        if total <= self.max_sequences:
            return
        parts = [f"{n_images} image{'s' * (n_images != 1)}"] + ([f"{n_styles} style{'s' * (n_styles != 1)}"]
                                                                 if n_styles else [])
        if dc.strategy == "beam":
            parts.append(f"beam {dc.beam_size}")
        elif dc.strategy == "sample":
            parts.append(f"{dc.num_generate} caption{'s' * (dc.num_generate != 1)}")
        raise UserError(f"{' × '.join(parts)} = {total:,} sequences to decode; this demo decodes at most "
                        f"{self.max_sequences:,} per request: choose fewer images or styles, or a smaller beam")

    def chosen_styles(self, styles: list[str] | None, all_styles: bool, strength: float = 1.0,
                      mix_style: str | None = None, mix_weight: float = 0.5) -> list:
        """The request's styles: names, or StyleBlends when ``strength`` != 1 (each at that strength) or a
        ``mix_style`` is given: each chosen style s becomes s:(1 - mix_weight),mix_style:mix_weight. The
        defaults (strength 1, no second style) give the names, as before the blend controls."""
        chosen = [styles] if isinstance(styles, str) else list(styles or [])
        # a plain model: [None], one caption set per image; an unknown style: UserError naming the closest
        resolved = resolve_styles(self.model, chosen, all_styles)
        if not resolved:
            raise UserError("choose at least one style (type in the box to search), or tick 'all styles'")
        if resolved == [None]:
            return resolved
        strength = float(strength if strength is not None else 1.0)
        w = float(mix_weight if mix_weight is not None else 0.0)
        if not 0.0 <= w <= 1.0:
            raise UserError(f"the second style's weight {w:g} is not between 0 and 1")
        if not mix_style or w == 0.0:
            return [with_scale(self.model.cfg, s, strength) for s in resolved]
        check_blendable(style_mode(self.model.cfg.style_mode), "mixing in a second style")
        other = match_style(self.model.cfg.styles, mix_style)
        return list(dict.fromkeys(make_blend([(s, 1.0 - w), (other, w)], strength) for s in resolved))


def sequences_per_item(dc: DecodeConfig) -> int:
    """Sequences decoded side by side for one (image, style): the beams, or the sampled captions."""
    return dc.beam_size if dc.strategy == "beam" else dc.num_generate


def upload_paths(files) -> list[Path]:
    # gradio gives file paths (str); older gradio gave tempfile objects with the path in .name
    return [Path(f if isinstance(f, (str, os.PathLike)) else f.name) for f in (files or [])]


def screen_uploads(paths: list[Path], max_pixels: int) -> tuple[list[int], list[tuple[int, str]]]:
    """(indices of the uploads to caption, [(index, why ignored)]) from each file's header alone.

    PIL's Image.open reads the header (format and size) and decodes nothing, so a 13000 x 13000 PNG is
    refused in microseconds instead of taking 15 s and 1.3 GB to decode. Corrupt pixel data is found
    later, by the one real decode (reported as 'skipped')."""
    from PIL import Image
    keep, ignored = [], []
    for i, p in enumerate(paths):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
                with Image.open(p) as img:
                    w, h = img.size
        except Image.DecompressionBombError:
            ignored.append((i, f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; this demo's limit is "
                               f"{max_pixels / 1e6:g} MP"))
            continue
        except Exception:  # not an image PIL knows (text, PDF, zip ...), or an unreadable file
            ignored.append((i, "not an image"))
            continue
        if w * h > max_pixels:
            ignored.append((i, f"{w} × {h} = {w * h / 1e6:.2f} MP; this demo's limit is {max_pixels / 1e6:g} MP"))
        else:
            keep.append(i)
    return keep, ignored


class ThumbnailTap:
    """Wraps CLIP's preprocessing so that each image it receives also leaves a thumbnail (a JPEG data: URI),
    made from the pixels the encoder decoded: one decode per image instead of a second one for the page.

    ``take`` (first) makes the thumbnail; ``keep`` (after the PIL steps) files it, so an image that fails
    between them leaves none. The app decodes in this thread (num_workers=0), in upload order, so
    ``thumbs`` lines up with the encoder's readable images."""

    def __init__(self, size: int = 160):
        self.size, self.pending, self.thumbs = size, None, []

    def take(self, img):
        from PIL import ImageOps
        small = ImageOps.contain(img if img.mode in ("RGB", "L") else img.convert("RGB"), (self.size, self.size))
        buf = io.BytesIO()
        small.convert("RGB").save(buf, format="JPEG", quality=85)
        self.pending = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        return img

    def keep(self, x):
        self.thumbs.append(self.pending)
        return x

    def wrap(self, preprocess):
        """CLIP's Compose with take first and keep before ToTensor/Normalize (which the encoder splits off
        and runs batched: see stylecap.extract.image_encoder.split_preprocess); the pixels are unchanged."""
        from torchvision.transforms import Compose, Normalize, ToTensor
        ts = list(getattr(preprocess, "transforms", [preprocess]))
        at = len(ts) - 2 if len(ts) >= 2 and isinstance(ts[-2], ToTensor) and isinstance(ts[-1], Normalize) \
            else len(ts)
        return Compose([self.take] + ts[:at] + [self.keep] + ts[at:])


def unique_names(paths: list[Path]) -> list[str]:
    """File names as image ids; a repeated name gets ' (2)', ' (3)' ... so captions never merge."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        seen[p.name] = seen.get(p.name, 0) + 1
        out.append(p.name if seen[p.name] == 1 else f"{p.name} ({seen[p.name]})")
    return out


def page_reason(reason: str) -> str:
    """load_image's reason, worded for the page (no command-line flags)."""
    if "DecompressionBomb" in reason:
        from PIL import Image
        return f"image too large (over {2 * Image.MAX_IMAGE_PIXELS:,} pixels); resize it and upload again"
    return reason.split("; --allow_truncated")[0]


def _status(text: str, error: bool = False) -> str:
    return f'<p class="sc-{"error" if error else "ok"}">{html.escape(text, quote=False)}</p>'


SCORE_NOTE = ("**score**: the caption's log-probability under the model, summed over its tokens (the end token "
              "included), as predictions.jsonl has it. Closer to 0 is more likely; a longer caption scores lower, "
              "so compare scores of captions of similar length.")


def results_html(preds: list[dict], thumbs: dict[str, str]) -> str:
    """Captions grouped per image, then per style, each with its score (see SCORE_NOTE); ``thumbs``:
    image name -> thumbnail data: URI."""
    grouped: dict[str, dict[str | None, list[dict]]] = {}
    for p in preds:
        grouped.setdefault(p["image"], {}).setdefault(p.get("style"), []).append(p)
    parts = ['<div class="sc-results">']
    for image, by_style in grouped.items():
        parts.append(f'<div class="sc-image"><img alt="" src="{thumbs.get(image, "")}">'
                     f'<div class="sc-captions"><h4>{html.escape(image)}</h4>')
        for style, caps in by_style.items():
            parts.append('<div class="sc-style">')
            if style is not None:
                scale = caps[0].get("style_scale", 1.0)
                label = style if scale == 1.0 else f"{style} · strength {scale:g}"
                parts.append(f'<span class="sc-style-name">{html.escape(label)}</span>')
            parts.append("<ol>" + "".join(
                f'<li><span class="sc-caption">{html.escape(c["caption"])}</span> '
                f'<span class="sc-score" title="log-probability, summed over the tokens">score {c["score"]:.2f}'
                f'</span></li>' for c in caps) + "</ol></div>")
        parts.append("</div></div>")
    parts.append("</div>")
    return "".join(parts)


def example_images(folder: str | None, n: int) -> list[str]:
    if not folder or not Path(folder).is_dir():
        return []
    return [str(p) for p in image_files(folder)][:n]


def example_label(k: int, path: str | Path) -> str:
    """'1 · red_square.png'; a long (hash) file name is cut to its first 8 characters: '2 · 02b897ec….jpg'."""
    p = Path(path)
    name = p.name if len(p.stem) <= 16 else f"{p.stem[:8]}…{p.suffix}"
    return f"{k + 1} · {name}"


def style_box_update(all_on: bool) -> dict:
    """Ticking 'all N styles' disables the chosen chips: all the styles win, and the page shows it."""
    import gradio as gr
    return gr.update(interactive=not all_on)


CSS = """
.sc-results { display: flex; flex-direction: column; gap: 12px; }
.sc-image { display: flex; gap: 14px; align-items: flex-start; border: 1px solid #ddd; border-radius: 8px; padding: 10px; }
.sc-image img { width: 160px; border-radius: 4px; flex: none; }
.sc-captions h4 { margin: 0 0 6px 0; }
.sc-style { margin-bottom: 6px; }
.sc-style-name { font-weight: 600; }
.sc-style ol { margin: 2px 0 0 0; }
.sc-score { color: #777; font-size: 0.85em; margin-left: 6px; }
.sc-error { color: #b00020; font-weight: 600; }
#sc-examples .caption-label, #sc-previews .caption-label {
  white-space: normal; overflow: visible; max-width: 100%; font-size: 11px; }
#sc-examples .grid-container, #sc-previews .grid-container {  /* 4 across in the left column, no side scroll */
  grid-template-columns: repeat(4, minmax(0, 1fr)); grid-auto-rows: minmax(80px, 1fr); }
"""


def build_ui(demo: Demo, examples: list[str] | None = None):
    """The gradio page (gr.Blocks), wired to ``demo.caption`` and ``demo.preview``."""
    import gradio as gr
    styles = demo.styles
    with gr.Blocks(title="StyleCap", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("# StyleCap\nUpload photos, pick personalities, and read the captions. "
                    + (f"This model knows {len(styles)} styles." if styles else "This model writes plain captions.")
                    + f" Up to {demo.max_images} images of at most {demo.max_pixels / 1e6:g} MP each per request.")
        with gr.Row():
            with gr.Column(scale=1):
                # any file type: what is not an image is named as ignored, not silently dropped by the browser
                files = gr.File(label="Images", file_count="multiple", elem_id="sc-files", height=120)
                previews = gr.Gallery(label="Uploaded images", columns=4, fit_columns=False, height=140,
                                      allow_preview=False, interactive=False, buttons=[], elem_id="sc-previews")
                notice = gr.HTML(elem_id="sc-notice")
                if examples:
                    shown = gr.Gallery([(p, example_label(k, p)) for k, p in enumerate(examples)], columns=4,
                                       fit_columns=False, height=140, allow_preview=False, interactive=False,
                                       buttons=[],
                                       label="Examples (click one to caption it)", elem_id="sc-examples")

                    def pick(evt):  # a click on an example thumbnail uploads that image
                        return [examples[evt.index]]
                    pick.__annotations__["evt"] = gr.SelectData  # how gradio knows to pass the click (a
                    # string annotation, as `from __future__ import annotations` makes, is not resolvable here)
                    shown.select(pick, None, files, queue=False)
                with gr.Group(visible=bool(styles)):
                    style_box = gr.Dropdown(styles, value=styles[:1], multiselect=True, filterable=True,
                                            label="Styles (type to search)", elem_id="sc-styles")
                    all_box = gr.Checkbox(False, label=f"all {len(styles)} styles (replaces the chosen ones)",
                                          elem_id="sc-all")
                blendable = bool(styles) and demo.can_blend  # prompt-mode models cannot mix or scale a style
                with gr.Accordion("Style strength and blending", open=False, visible=blendable):
                    strength = gr.Slider(0.0, 3.0, value=1.0, step=0.05, elem_id="sc-strength",
                                         label="Style strength (0 = no style, 1 = as trained, above 1: exaggerated)")
                    mix_style = gr.Dropdown([("none", "")] + [(s, s) for s in styles], value="", filterable=True,
                                            label="Mix in a second style (optional)", elem_id="sc-mix-style")
                    mix_weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, elem_id="sc-mix-weight",
                                           label="Weight of the second style (the chosen ones get the rest)")
                with gr.Accordion("Decoding", open=False):
                    decode = gr.Radio(DECODINGS, value="greedy", label="Decoding", elem_id="sc-decode")
                    beam = gr.Slider(1, 10, value=3, step=1, label="Beam size", visible=False)
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature", visible=False)
                    topp = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", visible=False)
                    num = gr.Slider(1, 5, value=1, step=1, label="Captions per image and style", visible=False)
                    seed = gr.Number(0, precision=0, label="Seed", visible=False)
                run = gr.Button("Caption", variant="primary", elem_id="sc-run")
            with gr.Column(scale=2):
                status = gr.HTML(elem_id="sc-status")
                results = gr.HTML(elem_id="sc-results")
                gr.Markdown(SCORE_NOTE, elem_id="sc-score-note")
                download = gr.File(label="predictions.jsonl (as predict.py writes it)", elem_id="sc-download")

        def show_decoding(strategy: str):
            beam_on, sample_on = strategy == "beam", strategy == "sample"
            return (gr.update(visible=beam_on), gr.update(visible=sample_on), gr.update(visible=sample_on),
                    gr.update(visible=beam_on or sample_on), gr.update(visible=sample_on))

        decode.change(show_decoding, decode, [beam, temperature, topp, num, seed], queue=False)
        all_box.change(style_box_update, all_box, style_box, queue=False)
        files.change(demo.preview, files, [previews, notice], queue=False)  # headers only: fast
        run.click(demo.caption, [files, style_box, all_box, decode, beam, temperature, topp, num, seed, strength,
                                 mix_style, mix_weight],
                  [status, results, download], concurrency_limit=1)  # one model: one request at a time
    return page


def offline_theme():
    """The default look with system fonts: gradio's default theme names web fonts."""
    import gradio as gr
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def serve(demo: Demo, args: argparse.Namespace, examples: list[str]):
    """Build the page and start serving it (without blocking) -> (page, url). The queue holds at most
    --queue_size waiting requests: one more is turned away at once ('queue is full') instead of waiting."""
    page = build_ui(demo, examples)
    page.queue(default_concurrency_limit=1, max_size=args.queue_size)
    _, url, _ = page.launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                            prevent_thread_lock=True, quiet=True, ssr_mode=False, mcp_server=False, pwa=False,
                            enable_monitoring=False, max_file_size=args.max_file_size, theme=offline_theme(),
                            css=CSS, allowed_paths=sorted({str(Path(p).parent) for p in examples}))
    return page, url


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging()
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web demo needs gradio: .venv/bin/pip install -r requirements-app.txt "
                        "(or run `make app`)") from None
    device = resolve_device(args.device)
    model = load_model(args.model_path, args.gpt2_path, device)  # in eval mode
    clip_model, preprocess = load_clip_for(model, args.clip_model_path, device, args.model_path,
                                           args.allow_clip_mismatch, args.clip_backend)
    demo = Demo(model, clip_model, preprocess, device, args.bs_eval, args.max_images, args.max_pixels,
                args.max_sequences)
    page, url = serve(demo, args, example_images(args.examples, args.n_examples))
    print(f"StyleCap demo running at {url} (Ctrl+C stops it)", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    run_main(main)
