"""Issue 19 section 3: blending styles at inference (--style "A:0.7,B:0.3", --style_scale) in the model,
predict.py and app.py, with small random models of the real classes."""
from __future__ import annotations

import json

import pytest
import torch

import app
import predict
from models import ModelConfig, build_model, load_model
from models.blending import StyleBlend, make_blend, style_weights
from models.decoding import DecodeConfig, context_embeds, generate_captions
from stylecap.eval.captioning import parse_style, resolve_styles
from stylecap.utils import UserError
from tests.helpers import STYLES, synthetic_features

CYN = STYLES[2]  # "Cynical (Doubtful, Skeptical)": commas and parentheses in a name
CFG = ModelConfig(gpt2_path="unused", style_mode="embedding", styles=STYLES + ["Mode: 2", "A:1,B", "A", "B"])


# ---- parsing -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, weights", [
    ("Happy:0.7,Gloomy:0.3", {"Happy": 0.7, "Gloomy": 0.3}),
    (f"{CYN}:1,happy:3", {CYN: 0.25, "Happy": 0.75}),               # commas inside a name; case-insensitive
    (" Happy : 1e-1 , Gloomy:.9 ", {"Happy": 0.1, "Gloomy": 0.9}),   # spaces, exponent, leading dot
    ("Mode: 2:0.5,Happy:0.5", {"Mode: 2": 0.5, "Happy": 0.5}),       # a colon and a number inside a name
    ("Happy:7,Gloomy:3", {"Happy": 0.7, "Gloomy": 0.3}),             # normalised to sum to 1
    ("Happy:0.5", {"Happy": 1.0}),
    ("Happy:0.25,happy:0.25,Gloomy:0.5", {"Happy": 0.5, "Gloomy": 0.5}),  # a style named twice: weights add
])
def test_blends_parse_and_weights_are_normalised(spec, weights):
    blend = parse_style(CFG, spec)
    assert isinstance(blend, StyleBlend) and blend.scale == 1.0
    assert dict(blend.weights) == pytest.approx(weights) and sum(w for _, w in blend.weights) == pytest.approx(1.0)


def test_a_whole_style_name_is_that_style_exactly():
    # a plain name stays a plain string (the decoding path of before), whatever it contains
    for spec, name in [("Happy", "Happy"), ("gloomy", "Gloomy"), (CYN, CYN), ("Mode: 2", "Mode: 2"),
                       ("A:1,B", "A:1,B")]:
        assert parse_style(CFG, spec) == name and type(parse_style(CFG, spec)) is str
    assert resolve_styles(CFG, ["happy", "Happy", CYN]) == ["Happy", CYN]
    assert resolve_styles(CFG, ["Happy"], scale=0.5) == [StyleBlend((("Happy", 1.0),), 0.5)]


@pytest.mark.parametrize("spec, message", [
    ("Hapy", r"^unknown style 'Hapy'; closest valid: \['Happy'"),  # as before blends existed
    ("Hapy:0.7,Gloomy:0.3", r"^unknown style 'Hapy' in --style 'Hapy:0.7,Gloomy:0.3'; closest valid: \['Happy'"),
    ("Happy:abc,Gloomy:0.3", r"^weight 'abc' of 'Happy' in --style .* is not a number"),
    ("Happy:0.7,Gloomy", r"^style 'Gloomy' in --style .* has no weight"),
    ("Happy,Gloomy", r"^unknown style 'Happy,Gloomy'.*a blend gives each style a weight"),
    ("Happy:-0.3,Gloomy:1", r"^style weight -0.3 for 'Happy' is not a number >= 0"),
    ("Happy:0,Gloomy:0", r"^the style weights of a blend sum to 0"),
    ("A:1,B:1", r"^--style 'A:1,B:1' reads as more than one blend \(of 'A' \+ 'B' or 'A:1,B'\)"),
])
def test_bad_blends_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as e:
        parse_style(CFG, spec)
    assert "\n" not in str(e.value)


def test_bad_scale_is_refused():
    for scale in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--style_scale .* is not a number >= 0"):
            resolve_styles(CFG, ["Happy"], scale=scale)


