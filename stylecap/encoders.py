"""Image encoders behind one interface: openai-clip, open_clip and Hugging Face folders (CLIP, SigLIP).

An :class:`ImageEncoder` holds a loaded model on its device and offers

* ``preprocess``: PIL image -> pixels [3, H, W], the library's own documented preprocess;
* ``encode_image(pixels [B, 3, H, W]) -> [B, D]`` and ``encode_text(list[str]) -> [B, D]`` (not normalised);
* ``width`` (D), ``input_resolution`` (H) and ``record``: {"clip_backend", "clip_model", "clip_sha256", "dim"},
  the keys a feature file's meta carries (stylecap.features.clip_record adds "normalized").

:func:`load_encoder` picks the backend from ``--clip_model_path`` (``--clip_backend`` overrides):

* ``openai``: a file (OpenAI's TorchScript archive or a state dict in its layout) or an openai-clip model
  name in its cache -- today's stylecap.clip_utils.load_clip, unchanged;
* ``open_clip``: ``ARCH:FILE`` (an open_clip architecture, or a model-config .json, then the checkpoint), or a
  folder holding ``open_clip_config.json`` and its weights (open_clip's own local-dir layout);
* ``hf``: a folder with a ``config.json`` of a CLIPModel, CLIPVisionModelWithProjection, SiglipModel or
  SiglipVisionModel, and its ``preprocessor_config.json``. This backend imports neither torchvision nor
  openai-clip (tests/test_encoders.py proves it): the fallback where those do not install.
See docs/encoders.md.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from models.compat import pil_image_processor, pooled_features
from stylecap.utils import UserError, sha256_file

BACKENDS = ("auto", "openai", "open_clip", "hf")
OPEN_CLIP_CONFIG = "open_clip_config.json"  # open_clip's local-dir / hub layout names the architecture here
HF_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")


class ImageEncoder:
    """A loaded image-text encoder (see the module docstring). Subclasses set ``backend`` and implement
    ``_image`` and ``_text``; ``model`` stays fp32 in eval mode (use autocast for half precision)."""
    backend = ""

    def __init__(self, name: str, model: torch.nn.Module, preprocess: Callable, device: torch.device | str,
                 sha256: str, input_resolution: int, width: int | None = None):
        self.name, self.model, self.preprocess, self.sha256 = name, model, preprocess, sha256
        self.device, self.input_resolution = torch.device(device), int(input_resolution)
        self.width = int(width) if width is not None else self._probe_width()

    def _probe_width(self) -> int:
        """D, from one forward pass of a black image (each library names it differently)."""
        x = torch.zeros(1, 3, self.input_resolution, self.input_resolution, device=self.device)
        with torch.inference_mode():
            return int(self.encode_image(x).shape[-1])

    @property
    def has_text(self) -> bool:
        """Whether encode_text works (a vision-only Hugging Face folder has no text tower)."""
        return True

    @property
    def record(self) -> dict:
        return {"clip_backend": self.backend, "clip_model": self.name, "clip_sha256": self.sha256, "dim": self.width}

    @property
    def info(self) -> dict:
        """stylecap.clip_utils.load_clip's info dict, for the callers that read it."""
        return {**self.record, "input_resolution": self.input_resolution}

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] (``preprocess``'s output, stacked) on the device -> features [B, D]."""
        return self._image(pixels)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """texts -> text features [B, D] (fp32, not normalised), truncated to the model's context length."""
        chunks = [self._text(list(texts[s:s + batch_size])).float() for s in range(0, len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.width)

    def _image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class OpenAIEncoder(ImageEncoder):
    """openai-clip: the model of stylecap.clip_utils.load_clip, its ``_transform`` and ``clip.tokenize``."""
    backend = "openai"

    def _image(self, pixels):
        return self.model.encode_image(pixels)

    def _text(self, texts):
        from stylecap.clip_utils import _import_clip
        tokens = _import_clip().tokenize(texts, truncate=True).to(self.device)  # [B, 77]
        return self.model.encode_text(tokens)


def openai_encoder(model: torch.nn.Module, preprocess: Callable, info: dict | None = None) -> OpenAIEncoder:
    """An encoder around an openai-clip model already loaded (``info``: load_clip's; None: a bare model)."""
    info = info or {"clip_model": None, "clip_sha256": None, "dim": int(model.visual.output_dim)}
    return OpenAIEncoder(info["clip_model"], model, preprocess, next(model.parameters()).device, info["clip_sha256"],
                         int(model.visual.input_resolution), info["dim"])


class OpenCLIPEncoder(ImageEncoder):
    """open_clip: ``create_model_and_transforms`` (its eval transform), ``encode_image``, ``get_tokenizer``."""
    backend = "open_clip"

    def __init__(self, *args, arch: str, **kw):
        self.arch, self._tokenizer = arch, None
        super().__init__(*args, **kw)

    def _image(self, pixels):
        return self.model.encode_image(pixels)

    def _text(self, texts):
        if self._tokenizer is None:
            import open_clip
            self._tokenizer = open_clip.get_tokenizer(self.arch)
        return self.model.encode_text(self._tokenizer(texts).to(self.device))


class HFEncoder(ImageEncoder):
    """A Hugging Face CLIP or SigLIP folder: AutoImageProcessor (PIL backend) and the model's own features:
    CLIPModel.get_image_features / CLIPVisionModelWithProjection's image_embeds (the projected embedding);
    SiglipModel.get_image_features / SiglipVisionModel's pooler_output (SigLIP has no projection)."""
    backend = "hf"

    def __init__(self, *args, kind: str, folder: Path, **kw):
        self.kind, self.folder, self._tokenizer = kind, folder, None
        super().__init__(*args, **kw)

    def _image(self, pixels):
        if self.kind == "clip_vision_model":
            return self.model(pixel_values=pixels).image_embeds
        if self.kind == "siglip_vision_model":
            return self.model(pixel_values=pixels).pooler_output
        return pooled_features(self.model.get_image_features(pixel_values=pixels))

    @property
    def has_text(self) -> bool:
        return self.kind in ("clip", "siglip")

    def _text(self, texts):
        if not self.has_text:
            raise UserError(f"{self.folder} holds a vision model only ({self.kind}): text features (CLIPScore, "
                            "text-only training) need the whole CLIPModel or SiglipModel folder")
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        max_len = self.model.config.text_config.max_position_embeddings
        if self.kind == "siglip":  # SigLIP was trained on text padded to its full length; it reads no mask
            tok = self._tokenizer(texts, padding="max_length", truncation=True, max_length=max_len,
                                  return_tensors="pt")
            return pooled_features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device)))
        tok = self._tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return pooled_features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                            attention_mask=tok["attention_mask"].to(self.device)))


