"""The benchmarks' GPU mode, run on the CPU with the small models (its logic, not its figures), and the rule that
every benchmark decode runs in eval mode (issue 8)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import bench, common, cpu_decode, gpu_common, synthetic


def test_gpu_suite_runs_on_cpu_in_quick_mode(tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"mode": "full", "greedy_vs_reference": {"value": 11.0}}))  # CPU figures stay
    assert bench.main(["--gpu-suite", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["greedy_vs_reference"] == {"value": 11.0} and "cuda" not in res
    suite = res["gpu_suite_on_cpu"]
    assert suite["info"]["device"] == "cpu" and suite["info"]["torch"] == torch.__version__ and suite["info"]["date"]
    assert suite["info"]["bf16_matmul_tflops_measured"] > 0
    assert not any("error" in suite[s] for s in ("extraction", "memory", "training", "decoding")), suite
    tr = suite["training"]
    for prec in ("fp32", "bf16", "fp16"):
        f = tr[f"train_tuned_{prec}"]
        assert f["ours"] > 0 and f["baseline"] > 0 and f["value"] == pytest.approx(f["ours"] / f["baseline"], rel=1e-3)
        assert 0 < f["mfu"] < 10
    assert tr["train_frozen_transformer"]["ours"] > 0
    ep = tr["epoch_times"]
    assert ep["coco_epoch_minutes_bf16"]["baseline"] == 42.0 and ep["coco_epoch_minutes_bf16"]["met"] in (True, False)
    # COCO / PersonalityCaptions epochs from the same steps/s: minutes scale with the caption counts
    ratio = ep["coco_epoch_minutes_fp32"]["ours"] / ep["personality_epoch_minutes_fp32"]["ours"]
    assert ratio == pytest.approx(-(-gpu_common.COCO_CAPTIONS // 2) / -(-gpu_common.PERSONALITY_CAPTIONS // 2), rel=1e-2)
    mem = suite["memory"]
    assert len(mem) == 3 and all(m["ours"] is None and "no CUDA" in m["note"] for m in mem.values())
    (ext,) = suite["extraction"].values()
    assert ext["ours"] > 0 and ext["decode_only_images_per_s"] > 0 and ext["limited_by"]
    dec = suite["decoding"]
    assert set(dec) == {"greedy_b2_captions_per_s", "greedy_b4_captions_per_s", "beam_b2_captions_per_s",
                        "beam_b4_captions_per_s"}
    assert all(d["ours"] > 0 and d["baseline"] > 0 for d in dec.values())
    print(suite["stage_seconds"])
    printed = capsys.readouterr().out
    assert "train_tuned_fp16" in printed and "memory_tuned_fp16_b8_accum5_checkpointing" in printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_mode_without_cuda_fails_with_one_line(tmp_path, capsys):
    assert bench.main(["--device", "cuda", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err
    assert not (tmp_path / "r.json").exists()


def test_peak_table_matches_device_names():
    assert gpu_common.peak_table("NVIDIA H100 80GB HBM3")[0] == 989.4
    assert gpu_common.peak_table("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu_common.peak_table("NVIDIA H200")[0] == 989.4
    assert gpu_common.peak_table("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu_common.peak_table("NVIDIA L40S")[0] == 362.1 and gpu_common.peak_table("NVIDIA L4")[0] == 121.0
    assert gpu_common.peak_table("NVIDIA GeForce RTX 4090")[0] == 165.2
    assert gpu_common.peak_table("Tesla V100-SXM2-16GB") == (None, None)  # no bf16: MFU against the measured matmul


def test_benchmark_decodes_run_in_eval_mode(tmp_path):
    """A stop model left in train mode (dropout on) is still decoded in eval mode, and gets its mode back."""
    env = common.Env(quick=True, tmp=Path(tmp_path))
    env.sizes = dict(env.sizes, greedy_n=2, greedy_ref_n=1, beam_n=1, beam_ref_n=1, decode_rounds=1,
                     decode_max_len=4)
    model = env.model(seed=0, finetune_gpt2=True)
    feats, caps = synthetic.stop_training_data(2, seed=0)
    env._stop_model = (model.train(), feats, caps)
    modes = []
    hook = model.gpt.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    cpu_decode.bench_greedy(env)
    cpu_decode.bench_beam(env)
    assert synthetic.ends_like(model, feats, caps) in (True, False)
    hook.remove()
    assert modes and not any(modes)
    assert model.training  # the caller's mode is restored
