"""Check every input a training script needs before it starts; print ONE list of what is missing.

scripts/train_finetune_gpt2.sh, train_no_finetune_gpt2.sh and train_personality.sh call this first, so
a fresh clone learns everything it lacks at once (Python packages, feature files, GPT-2, and for
missing features the CLIP weights and the dataset files that make them), each with where to get it and
the command that makes it, instead of one error per attempt. A run folder that already has checkpoints
(train.py needs --resume then) is listed too. Exit 0 when everything is there, else 2
with the list on stderr. Only the standard library is used: the answer comes before torch loads.

    python scripts/check_inputs.py --dataset flickr30k --train data/features/flickr30k_train.pkl \\
        --val data/features/flickr30k_val.pkl --gpt2 pre_model/gpt2 [-- <the script's extra train.py flags>]

The flags after ``--`` are the ones the script passes through to train.py: a ``--data_path``,
``--val_path`` or ``--gpt2_path`` among them replaces the script's own path, as it does for train.py.
Dataset sources, sizes and layouts: docs/data.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

DATA_DOC = "docs/data.md"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylecap import DEFAULT_CLIP as CLIP_DEFAULT  # noqa: E402  (stylecap/__init__.py imports nothing)
# The URL openai-clip itself downloads ViT-B/32 from (clip.clip._MODELS["ViT-B/32"]; pre_model/README.md).
CLIP_URL = ("https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
KARPATHY_ZIP = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
PERSONALITY_TGZ = "http://parl.ai/downloads/personality_captions/personality_captions.tgz"  # ParlAI's build.py
PACKAGES = ("torch", "transformers", "loguru", "tqdm")  # what train.py imports before it reads any input
GPT2_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Missing:
    """One missing input: what it is, where it should be, and how to get it."""
    what: str           # "training features"
    path: str           # where the script looks for it
    setting: str        # the variable (or train.py flag) that sets the path: "TRAIN", "--data_path"
    get: str            # where it comes from
    make: str = ""      # the command that makes it ("" when it is a download behind a form)


def _q(path: str | Path) -> str:
    return shlex.quote(str(path))


def missing_packages(python: str) -> list[Missing]:
    """The train.py imports this interpreter lacks (found without importing them: no torch start-up)."""
    absent = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if not absent:
        return []
    return [Missing(f"Python packages {', '.join(absent)}", python, "PYTHON",
                    "requirements.txt (README, Installation); `make setup` makes .venv, which the scripts use",
                    "make setup")]


def missing_gpt2(path: str, setting: str) -> list[Missing]:
    """A Hugging Face GPT-2 folder needs its config, its weights and its tokenizer files."""
    d = Path(path)
    lacks = [] if (d / "config.json").is_file() else ["config.json"]
    if not any((d / w).is_file() for w in GPT2_WEIGHTS):
        lacks.append("model.safetensors (or pytorch_model.bin)")
    if not ((d / "tokenizer.json").is_file() or (d / "vocab.txt").is_file()
            or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())):
        lacks.append("vocab.json + merges.txt (or tokenizer.json)")
    if not lacks:
        return []
    what = "GPT-2 folder" if not d.is_dir() else f"GPT-2 folder (no {', '.join(lacks)})"
    return [Missing(what, f"{path}/", setting,
                    "the files of https://huggingface.co/openai-community/gpt2 (pre_model/README.md); "
                    "for a quick trial, GPT2=pre_model/small_gpt2 from scripts/make_small_models.py",
                    f"huggingface-cli download openai-community/gpt2 --local-dir {_q(path)}")]


def missing_clip(path: str) -> list[Missing]:
    """--clip_model_path: a file, a model name such as ViT-B/32 already in openai-clip's cache, an open_clip or
    Hugging Face folder, or open_clip's ARCH:FILE (docs/encoders.md)."""
    cached = Path.home() / ".cache" / "clip" / f"{path.replace('/', '-')}.pt"
    arch_file = path.partition(":")[2]
    if Path(path).is_file() or Path(path).is_dir() or (arch_file and Path(arch_file).is_file()) \
            or (not path.endswith((".pt", ".pth")) and cached.is_file()):
        return []
    make = f"curl -L --create-dirs -o {_q(path)} {CLIP_URL}" if path == CLIP_DEFAULT else ""
    return [Missing("CLIP ViT-B/32 weights (needed to make the features)", path, "CLIP",
                    "OpenAI's CLIP release, about 338 MB (pre_model/README.md)", make)]