# ---------------------------------------------------------------------------------------------- loading
def _arch_and_file(spec: str) -> tuple[str, Path] | None:
    """``ARCH:FILE`` (open_clip) -> (ARCH, FILE), or None when ``spec`` is not of that form. ARCH has no path
    separator (an architecture name) or ends in .json (a model config); FILE must exist."""
    arch, sep, rest = spec.partition(":")
    if not sep or not arch or not rest or len(arch) == 1:  # "C:\\..." is a Windows path, not ARCH:
        return None
    if ("/" in arch or "\\" in arch) and not arch.endswith(".json"):
        return None
    return arch, Path(rest).expanduser()


def detect_backend(spec: str) -> str:
    """The backend ``--clip_model_path`` names, from its form and contents (see the module docstring)."""
    if _arch_and_file(spec) is not None:
        return "open_clip"
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / OPEN_CLIP_CONFIG).is_file():
            return "open_clip"
        if (p / "config.json").is_file():
            return "hf"
        raise UserError(f"--clip_model_path {spec} is a folder with neither config.json (a Hugging Face CLIP or "
                        f"SigLIP folder) nor {OPEN_CLIP_CONFIG} (an open_clip folder)")
    if p.is_file() and p.parent.joinpath(OPEN_CLIP_CONFIG).is_file() and p.suffix != ".json":
        return "open_clip"  # a checkpoint beside the open_clip config that names its architecture
    return "openai"