# ---- the model: embedding mode -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def styled_model(styled_ckpt):
    return load_model(styled_ckpt)


@pytest.fixture(scope="module")
def feats():
    return torch.randn(2, 512, generator=torch.Generator().manual_seed(1))


def test_scale_0_is_no_style_in_embedding_mode(styled_model, feats):
    """Style "none" in embedding mode: the zero style vector concatenated with the CLIP feature (training
    never uses it; a plain model has no style input at all). Every style at scale 0 is exactly that."""
    m = styled_model
    none = m.clip_project(torch.cat((feats, torch.zeros(2, m.cfg.style_dim)), dim=-1))  # (B, K, E)
    for style in (*STYLES, make_blend([("Happy", 0.7), ("Gloomy", 0.3)])):
        blend = resolve_styles(m, [str(style)], scale=0.0)[0]
        assert torch.equal(context_embeds(m, feats, [blend, blend]), none)  # so: the same captions (predict.py)


def test_scale_1_single_style_equals_the_plain_style(styled_model, feats):
    m = styled_model
    one = make_blend([("Gloomy", 1.0)], 1.0)
    assert torch.equal(context_embeds(m, feats, [one, one]), context_embeds(m, feats, ["Gloomy", "Gloomy"]))
    dc = DecodeConfig("beam", beam_size=3)
    assert generate_captions(m, feats, [one, "Happy"], dc) == generate_captions(m, feats, ["Gloomy", "Happy"], dc)


def test_blend_vector_is_the_weighted_sum_times_the_scale(styled_model):
    m = styled_model
    emb = m.style_embedding.weight  # (S, style_dim)
    half = style_weights(m, [make_blend([("Happy", 1), ("Gloomy", 1)]), make_blend([("Happy", 0.7), (CYN, 0.3)], 2.0)])
    v = m.style_vectors(half)  # (2, style_dim)
    assert torch.allclose(v[0], (emb[0] + emb[1]) / 2, atol=1e-6)  # 50/50: the midpoint
    assert torch.allclose(v[1], 2.0 * (0.7 * emb[0] + 0.3 * emb[2]), atol=1e-6)
    assert torch.equal(m.style_vectors(torch.tensor([2, 0])), emb[[2, 0]])  # ids: the embedding's rows, as before


# ---- token and prompt modes ----------------------------------------------------------------------------------
def small_model(small_models, mode: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(gpt2_path=str(small_models / "small_gpt2"), style_mode=mode, styles=STYLES,
                                   num_layers=2, max_len=6)).eval()


def test_token_mode_blends_the_style_token_embeddings(small_models, feats):
    m = small_model(small_models, "token")
    table = m.style_token_embedding.weight  # (S, E)
    k = m.cfg.prefix_len
    plain = context_embeds(m, feats, ["Happy", "Gloomy"])  # (B, K + 1, E)
    mixed = context_embeds(m, feats, [make_blend([("Happy", 1), ("Gloomy", 1)]), make_blend([("Gloomy", 1)], 0.0)])
    assert torch.equal(mixed[:, :k], plain[:, :k])  # the prefix has no style in token mode
    assert torch.allclose(mixed[0, k], (table[0] + table[1]) / 2, atol=1e-6)  # the midpoint token
    assert torch.equal(mixed[1, k], torch.zeros_like(table[0]))  # scale 0: a zero token embedding
    one = make_blend([("Gloomy", 1.0)])
    assert torch.equal(context_embeds(m, feats, [one, one]), context_embeds(m, feats, ["Gloomy", "Gloomy"]))
    assert len(generate_captions(m, feats, [one, "Happy"])) == 2


