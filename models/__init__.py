"""The StyleCap model: mappers, tokenizer wrapper, captioner and decoding (one definition for all scripts)."""
from models.captioner import ModelConfig, StyleCapModel, build_model, checkpoint_payload, import_clipcap, load_model
from models.decoding import DecodeConfig, generate_captions
from models.tokenizer import CaptionTokenizer

__all__ = ["ModelConfig", "StyleCapModel", "build_model", "checkpoint_payload", "import_clipcap", "load_model",
           "DecodeConfig", "generate_captions", "CaptionTokenizer"]