def _flickr_output(path: Path) -> tuple[Path, str]:
    """A split file ``<stem>_train.pkl`` -> process_flickr.py's --output_path ``<stem>.pkl`` and a note."""
    for split in ("train", "val", "test"):
        if path.name.endswith(f"_{split}.pkl"):
            out = path.with_name(path.name[: -len(f"_{split}.pkl")] + ".pkl")
            return out, f"writes {out.stem}_train.pkl, {out.stem}_val.pkl and {out.stem}_test.pkl"
    return path, f"writes {path.stem}_train.pkl, _val.pkl and _test.pkl beside it: point TRAIN and VAL at them"


def flickr_raw(root: str) -> tuple[list[Missing], str, str]:
    """Flickr30k's captions and images under ``root`` -> (missing, caption file, image folder)."""
    base = Path(root)
    captions = next((base / n for n in ("dataset_flickr30k.json", "results_20130124.token")
                     if (base / n).is_file()), base / "dataset_flickr30k.json")
    images = base / "flickr30k-images"
    missing = []
    if not captions.is_file():
        missing.append(Missing("Flickr30k captions, Karpathy split (needed to make the features)", str(captions),
                               "FLICKR", f"dataset_flickr30k.json in Karpathy's caption_datasets.zip ({DATA_DOC}#flickr30k)",
                               f"curl -LO {KARPATHY_ZIP} && unzip -j caption_datasets.zip '*dataset_flickr30k.json' "
                               f"-d {_q(base)}"))
    if not images.is_dir():
        missing.append(Missing("Flickr30k images (needed to make the features)", f"{images}/", "FLICKR",
                               "31,783 JPEGs, after the request form on the Flickr30k page "
                               f"(University of Illinois); unpack them into this folder ({DATA_DOC}#flickr30k)"))
    return missing, str(captions), str(images)


def personality_raw(root: str) -> tuple[list[Missing], str, str]:
    """PersonalityCaptions' json files and YFCC100M images under ``root`` -> (missing, data folder, images)."""
    data, images = Path(root) / "personality_captions", Path(root) / "yfcc_images"
    missing = []
    absent = [f"{s}.json" for s in ("train", "val", "test") if not (data / f"{s}.json").is_file()]
    if absent:
        missing.append(Missing(f"PersonalityCaptions captions: {', '.join(absent)} (needed to make the features)",
                               f"{data}/", "PC", f"ParlAI's personality_captions task ({DATA_DOC}#personalitycaptions)",
                               f"curl -LO {PERSONALITY_TGZ} && mkdir -p {_q(data)} && "
                               f"tar -xzf personality_captions.tgz -C {_q(data)}"))
    if not images.is_dir():
        missing.append(Missing("YFCC100M images of PersonalityCaptions, {image_hash}.jpg (needed to make the features)",
                               f"{images}/", "PC", "ParlAI's download script (asks you to confirm YFCC100M's terms; "
                               f"slow: one request per image) ({DATA_DOC}#personalitycaptions)",
                               f"parlai display_data -t personality_captions --datapath {_q(root)}"))
    return missing, str(data), str(images)


def extraction(dataset: str, feature: Path, raw: str, clip: str, python: str) -> tuple[str, str, list[Missing]]:
    """The process_*.py command that makes ``feature``, a note on what else it writes, and its own missing inputs."""
    clip_flag = "" if clip == CLIP_DEFAULT else f" --clip_model_path {_q(clip)}"
    if dataset == "flickr30k":
        missing, captions, images = flickr_raw(raw)
        out, note = _flickr_output(feature)
        cmd = (f"{python} process_flickr.py --caption_path {_q(captions)} --image_path {_q(images)} "
               f"--output_path {_q(out)}{clip_flag}")
    else:
        missing, data, images = personality_raw(raw)
        out = feature.parent
        note = f"writes train.pkl, val.pkl and test.pkl into {out}/"
        cmd = (f"{python} process_personality.py --data_path {_q(data)} --image_path {_q(images)} "
               f"--output_path {_q(out)}{clip_flag}")
    return cmd, note, missing


def finished_run(out: str, setting: str, script: str) -> list[Missing]:
    """train.py refuses a run folder that has checkpoints unless --resume is given: say so now, not later."""
    folder = Path(out) / "checkpoints"
    if not (folder.is_dir() and any(re.search(r"(step|epoch)_\d+\.pt$|^last\.pt$", p.name) for p in folder.iterdir())):
        return []
    return [Missing("run folder that already has checkpoints (train.py would stop)", f"{out}/", setting,
                    "an earlier run of this script: continue it, or train into a new folder",
                    f"bash {script} --resume auto   (or {setting}=<a new folder>)")]