def spec_exists(spec: str) -> bool:
    """Whether the model ``spec`` names is on this machine (a file, a folder, or ARCH:FILE's file)."""
    parts = _arch_and_file(spec)
    p = parts[1] if parts else Path(spec).expanduser()
    return p.is_file() or p.is_dir()


def load_encoder(spec: str, device: torch.device | str = "cpu", backend: str = "auto") -> ImageEncoder:
    """The encoder ``spec`` (--clip_model_path) names, fp32 in eval mode on ``device``. ``backend``: auto
    (detect_backend), openai, open_clip or hf."""
    if backend not in BACKENDS:
        raise UserError(f"--clip_backend {backend}: choose one of {', '.join(BACKENDS)}")
    backend = detect_backend(spec) if backend == "auto" else backend
    if backend == "openai":
        from stylecap.clip_utils import load_clip
        try:
            model, preprocess, info = load_clip(spec, device)
        except UserError as e:  # most likely an open_clip checkpoint: it does not name its architecture
            if "OpenAI's layout" not in str(e):
                raise
            raise UserError(f"{e}; for an open_clip checkpoint give its architecture: --clip_model_path "
                            f"ARCH:{spec} (e.g. ViT-B-32:{spec})") from None
        if why := _open_clip_like(spec):
            from loguru import logger
            logger.warning(f"{spec} {why}: read in OpenAI's layout, as openai-clip builds it (QuickGELU). If it "
                           f"is an open_clip checkpoint, name its architecture: --clip_model_path ARCH:{spec}")
        return openai_encoder(model, preprocess, info)
    return (_load_open_clip if backend == "open_clip" else _load_hf)(spec, torch.device(device))


def _open_clip_like(spec: str) -> str | None:
    """Why a file read as OpenAI's may be an open_clip checkpoint, or None. Both use the same key names, so
    open_clip's ViT-B-32 (nn.GELU) would load into openai-clip's class (QuickGELU) and give other features
    without an error. OpenAI's weights are fp16 (its archives, and state dicts saved from them); open_clip
    saves fp32 or bf16 state dicts, or training checkpoints ({"epoch", "state_dict", ...}, keys "module.*")."""
    import zipfile
    p = Path(spec).expanduser()
    if not p.is_file() or not zipfile.is_zipfile(p):  # not torch's zip format: an old pickle, left to load_clip
        return None
    with zipfile.ZipFile(p) as z:  # the directory only
        if any(n.endswith("/constants.pkl") for n in z.namelist()):
            return None  # a TorchScript archive: OpenAI's own format
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)  # mapped, not read
    except Exception:
        return None
    if not isinstance(sd, dict):
        return None
    if isinstance(sd.get("state_dict"), dict):
        return "is a training checkpoint (it has a 'state_dict')"
    floats = [v.dtype for v in sd.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if floats and torch.float16 not in floats:
        return "is a state dict without fp16 weights (OpenAI's are fp16)"
    return None


def _load_open_clip(spec: str, device: torch.device) -> OpenCLIPEncoder:
    import open_clip
    parts = _arch_and_file(spec)
    p = Path(spec).expanduser()
    if parts is not None:
        arch, weights = parts
        if not weights.is_file():
            raise UserError(f"--clip_model_path {spec}: checkpoint {weights} not found")
        if arch.endswith(".json"):  # a model config of one's own: open_clip registers it under its file stem
            open_clip.add_model_config(arch)
            arch = Path(arch).stem
        if arch not in open_clip.list_models():
            raise UserError(f"--clip_model_path {spec}: {arch} is not an open_clip architecture (see "
                            "open_clip.list_models()); give ARCH:FILE or a model-config .json as ARCH")
        name, pretrained = arch, str(weights)
    else:  # a folder in open_clip's layout, or a checkpoint file beside its open_clip_config.json
        folder = p if p.is_dir() else p.parent
        if not (folder / OPEN_CLIP_CONFIG).is_file():
            raise UserError(f"--clip_model_path {spec}: an open_clip checkpoint does not name its architecture; "
                            f"give it as ARCH:{spec} (e.g. ViT-B-32:{spec}) or put {OPEN_CLIP_CONFIG} beside it")
        weights = p if p.is_file() else _open_clip_weights(folder)
        name, pretrained = f"local-dir:{folder}", None
        if p.is_file():  # the folder's config, these weights
            cfg = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
            name, pretrained = _register_config(folder, cfg), str(weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"--clip_model_path {spec}: open_clip could not load it ({str(e)[:200]})") from None
    size = model.visual.image_size
    return OpenCLIPEncoder(spec, model.float().eval(), preprocess, device, sha256_file(weights),
                           size if isinstance(size, int) else size[0], arch=name)


def _open_clip_weights(folder: Path) -> Path:
    """The weights open_clip's local-dir loading picks (its preferred names, else the first file)."""
    for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
              "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
              "model.pth"):
        if (folder / n).is_file():
            return folder / n
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    if not found:
        raise UserError(f"--clip_model_path {folder}: {OPEN_CLIP_CONFIG} but no weights (.safetensors/.bin/.pth)")
    return found[0]