def test_prompt_mode_refuses_blends_and_scales(small_models, feats):
    cfg = ModelConfig(gpt2_path="unused", style_mode="prompt", styles=STYLES)
    assert resolve_styles(cfg, ["happy"]) == ["Happy"]  # plain styles as before
    with pytest.raises(UserError, match="^a style blend or --style_scale needs a model with style_mode embedding "
                                        "or token; this model's style_mode prompt"):
        resolve_styles(cfg, ["Happy:0.5,Gloomy:0.5"])
    with pytest.raises(UserError, match="^--style_scale needs a model with style_mode embedding or token"):
        resolve_styles(cfg, ["Happy"], scale=2.0)
    m = small_model(small_models, "prompt")
    with pytest.raises(UserError, match="style_mode prompt"):  # and the decoder refuses one handed in directly
        generate_captions(m, feats, [make_blend([("Happy", 1)], 2.0)] * 2)
    demo = app.Demo(m, None, None, torch.device("cpu"))  # the app: no blend controls, and refused if sent
    assert not demo.can_blend and demo.chosen_styles(["happy"], False) == ["Happy"]
    for strength, second in ((2.0, ""), (1.0, "Gloomy")):
        with pytest.raises(UserError, match="style_mode prompt"):
            demo.chosen_styles(["Happy"], False, strength, second, 0.5)


