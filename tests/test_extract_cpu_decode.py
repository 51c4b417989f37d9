"""Issue 12 item 4: on the CPU, extraction decodes each batch with a thread pool between encoder batches
(no DataLoader worker processes competing with the encoder's threads). Same batches, same features."""
from __future__ import annotations

import clip
import torch
from torch.utils.data import dataloader

from stylecap.clip_utils import load_clip, open_image
from stylecap.demo.photos import photo_like, save_jpeg
from stylecap.extract.image_encoder import extract_features


def _images(tmp_path) -> list[str]:
    paths = [str(save_jpeg(photo_like(i, 320 + 16 * i, 240), tmp_path / f"{i}.jpg")) for i in range(7)]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths.insert(3, str(tmp_path / "bad.jpg"))  # a bad image mid-batch is skipped and reported
    paths.insert(5, str(tmp_path / "missing.jpg"))
    return paths


def test_cpu_threads_equal_serial_and_openai_clip(small_models, tmp_path, monkeypatch):
    model, preprocess, info = load_clip(str(small_models / "small_clip.pt"))
    paths = _images(tmp_path)
    serial = extract_features(paths, model, preprocess, batch_size=3, num_workers=0)
    started = []
    real_init = dataloader._MultiProcessingDataLoaderIter.__init__
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__",
                        lambda self, *a, **k: started.append(1) or real_init(self, *a, **k))
    threaded = extract_features(paths, model, preprocess, batch_size=3, num_workers=2)
    assert not started, "CPU extraction started DataLoader worker processes"
    assert torch.equal(threaded[0], serial[0]) and threaded[1:] == serial[1:]
    emb, ok, bad = threaded
    assert ok == [0, 1, 2, 4, 6, 7, 8] and [i for i, _ in bad] == [3, 5]
    assert "not a readable image" in bad[0][1] and bad[1][1] == "missing file"
    ref_tf = clip.clip._transform(info["input_resolution"])
    with torch.inference_mode():  # openai-clip's own feature of each image, one at a time
        ref = torch.cat([model.encode_image(ref_tf(open_image(paths[i])).unsqueeze(0)) for i in ok])
    assert float((emb - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
