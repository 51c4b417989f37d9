"""The training scripts' input check (scripts/check_inputs.py): one list of everything missing, each
item with its source and command, before anything starts; and the demo's stage timer (scripts/demo.sh)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import check_inputs
from tests.helpers import synthetic_features

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_finetune_gpt2.sh", "train_no_finetune_gpt2.sh", "train_personality.sh")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """Every path variable of the three scripts pointed into ``tmp`` (nothing there unless a test puts it)."""
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp / "out"), GPT2=str(tmp / "gpt2"),
               CLIP=str(tmp / "clip" / "ViT-B-32.pt"), FLICKR=str(tmp / "flickr30k"), PC=str(tmp / "pc"),
               TRAIN=str(tmp / "feat" / "flickr30k_train.pkl"), VAL=str(tmp / "feat" / "flickr30k_val.pkl"),
               FEATURES=str(tmp / "feat" / "personality"))
    env.pop("CHECK_ONLY", None)
    env.update(extra)
    return env


def _run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _items(stderr: str) -> list[str]:
    """The numbered items of the list: ``  3. what: path   [VAR=...]``."""
    return re.findall(r"^  \d+\. (.*)$", stderr, flags=re.M)


@pytest.mark.parametrize("script", SCRIPTS)
def test_nothing_present_lists_every_missing_piece_at_once(tmp_path, script):
    r = _run(script, _env(tmp_path))
    assert r.returncode == 2, r.stderr
    items = _items(r.stderr)
    # features (train, val), the dataset's captions and images, CLIP (they make the features), GPT-2
    assert len(items) == 6, r.stderr
    assert f"{script}: 6 inputs missing" in r.stderr
    personality = script == "train_personality.sh"
    feat = tmp_path / "feat" / ("personality/train.pkl" if personality else "flickr30k_train.pkl")
    expected = [str(feat), str(feat).replace("train.pkl", "val.pkl"), str(tmp_path / "clip" / "ViT-B-32.pt"),
                str(tmp_path / "gpt2"),
                *([str(tmp_path / "pc" / "personality_captions"), str(tmp_path / "pc" / "yfcc_images")] if personality
                  else [str(tmp_path / "flickr30k" / "dataset_flickr30k.json"),
                        str(tmp_path / "flickr30k" / "flickr30k-images")])]
    for path in expected:
        assert any(path in item for item in items), (path, r.stderr)
    # each item says where it comes from; every one that a command can make has it
    assert r.stderr.count("     from: ") == 6
    make = "process_personality.py" if personality else "process_flickr.py"
    assert f"make: {sys.executable} {make}" in r.stderr
    assert "huggingface-cli download openai-community/gpt2" in r.stderr
    assert "docs/data.md" in r.stderr
    # nothing started: no run folder, no train.py message
    assert not (tmp_path / "out").exists()
    assert "error:" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_everything_present_passes_the_check(tmp_path, small_models, script):
    """CHECK_ONLY=1 stops right after the check. Raw data and CLIP are not needed once the features exist."""
    env = _env(tmp_path, CHECK_ONLY="1", GPT2=str(small_models / "small_gpt2"))
    if script == "train_personality.sh":
        folder = Path(env["FEATURES"])
        folder.mkdir(parents=True)
        synthetic_features(folder / "train.pkl", n_images=8)
        synthetic_features(folder / "val.pkl", n_images=4, seed=1)
    else:
        Path(env["TRAIN"]).parent.mkdir(parents=True)
        synthetic_features(Path(env["TRAIN"]), n_images=8, styled=False)
        synthetic_features(Path(env["VAL"]), n_images=4, styled=False, seed=1)
    r = _run(script, env)
    assert r.returncode == 0, r.stderr
    assert "all inputs present (CHECK_ONLY=1: not training)" in r.stdout
    assert r.stderr == "" and not (tmp_path / "out").exists()


def test_only_what_is_missing_is_listed(tmp_path):
    """Features there, GPT-2 folder without its tokenizer: one item, naming the missing files."""
    (tmp_path / "feat").mkdir()
    for name in ("flickr30k_train.pkl", "flickr30k_val.pkl"):
        synthetic_features(tmp_path / "feat" / name, n_images=4, styled=False)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text("{}")
    (gpt2 / "model.safetensors").write_bytes(b"")
    r = _run("train_finetune_gpt2.sh", _env(tmp_path))
    assert r.returncode == 2
    assert _items(r.stderr) == [f"GPT-2 folder (no vocab.json + merges.txt (or tokenizer.json)): {gpt2}/   "
                                "[GPT2=... to use another path]"]
    assert "1 input missing" in r.stderr


def test_pass_through_flags_replace_the_scripts_paths(tmp_path, small_models):
    """`bash scripts/train_finetune_gpt2.sh --data_path X` trains on X: the check looks at X too."""
    real = synthetic_features(tmp_path / "mine.pkl", n_images=4, styled=False)
    found = check_inputs.check("flickr30k", str(tmp_path / "absent_train.pkl"), str(real),
                               str(small_models / "small_gpt2"), train_args=["--data_path", str(real), "--epochs", "1"])
    assert found == []
    found = check_inputs.check("flickr30k", str(real), str(real), str(small_models / "small_gpt2"),
                               train_args=[f"--gpt2_path={tmp_path / 'nowhere'}"])
    assert [(m.what, m.setting) for m in found] == [("GPT-2 folder", "--gpt2_path")]


def test_feature_commands_match_the_extraction_flags(tmp_path):
    """The printed commands parse with process_flickr.py / process_personality.py's own parsers."""
    import process_flickr
    import process_personality
    flickr = tmp_path / "flickr30k"
    flickr.mkdir()
    (flickr / "results_20130124.token").write_text("1.jpg#0\ta dog\n")  # the token file is used when it is there
    found = check_inputs.check("flickr30k", str(tmp_path / "f_train.pkl"), str(tmp_path / "f_val.pkl"),
                               str(tmp_path / "gpt2"), clip=str(tmp_path / "c.pt"), raw=str(flickr))
    cmd = shlex.split(found[0].make)
    assert cmd[1] == "process_flickr.py" and found[1].make == "(same command)"
    args = process_flickr.build_parser().parse_args(cmd[2:])
    assert (args.caption_path, args.output_path) == (str(flickr / "results_20130124.token"), str(tmp_path / "f.pkl"))
    assert args.clip_model_path == str(tmp_path / "c.pt")
    assert not any("captions" in m.what for m in found)  # only the images are missing
    found = check_inputs.check("personality", str(tmp_path / "p" / "train.pkl"), str(tmp_path / "p" / "val.pkl"),
                               str(tmp_path / "gpt2"), raw=str(tmp_path))
    cmd = shlex.split(found[0].make)
    args = process_personality.build_parser().parse_args(cmd[2:])
    assert (args.data_path, args.image_path, args.output_path) == (
        str(tmp_path / "personality_captions"), str(tmp_path / "yfcc_images"), str(tmp_path / "p"))


