"""Issue 12 item 3: validation and `train.py --mode eval` split the images across torchrun ranks and give
exactly what one process gives (2 gloo ranks on the CPU, small models)."""
from __future__ import annotations

import json

import pytest
import torch

import train
from models import load_model
from stylecap.train.data import CaptionDataset, encode_data
from stylecap.cpu import one_thread
from stylecap.distributed import batch_share
from stylecap.train.engine import evaluate_loss
from stylecap.eval.evaluation import quick_caption_metrics
from stylecap.features import load_features
from tests.helpers import synthetic_features
from tests.test_train import _torchrun, base_args


def test_batch_share_gives_each_rank_whole_batches_in_order():
    """Ranks get contiguous blocks of the batches one process makes (so every batch is the same), which
    together cover every item once, in order; ranks beyond the number of batches get none."""
    for n, bs, world in [(13, 4, 2), (12, 4, 3), (5, 4, 4), (0, 4, 2), (100, 7, 8)]:
        shares = [batch_share(n, bs, r, world) for r in range(world)]
        assert [i for _, lo, hi in shares for i in range(lo, hi)] == list(range(n))
        for first, lo, hi in shares:
            assert lo == min(first * bs, n)  # starts on a batch boundary of one process
        sizes = [-(-(hi - lo) // bs) for _, lo, hi in shares]
        assert max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def trained(small_models, tmp_path_factory):
    """A checkpoint trained briefly (captions end at various lengths) and a 13-image val file."""
    tmp = tmp_path_factory.mktemp("ddp_eval")
    data = synthetic_features(tmp / "train.pkl", n_images=24)
    val = synthetic_features(tmp / "val.pkl", n_images=13, seed=1)
    assert train.main(base_args(small_models, data, tmp / "run", "--epochs", "2", "--val_path", str(val))) == 0
    return tmp / "run" / "checkpoints" / "last.pt", val


@pytest.mark.parametrize("decode", [[], ["--decode", "sample", "--topk", "3", "--num_generate", "2"]],
                         ids=["greedy", "sample"])
def test_eval_mode_on_two_ranks_equals_one_process(trained, tmp_path, decode):
    """predictions.jsonl (captions, scores, order) and metrics.json of `torchrun --nproc_per_node 2 train.py
    --mode eval` are those of one process; sampling too (each batch has its own seed from --seed)."""
    ckpt, val = trained
    argv = lambda out: ["--mode", "eval", "--model_path", str(ckpt), "--data_path", str(val), "--output_path",
                        str(out), "--no_java", "--bs_eval", "4", "--device", "cpu", "--seed", "5", *decode]
    with one_thread():
        assert train.main(argv(tmp_path / "one")) == 0
    _torchrun(argv(tmp_path / "two"))
    one, two = (tmp_path / "one" / "predictions.jsonl").read_text(), (tmp_path / "two" / "predictions.jsonl").read_text()
    assert len(one.splitlines()) == 13 * (2 if decode else 1) and one == two
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text().replace(str(tmp_path / d), "OUT"))
              for d in ("one", "two"))  # the same but for the output folder named in "inputs"
    assert m1["CIDEr"] > 0 and m1 == m2
    assert "captioning 13 items on 2 processes; rank 0 does items 0-7" in (tmp_path / "two" / "eval.log").read_text()
    assert (tmp_path / "two" / "report.html").is_file()


def test_ddp_validation_metrics_equal_one_process(small_models, trained, tmp_path):
    """Two ranks share the epoch-end validation (val loss over the whole val set, captions of every
    image); what they record equals one process's validation of the same weights."""
    _, val = trained
    data = synthetic_features(tmp_path / "train.pkl", n_images=24)
    out = tmp_path / "run"
    _torchrun(base_args(small_models, data, out, "--epochs", "2", "--val_path", str(val), "--device", "cpu")
              + ["--eval_subset", "100", "--bs_eval", "4", "--bs_train", "4"])  # 3 steps an epoch: it learns
    logged = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["train_state"]["history"][-1]

    model = load_model(out / "checkpoints" / "last.pt", str(small_models / "small_gpt2"), torch.device("cpu"))
    val_data = load_features(val)
    ds = CaptionDataset(val_data["clip_embedding"], encode_data(val_data, model.tokenizer, 64, None, None))
    with one_thread():
        loss = evaluate_loss(model, train.make_loader(ds, 4, model.tokenizer.pad_id), device=torch.device("cpu"))
        caps = quick_caption_metrics(model, val_data, 100, 4)
    assert caps["CIDEr"] > 0 and {k: logged[k] for k in caps} == pytest.approx(caps, rel=1e-9, abs=1e-12)
    assert logged["tokens"] == loss["tokens"] and logged["loss"] == pytest.approx(loss["loss"], rel=1e-9)
    log = (out / "train.log").read_text()
    assert f"val CIDEr {caps['CIDEr']:.4f}" in log
    assert "captioning 13 items on 2 processes; rank 0 does items 0-7" in log  # rank 1 captioned the rest
