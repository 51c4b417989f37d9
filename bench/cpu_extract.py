"""CPU extraction figures: stylecap.extract.image_encoder.extract_features (+ save_features) vs the bare CLIP
encoder and vs ClipCap's parse_coco loop (bench/reference.py), fp32 and bf16."""
from __future__ import annotations

import time

import torch

from bench import reference
from bench.common import Env, entry, median, rounded
from bench.synthetic import make_images
from stylecap.clip_utils import load_image
from stylecap.extract.image_encoder import default_workers, extract_features
from stylecap.features import save_features


def bench_extract(env: Env) -> list[tuple[str, dict]]:
    s = env.sizes
    model, preprocess = env.clip()
    paths = make_images(env.tmp / "images", s["extract_images"])
    bs = s["extract_bs"]
    workers = default_workers()
    out_file = env.tmp / "features.pt"

    def ours(autocast: str) -> float:
        t = time.perf_counter()
        emb, ok, bad = extract_features([str(p) for p in paths], model, preprocess, batch_size=bs,
                                        num_workers=workers, device="cpu", autocast=autocast)
        caps = [{"image_id": paths[i].stem, "caption": f"caption {j} of image {i}", "clip_embedding": r}
                for r, i in enumerate(ok) for j in range(5)]
        save_features(out_file, {"clip_embedding": emb, "captions": caps, "meta": {}})
        dt = time.perf_counter() - t
        assert not bad and len(ok) == len(paths)
        return dt

    pre = torch.stack([preprocess(load_image(p)) for p in paths])  # preloaded tensors for the bare encoder

    @torch.inference_mode()
    def encoder(bf16: bool) -> float:
        t = time.perf_counter()
        for i in range(0, len(pre), bs):
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model.encode_image(pre[i:i + bs])
            else:
                model.encode_image(pre[i:i + bs])
        return time.perf_counter() - t

    n_ref = s["extract_ref_images"]
    records = [{"image_path": str(p), "image_id": p.stem, "caption": f"caption {j} of image {p.stem}"}
               for p in paths[:n_ref] for j in range(5)]  # 5 captions per image, as Flickr30k / COCO

    def ref(recs=records) -> float:
        t = time.perf_counter()
        reference.reference_extract(model, preprocess, recs, out_path=env.tmp / "ref_features.pkl")
        return time.perf_counter() - t

    encoder(False), encoder(True), ref(records[:2])  # warm-up
    t_enc, t_ext, t_enc16, t_ext16, t_ref = [], [], [], [], []
    for _ in range(s["extract_repeats"]):  # interleaved
        t_enc.append(encoder(False))
        t_ext.append(ours("none"))
        t_ref.append(ref())
        t_enc16.append(encoder(True))
        t_ext16.append(ours("bf16"))
    n = len(paths)
    ips_enc, ips_ext, ips_ref = n / median(t_enc), n / median(t_ext), n_ref / median(t_ref)
    ips_enc16, ips_ext16 = n / median(t_enc16), n / median(t_ext16)
    size = f"{'small CLIP (2 layers, 64 wide)' if env.quick else 'ViT-B/32'} (random weights)"
    return [
        ("extract_vs_encoder", entry(
            "extract_vs_encoder", ips_ext, ips_enc, "images/s",
            f"stylecap.extract.image_encoder.extract_features ({workers} threads decoding 500x375 JPEGs + CLIP preprocessing "
            f"between encoder batches (the CPU path), batch {bs}, fp32) + save_features (5 caption records per image) vs the bare "
            f"encode_image on preloaded preprocessed tensors, batch {bs}, fp32; {n} images, {size}; median of "
            f"{len(t_ext)} interleaved runs. bf16 autocast: extraction {ips_ext16:.1f} vs encoder {ips_enc16:.1f} "
            f"images/s = {ips_ext16 / ips_enc16:.3f}.",
            value_bf16=round(ips_ext16 / ips_enc16, 4),
            runs_s={"extraction": rounded(t_ext), "encoder": rounded(t_enc)})),
        ("extract_vs_reference", entry(
            "extract_vs_reference", ips_ext, ips_ref, "images/s",
            f"our extraction (above, fp32 = the CPU default) vs ClipCap's parse_coco: one caption record at a time, "
            f"its image decoded in full, preprocessed and encoded (batch 1, fp32) again for each of its 5 captions; "
            f"{n_ref} images x 5 captions (the first {n_ref} of ours). With bf16 autocast ours is "
            f"{ips_ext16 / ips_ref:.1f}x.",
            value_bf16=round(ips_ext16 / ips_ref, 4),
            runs_s={"extraction": rounded(t_ext), "reference": rounded(t_ref)})),
        ("extract_bf16_vs_fp32", entry(
            "extract_bf16_vs_fp32", ips_ext16, ips_ext, "images/s",
            f"extraction with --autocast bf16 vs fp32 (none), same images; bare encoder bf16/fp32: "
            f"{ips_enc16 / ips_enc:.3f}.", encoder_bf16_vs_fp32=round(ips_enc16 / ips_enc, 4))),
    ]