def test_missing_packages_come_first(tmp_path, monkeypatch):
    monkeypatch.setattr(check_inputs, "PACKAGES", ("torch", "no_such_package_for_stylecap"))
    found = check_inputs.check("flickr30k", str(tmp_path / "a_train.pkl"), str(tmp_path / "a_val.pkl"),
                               str(tmp_path / "gpt2"), python=".venv/bin/python")
    assert found[0].what == "Python packages no_such_package_for_stylecap" and found[0].make == "make setup"


def test_main_exit_codes(tmp_path, small_models, capsys):
    real = synthetic_features(tmp_path / "x_train.pkl", n_images=4, styled=False)
    gpt2 = str(small_models / "small_gpt2")
    assert check_inputs.main(["--dataset", "flickr30k", "--train", str(real), "--val", str(real),
                              "--gpt2", gpt2]) == 0
    assert check_inputs.main(["--dataset", "flickr30k", "--train", str(real), "--val", str(tmp_path / "x_val.pkl"),
                              "--gpt2", gpt2, "--script", "s.sh", "--raw", str(tmp_path / "f30k"),
                              "--clip", str(tmp_path / "c.pt"), "--", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s.sh: 4 inputs missing") and "validation features" in err


# ----------------------------------------------------------------------------- scripts/stage_timer.sh (make demo)
def _bash(snippet: str) -> subprocess.CompletedProcess:
    """Run ``snippet`` in bash -euo pipefail with scripts/stage_timer.sh sourced. SECONDS is set by hand,
    so the times are exact without sleeping."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source scripts/stage_timer.sh; {snippet}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_stage_timer_prints_each_stage_and_the_total():
    r = _bash('stage "1/3 small models (pre_model/small_*) and data"; echo work; SECONDS=84; '
              'stage "2/3 train: MLP + GPT-2 tuning"; SECONDS=209; stage_end; echo "== 3/3 done"; stages_done')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["== 1/3 small models (pre_model/small_*) and data", "work", "== 1/3 small models (took 84 s)"]
    assert lines[3:6] == ["== 2/3 train: MLP + GPT-2 tuning", "== 2/3 train (took 125 s)", "== 3/3 done"]
    assert lines[6] == "== total 209 s (3 min 29 s): 1/3 small models 84 s, 2/3 train 125 s"
    assert re.fullmatch(r"   on \d+ CPUs, load average [\d.?]+ at the start .*", lines[7])


def test_stage_timer_names_the_stage_that_failed():
    r = _bash('stage "1/2 features"; SECONDS=7; stage "2/2 train: x"; SECONDS=12; false; echo never')
    assert r.returncode == 1 and "never" not in r.stdout
    assert r.stderr.strip() == "== failed in 2/2 train after 5 s (exit code 1; total 12 s)"


def test_stage_timer_without_stages():
    r = _bash("stages_done")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "== total 0 s"


def test_demo_script_times_every_stage():
    """make demo is too slow for the suite: check its syntax and that each stage goes through the timer."""
    text = (ROOT / "scripts/demo.sh").read_text(encoding="utf-8")
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts/demo.sh")]).returncode == 0
    assert "source scripts/stage_timer.sh" in text
    for n in range(1, 6):
        assert len(re.findall(rf'^stage "{n}/6 ', text, flags=re.M)) == 1, n
    assert not re.search(r'^echo "== [1-5]/6', text, flags=re.M)
    assert text.count("stages_done") == 2  # after the features (`demo.sh features`) and at the very end
    assert text.rstrip().endswith("stages_done")


# ----------------------------------------------------------------------------- docs/data.md
DATA_MD = ROOT / "docs" / "data.md"


def _code(text: str) -> str:
    """The page's indented code blocks, with backslash continuations joined."""
    return "\n".join(line[4:] for line in text.splitlines() if line.startswith("    ")).replace("\\\n", " ")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_data_page_commands_use_the_real_flags():
    """Every process_*.py command on the page parses with that script's own parser (the flags of --help)."""
    import importlib
    found = []
    for line in _code(DATA_MD.read_text(encoding="utf-8")).splitlines():
        for m in re.finditer(r"python (process_\w+)\.py([^;#\n]*)", line):
            argv = shlex.split(m.group(2).replace("$s", "train"))
            importlib.import_module(m.group(1)).build_parser().parse_args(argv)  # SystemExit on a bad flag
            found.append(m.group(1))
    assert sorted(set(found)) == ["process_conceptual", "process_flickr", "process_personality", "process_stylized"]
    assert len(found) == 7  # Flickr30k, Flickr30k-CN, PersonalityCaptions, COCO, FlickrStyle10K, SentiCap, CC3M


def test_data_page_sections_and_links():
    text = DATA_MD.read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    for name in ("flickr30k", "flickr30k-cn", "personalitycaptions", "coco", "flickrstyle10k", "senticap",
                 "conceptual-captions"):
        assert name in anchors
    assert set(re.findall(r"\]\(#([\w-]+)\)", text)) <= anchors
    # the anchors the training scripts' check prints
    assert set(re.findall(r"data\.md#([\w-]+)", (ROOT / "scripts/check_inputs.py").read_text())) <= anchors
    for link in re.findall(r"\]\((?!http|#)([^)#]+)", text):
        assert (DATA_MD.parent / link).exists(), link
    assert "(docs/data.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_data_page_flickr30k_cn_conversion(tmp_path):
    """The page's Flickr30k-CN snippet, run as printed on release-style files, gives what the cn reader reads."""
    from stylecap.extract.caption_sources import read_cn
    code = _code(DATA_MD.read_text(encoding="utf-8"))
    snippet = code.split("python - <<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    d = tmp_path / "data" / "flickr30k_cn"
    d.mkdir(parents=True)
    (d / "flickr_caption-train.txt").write_text("1000092795#zhm#0 两个 年轻人 在 院子 里\n1000092795#zhm#1 朋友\n"
                                                "10002456#zhm#0 工人 往下 看\n", encoding="utf-8")
    (d / "flickr_caption-val.txt").write_text("1001#zhm#0 一只 狗\n", encoding="utf-8")
    (d / "flickr_caption-test.txt").write_text("1002#zhm#0 一个:0.9 孩子:0.8\n\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    train = read_cn(d / "train.txt")
    assert [(c["image_id"], c["caption"]) for c in train.captions] == [
        ("1000092795", "两个年轻人在院子里"), ("1000092795", "朋友"), ("10002456", "工人往下看")]
    assert train.image_files["1000092795"] == "1000092795.jpg" and not train.malformed
    assert [c["caption"] for c in read_cn(d / "test.txt").captions] == ["一个孩子"]


def test_a_run_folder_with_checkpoints_needs_resume(tmp_path, small_models):
    """train.py stops on a run folder with checkpoints unless --resume is given: the check says so first."""
    env = _env(tmp_path, GPT2=str(small_models / "small_gpt2"))
    Path(env["TRAIN"]).parent.mkdir(parents=True)
    synthetic_features(Path(env["TRAIN"]), n_images=4, styled=False)
    synthetic_features(Path(env["VAL"]), n_images=4, styled=False)
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "epoch_1.pt").write_bytes(b"")  # only its name is looked at
    r = _run("train_finetune_gpt2.sh", env)
    assert r.returncode == 2
    assert _items(r.stderr) == [f"run folder that already has checkpoints (train.py would stop): {tmp_path / 'out'}/   "
                                "[OUT=... to use another path]"]
    assert "make: bash scripts/train_finetune_gpt2.sh --resume auto" in r.stderr
    r = _run("train_finetune_gpt2.sh", dict(env, CHECK_ONLY="1"), "--resume", "auto")
    assert r.returncode == 0, r.stderr