# ---- predict.py ----------------------------------------------------------------------------------------------
def run_predict(ckpt, feature_file, out, *flags) -> list[dict]:
    assert predict.main(["--model_path", str(ckpt), "--features", str(feature_file), "--output_path", str(out),
                         *flags]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predict_records_the_blend(styled_ckpt, tmp_path):
    f = synthetic_features(tmp_path / "f.pkl", n_images=2)
    preds = run_predict(styled_ckpt, f, tmp_path / "a", "--style", "Happy", "--style", "Happy:1",
                        "--style", f"happy:0.7,{CYN}:0.3")
    by = {}
    for p in preds:
        by.setdefault(json.dumps([p.get("style_blend"), p["style"]]), []).append(p)
    plain, one, blend = (by[json.dumps(k)] for k in ([None, "Happy"], [{"Happy": 1.0}, "Happy"],
                                                      [{"Happy": 0.7, CYN: 0.3}, f"Happy:0.7,{CYN}:0.3"]))
    assert all(list(p) == ["image", "style", "caption", "score"] for p in plain)  # the keys of before
    assert all(p["style_scale"] == 1.0 for p in one + blend)
    assert [p["caption"] for p in one] == [p["caption"] for p in plain]  # Happy:1 at scale 1 is Happy
    txt = (tmp_path / "a" / "caption_generate.txt").read_text()
    assert f"\tHappy:0.7,{CYN}:0.3\t" in txt  # several styles: the style column holds the blend's label


def test_predict_style_scale(styled_ckpt, tmp_path):
    f = synthetic_features(tmp_path / "f.pkl", n_images=2)
    preds = run_predict(styled_ckpt, f, tmp_path / "a", "--style", "Happy", "--style", "Gloomy", "--style_scale", "0")
    assert {(p["style"], p["style_scale"], json.dumps(p["style_blend"])) for p in preds} == {
        ("Happy", 0.0, '{"Happy": 1.0}'), ("Gloomy", 0.0, '{"Gloomy": 1.0}')}
    happy = [p["caption"] for p in preds if p["style"] == "Happy"]
    assert happy == [p["caption"] for p in preds if p["style"] == "Gloomy"]  # no style left: the same captions
    own = run_predict(styled_ckpt, f, tmp_path / "b", "--style_scale", "2")  # each image's own style, scaled
    assert [(p["style"], p["style_scale"]) for p in own] == [(STYLES[0], 2.0), (STYLES[0], 2.0)]
    with pytest.raises(UserError, match="--style_scale -1 is not a number >= 0"):
        run_predict(styled_ckpt, f, tmp_path / "c", "--style", "Happy", "--style_scale", "-1")


# ---- app.py --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(small_models, styled_ckpt, styled_model):
    from stylecap.eval.captioning import load_clip_for
    clip_model, preprocess = load_clip_for(styled_model, str(small_models / "small_clip.pt"), "cpu", styled_ckpt)
    return app.Demo(styled_model, clip_model, preprocess, torch.device("cpu"), batch_size=64, max_images=4)


def test_app_strength_and_second_style(demo, demo_data):
    image = [str(sorted((demo_data / "personality" / "yfcc_images").glob("*.jpg"))[0])]
    read = lambda jsonl: [json.loads(line) for line in open(jsonl, encoding="utf-8")]
    default = read(demo.caption(image, ["Happy", "Gloomy"])[2])
    assert all(list(p) == ["image", "style", "caption", "score"] for p in default)  # defaults: as before
    assert read(demo.caption(image, ["Happy", "Gloomy"], strength=1.0, mix_style="", mix_weight=0.5)[2]) == default
    status, page, jsonl = demo.caption(image, ["Happy", "Gloomy"], strength=1.5, mix_style=CYN, mix_weight=0.25)
    preds = read(jsonl)
    assert [(p["style"], p["style_blend"], p["style_scale"]) for p in preds] == [
        (f"Happy:0.75,{CYN}:0.25", {"Happy": 0.75, CYN: 0.25}, 1.5),
        (f"Gloomy:0.75,{CYN}:0.25", {"Gloomy": 0.75, CYN: 0.25}, 1.5)]
    assert "2 captions for 1 image × 2 styles" in status and "strength 1.5" in page
    zero = read(demo.caption(image, ["Happy", "Gloomy"], strength=0.0)[2])
    assert zero[0]["caption"] == zero[1]["caption"] and zero[0]["style_scale"] == 0.0
    status, _, jsonl = demo.caption(image, ["Happy"], mix_style="Hapy")
    assert "Error: unknown style 'Hapy'" in status and jsonl is None
    status, _, _ = demo.caption(image, ["Happy"], mix_style="Gloomy", mix_weight=1.5)
    assert "Error: the second style's weight 1.5 is not between 0 and 1" in status


def test_app_page_has_the_blend_controls(demo):
    gr = pytest.importorskip("gradio")
    page = app.build_ui(demo, [])
    blocks = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
    strength, mix = blocks["sc-strength"], blocks["sc-mix-style"]
    assert strength.value == 1.0 and (strength.minimum, strength.maximum) == (0, 3)
    assert mix.value == "" and mix.choices == [("none", "")] + [(s, s) for s in STYLES]
    assert blocks["sc-mix-weight"].value == 0.5
    accordion = next(b for b in page.blocks.values() if isinstance(b, gr.Accordion) and "blending" in b.label)
    assert accordion.visible and not accordion.open  # closed: the page looks as before until opened


def test_eval_mode_style_scale(styled_ckpt, tmp_path):
    """train.py --mode eval (= evaluate.py --model_path): each image in its own style, at --style_scale; the
    scale is recorded with the decoding, where compare.py and the report's command read it."""
    import train
    f = synthetic_features(tmp_path / "test.pkl", n_images=3)
    out = tmp_path / "eval"
    assert train.main(["--mode", "eval", "--model_path", str(styled_ckpt), "--data_path", str(f), "--output_path",
                       str(out), "--no_java", "--train_captions", str(f), "--style_scale", "0.5"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(p["style"], p["style_blend"], p["style_scale"]) for p in preds] == [(STYLES[0], {STYLES[0]: 1.0}, 0.5)] * 3
    assert json.loads((out / "eval_config.json").read_text())["decode"]["style_scale"] == 0.5
    assert "--style_scale 0.5" in (out / "report.html").read_text()


def test_style_sweep_script(styled_ckpt, tmp_path, capsys):
    from scripts import style_sweep
    f = synthetic_features(tmp_path / "f.pkl", n_images=2)
    assert style_sweep.main(["--model_path", str(styled_ckpt), "--features", str(f), "--styles", "Happy", "Gloomy",
                             "--weights", "1", "0.5", "0", "--scales", "0", "--markers", "yay", "sad"]) == 0
    rows = [ln.split(" | ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("| `")]
    assert [r[0] for r in rows] == ["| `Happy`", "| `Happy:0.5,Gloomy:0.5`", "| `Gloomy`", "| `Happy x0`"]
    assert rows[0][1] == "100%" and rows[2][2] == "100%"  # A alone is A's caption, B alone B's