def check(dataset: str, train: str, val: str, gpt2: str, clip: str = CLIP_DEFAULT, raw: str | None = None,
          python: str = "python", train_args: list[str] | None = None,
          feature_vars: tuple[str, str] = ("TRAIN", "VAL"), out: str | None = None,
          script: str = "this script") -> list[Missing]:
    """Everything missing, in the order to fix it: packages, features (+ what makes them), GPT-2, then
    a run folder ``out`` that would need --resume."""
    raw = raw or ("data/flickr30k" if dataset == "flickr30k" else "data")
    over = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--data_path", "--val_path", "--gpt2_path", "--output_path", "--resume"):
        over.add_argument(flag)
    over.add_argument("--lm_path", dest="gpt2_path")  # train.py's newer name of --gpt2_path
    passed, _ = over.parse_known_args(train_args or [])
    # train.py takes the last value of a flag, so a pass-through --data_path wins over the script's.
    features = [("training features", passed.data_path or train, "--data_path" if passed.data_path else feature_vars[0]),
                ("validation features", passed.val_path or val, "--val_path" if passed.val_path else feature_vars[1])]

    found = missing_packages(python)
    made_by: dict[str, int] = {}   # extraction command -> number of the first item it makes
    needs: list[Missing] = []      # what the extraction commands need (listed once, after the features)
    for what, path, setting in features:
        if Path(path).is_file():
            continue
        cmd, note, lacking = extraction(dataset, Path(path), raw, clip, python)
        if cmd in made_by:
            found.append(Missing(what, path, setting, f"the command of item {made_by[cmd]} ({note})",
                                 "(same command)"))
            continue
        made_by[cmd] = len(found) + 1
        found.append(Missing(what, path, setting, f"CLIP features of the dataset ({note})", cmd))
        needs += [m for m in lacking + missing_clip(clip) if m.path not in {n.path for n in needs}]
    found += needs
    found += missing_gpt2(passed.gpt2_path or gpt2, "--gpt2_path" if passed.gpt2_path else "GPT2")
    if (out or passed.output_path) and passed.resume is None:
        found += finished_run(passed.output_path or out, "--output_path" if passed.output_path else "OUT", script)
    return found


def report(missing: list[Missing], script: str) -> str:
    """The one list: numbered, each with its path, the setting that moves it, its source and its command."""
    n = len(missing)
    lines = [f"{script}: {n} input{'s' if n != 1 else ''} missing (all checked; nothing was started):"]
    for i, m in enumerate(missing, 1):
        lines.append(f"  {i}. {m.what}: {m.path}   [{m.setting}=... to use another path]")
        lines.append(f"     from: {m.get}")
        if m.make:
            lines.append(f"     make: {m.make}")
    lines.append(f"Sources, sizes and folder layouts of every dataset: {DATA_DOC}. Then rerun {script}.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("flickr30k", "personality"), required=True,
                   help="which process_*.py makes the features: process_flickr.py or process_personality.py")
    p.add_argument("--train", required=True, help="the training feature file")
    p.add_argument("--val", required=True, help="the validation feature file")
    p.add_argument("--gpt2", required=True, help="the Hugging Face GPT-2 folder")
    p.add_argument("--clip", default=CLIP_DEFAULT, help=f"CLIP weights for extraction (default: {CLIP_DEFAULT})")
    p.add_argument("--raw", default=None,
                   help="the dataset's folder: flickr30k -> dataset_flickr30k.json + flickr30k-images/ "
                        "(default data/flickr30k); personality -> personality_captions/ + yfcc_images/ (default data)")
    p.add_argument("--feature_vars", default="TRAIN,VAL",
                   help="the script's variable names for --train,--val, shown in the list (default: TRAIN,VAL)")
    p.add_argument("--out", default=None, help="the run folder (the script's $OUT): checked for checkpoints")
    p.add_argument("--python", default="python", help="the interpreter shown in the commands (the script's $PYTHON)")
    p.add_argument("--script", default="this script", help="the calling script's name, for the message")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    train_var, _, val_var = args.feature_vars.partition(",")
    missing = check(args.dataset, args.train, args.val, args.gpt2, args.clip, args.raw, args.python,
                    argv[cut + 1:], (train_var, val_var or train_var), args.out, args.script)
    if missing:
        print(report(missing, args.script), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