def _register_config(folder: Path, cfg: dict) -> str:
    """Register the folder's model config with open_clip under a name of its own -> that name."""
    import open_clip
    import tempfile
    name = f"stylecap-{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]}"
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / f"{name}.json").write_text(json.dumps(cfg.get("model_cfg", cfg)))
        open_clip.add_model_config(Path(d) / f"{name}.json")
    return name


HF_CLASSES = {"clip": "CLIPModel", "clip_vision_model": "CLIPVisionModelWithProjection",
              "siglip": "SiglipModel", "siglip_vision_model": "SiglipVisionModel"}


def _load_hf(spec: str, device: torch.device) -> HFEncoder:
    import transformers
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"--clip_model_path {spec}: not a Hugging Face model folder (no config.json)")
    cfg = json.loads((folder / "config.json").read_text())
    kind, archs = cfg.get("model_type"), cfg.get("architectures") or []
    if kind not in HF_CLASSES or (kind == "clip_vision_model" and "CLIPVisionModel" in archs):
        raise UserError(f"--clip_model_path {spec}: a {'/'.join(archs) or kind} folder; the hf backend takes "
                        f"{', '.join(HF_CLASSES.values())} (a CLIPVisionModel has no projection)")
    if not (folder / "preprocessor_config.json").is_file():
        raise UserError(f"--clip_model_path {spec}: no preprocessor_config.json; save the model's image "
                        "processor into the folder (processor.save_pretrained(folder))")
    model = getattr(transformers, HF_CLASSES[kind]).from_pretrained(str(folder)).float().eval().to(device)
    processor = pil_image_processor(folder)
    vision = model.config if kind.endswith("vision_model") else model.config.vision_config
    return HFEncoder(spec, model, HFPreprocess(processor), device, _hf_weights_sha256(folder),
                     int(vision.image_size), kind=kind, folder=folder)


class HFPreprocess:
    """PIL image -> pixel_values [3, H, W]: ``processor(images=img, return_tensors="pt")``, as documented.
    A class (not a closure) so that DataLoader workers can pickle it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img) -> torch.Tensor:
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]


def _hf_weights_sha256(folder: Path) -> str:
    """sha256 of the weights file; for sharded weights, of the sorted "name sha256" lines of the shards."""
    files = sorted({f for pat in HF_WEIGHTS for f in folder.glob(pat)})
    if not files:
        raise UserError(f"--clip_model_path {folder}: no weights (model.safetensors or pytorch_model.bin)")
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(f"{f.name} {sha256_file(f)}\n" for f in files).encode()).hexdigest()
