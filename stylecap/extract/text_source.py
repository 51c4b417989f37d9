"""Text corpora as training data (process_text.py): sentences -> CLIP *text* embeddings, one feature row each.

CapDec (Nukrai, Mokady and Globerson, "Text-Only Training for Image Captioning using Noise-Injected CLIP",
Findings of EMNLP 2022) trains a ClipCap decoder on the CLIP text embeddings of captions, with Gaussian
noise injected, and captions images with it: the text and image embeddings of CLIP share one space. A
text feature file lets StyleCap learn a style from sentences alone (docs/text_styles.md).

Corpora (``--format auto`` picks by the file name, then by the content):

    txt        one sentence a line (blank lines skipped)
    jsonl      one JSON object a line: {"caption": "...", "style": "...", "split": "train"} (style, split optional)
    csv        a header row naming caption[,style][,split], then one record a row
    features   a feature file from process_*.py: its captions (and styles) without their images

The records follow process_stylized.py's generic format (its reader: stylecap.extract.stylized_sources,
``image`` not needed and ignored): a style on some records makes it required on all, a split on some on
all. ``--style NAME`` gives every record without a style that style (all of a .txt file).

Each sentence is its own "image": row r's id is ``<corpus stem>:<line>`` (``<stem>:<n>`` for a feature file's
n-th caption), so splits by image and the per-image metrics stay well-defined. The file is the columnar
format of :mod:`stylecap.features`, written through :mod:`stylecap.extract.pipeline` (chunked in
``<output>.partial/``, resumable after a kill, up to date when rerun), its embeddings NOT normalised (as
image files). Its meta adds ``modality: "text"``, how the text was encoded (``text_encoder``) and
``train_normalization: "l2"``: training L2-normalises these rows (CapDec) and the model then normalises
image features the same way (ModelConfig.normalize_prefix).
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from loguru import logger

from stylecap.clip_utils import _import_clip
from stylecap.encoders import ImageEncoder
from stylecap.extract import pipeline as extract
from stylecap.extract.caption_sources import CaptionSource, _lines, need_file
from stylecap.extract.settings import ExtractSettings
from stylecap.extract.splits import SplitSettings, jobs_by_split
from stylecap.extract.stylized_sources import (_add_generic, _csv_rows, csv_records, first_line_kind, jsonl_name,
                                               jsonl_rows)
from stylecap.features import TEXT_MODALITY, load_features
from stylecap.utils import UserError, atomic_torch_save

TEXT_FORMATS = ("txt", "jsonl", "csv", "features")
# meta["extraction"] additions (and so run-key parts) of a text file: what encoded the sentences
TEXT_ENCODER = {"modality": TEXT_MODALITY, "text_tokenizer": "clip.tokenize", "truncate": True}


# ----------------------------------------------------------------------------- the one call of the text tower
def encode_text(model: "ImageEncoder | torch.nn.Module", texts: list[str], device: torch.device) -> torch.Tensor:
    """(B,) sentences -> (B, D) text embeddings, not normalised, truncated to the model's context length: the
    encoder's own ``encode_text`` (stylecap.encoders: openai-clip, open_clip, Hugging Face CLIP/SigLIP), or
    openai-clip's ``encode_text(clip.tokenize(...))`` for a bare openai-clip model. The one place that runs
    the text tower."""
    if isinstance(model, ImageEncoder):
        if not model.has_text:
            raise UserError(f"{model.name} has no text tower (a vision-only model); give --clip_model_path a CLIP "
                            "with both towers, the one that made the image features")
        return model.encode_text(texts)
    tokens = _import_clip().tokenize(texts, truncate=True).to(device)  # (B, 77) int
    return model.encode_text(tokens)


# ----------------------------------------------------------------------------- reading a corpus
def detect_corpus(path: Path) -> str:
    """The corpus format of an existing file: a torch zip is a feature file; .jsonl/.ndjson or a first line
    that is a JSON object is jsonl; .csv is csv; anything else one sentence a line."""
    if zipfile.is_zipfile(path):
        return "features"
    if jsonl_name(path) or first_line_kind(path) == "object":
        return "jsonl"
    return "csv" if path.suffix.lower() == ".csv" else "txt"


def _txt_rows(src: CaptionSource, path: Path) -> list[tuple[str, dict]]:
    rows = []
    for n, text in _lines(path):
        if text is None:
            src.bad(path, f"line {n}", "not UTF-8 text")
        else:
            rows.append((f"line {n}", {"caption": text}))
    return rows


def _feature_rows(path: Path) -> list[tuple[str, dict]]:
    store = load_features(path)
    return [(f"caption {i + 1}", {"caption": text, "style": store.style_of(i)})
            for i, text in enumerate(store.texts())]


def _rows(src: CaptionSource, path: Path, fmt: str) -> list[tuple[str, dict]]:
    if fmt == "txt":
        return _txt_rows(src, path)
    if fmt == "jsonl":
        return jsonl_rows(src, path)
    if fmt == "features":
        return _feature_rows(path)
    header, rows = _csv_rows(path)
    if "caption" not in header:
        raise UserError(f"{path}: the header row {','.join(header)[:80]!r} has no caption column; expected "
                        "caption[,style][,split] (or pass a .txt file of one sentence a line)")
    return csv_records(src, path, header, rows)


def read_corpus(path: str | Path, fmt: str = "auto", style: str | None = None) -> CaptionSource:
    """A text corpus as a CaptionSource: one "image" per sentence (id ``<stem>:<line>``), in file order.
    ``style``: the style of every record that has none. Malformed lines are skipped and recorded
    (``malformed``); a file without one usable sentence is a UserError naming it."""
    path = need_file(Path(path))
    fmt = detect_corpus(path) if fmt == "auto" else fmt
    src = CaptionSource(format=f"text-{fmt}", files=[str(path)])
    rows = _rows(src, path, fmt)
    for where, rec in rows:
        # each sentence its own image: the generic reader takes the id from the file stem of "image"
        rec["image"] = f"{path.stem}:{where.split()[-1]}.txt"
        if style is not None and rec.get("style") in (None, ""):
            rec["style"] = style
    _add_generic(src, path, rows)
    if not src.captions:
        first = f"; first problem: {src.malformed[0]['where']}: {src.malformed[0]['reason']}" if src.malformed else ""
        raise UserError(f"{path}: no usable sentence (expected {fmt}: one sentence a line, or jsonl/csv records with "
                        f"a 'caption'){first}")
    return src


def corpus_jobs(output: Path, source: CaptionSource, split: SplitSettings) -> list[extract.Job]:
    """The feature files to write: one, or one per split (the corpus's own, or --val_ratio/--test_ratio).
    A job's "image paths" are its sentences: what is encoded, and so part of the run key."""
    styles = list(dict.fromkeys(c["style"] for c in source.captions if c.get("style") is not None))
    meta = {"dataset": "text", "source_format": source.format, "sources": source.files, "styles": styles,
            "modality": TEXT_MODALITY, "train_normalization": "l2"}
    text_of = {c["image_id"]: c["caption"] for c in source.captions}  # one caption per id
    jobs = jobs_by_split(output, source, Path("."), meta, split, "source")
    return [replace(j, image_paths=[text_of[i] for i in j.image_ids]) for j in jobs]


# ----------------------------------------------------------------------------- encoding, chunked and resumable
def _encode_job(job: extract.Job, enc: extract.Encoder, key: str, settings: ExtractSettings) -> torch.Tensor:
    """(N, D) fp32 text embeddings of the job's sentences, saved chunk by chunk in ``<output>.partial/``
    (pipeline's manifest and chunk files), so a killed run resumes at the first missing chunk."""
    texts, batch = job.image_paths, settings.batch_size
    n, per_chunk = len(texts), settings.chunk_batches * batch
    n_chunks = math.ceil(n / per_chunk)
    part = Path(f"{job.path}.partial")
    manifest = {"run_key": key, "chunk_batches": settings.chunk_batches, "n_images": n}
    chunks = extract._load_chunks(part, manifest, n_chunks, per_chunk, n)
    if chunks:
        logger.info(f"{job.path}: resuming after {len(chunks)} of {n_chunks} chunks ({len(chunks) * per_chunk} "
                    "sentences done)")
    ac = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[enc.encoding["autocast"]]
    with torch.inference_mode(), torch.autocast(enc.device.type, dtype=ac, enabled=ac is not None):
        for c in range(len(chunks), n_chunks):
            lo, hi = c * per_chunk, min(n, (c + 1) * per_chunk)  # whole batches: resume keeps batch boundaries
            emb = torch.cat([encode_text(enc.model, texts[b:min(hi, b + batch)], enc.device)
                             for b in range(lo, hi, batch)]).float().cpu()  # (hi - lo, D)
            chunk = {"first": lo, "count": hi - lo, "ok": torch.arange(lo, hi), "emb": emb,
                     "bad_index": [], "bad_reason": []}
            atomic_torch_save(chunk, part / f"chunk_{c:05d}.pt")
            chunks.append(chunk)
    return torch.cat([c["emb"] for c in chunks]) if chunks else torch.zeros(0, enc.encoding["dim"])


def run_text(jobs: list[extract.Job], settings: ExtractSettings) -> int:
    """Encode every job (a file up to date with the same inputs and settings is not redone) and write it."""
    if settings.sharded or settings.merge:
        raise UserError("process_text.py encodes in one process (sentences are fast to encode); drop --shard/--merge")
    if settings.limit:
        jobs = [extract.limit_job(j, settings.limit) for j in jobs]
    enc = extract.load_encoder(settings)
    enc = replace(enc, encoding={**enc.encoding, **TEXT_ENCODER})
    for job in jobs:
        if not job.image_ids:
            logger.warning(f"{job.path}: no sentences for this file; not written")
            continue
        key = extract.run_key(job, enc.encoding)
        if extract._reuse(job, key) is not None:
            continue
        emb = _encode_job(job, enc, key, settings)
        extract._write(job, extract.finalize(job, enc.encoding, emb, list(range(len(job.image_ids))), []))
    return 0


def corpus_summary(source: CaptionSource) -> str:
    """One log line: how many sentences, in which styles."""
    counts: dict[str, int] = {}
    for c in source.captions:
        counts[str(c.get("style"))] = counts.get(str(c.get("style")), 0) + 1
    return f"{len(source.captions)} sentences from {source.files[0]}; styles: {json.dumps(counts, ensure_ascii=False)}"
