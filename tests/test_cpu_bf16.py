"""Issue 22 item 8: bf16 on the CPU pays only where the CPU has native bf16. The CPU's flags decide: extraction's
--autocast bf16 and training's --precision bf16 warn on a CPU without them, --autocast auto never picks bf16 on the
CPU, and the benchmark records the flags with each run. cpuinfo samples are abridged from real machines."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import process_flickr
import train
from bench.common import machine_info
from stylecap import cpu
from stylecap.cpu import bf16_support, cpu_bf16_warning, read_cpuinfo
from stylecap.extract.image_encoder import autocast_dtype, autocast_warning
from stylecap.train.prepare import precision_warning
from tests.helpers import synthetic_features

_X86 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht "
        "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq ssse3 fma cx16 pcid "
        "sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase "
        "bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw "
        "avx512vl xsaveopt xsavec xgetbv1 xsaves arat pku ospke")


def _cpuinfo(model: str, extra_flags: str, cores: int = 2) -> str:
    """/proc/cpuinfo of ``cores`` identical processors with _X86 + ``extra_flags``."""
    block = ("processor\t: {i}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: {model}\n"
             "cpu MHz\t\t: 2800.000\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n")
    return "".join(block.format(i=i, model=model, flags=f"{_X86} {extra_flags}") for i in range(cores))


# The Xeon of this project where bf16 autocast was 3.46x (extraction) and 1.42x (training) faster: AMX
AMX = _cpuinfo("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
               "avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8")
# The Xeon of this project where it was 0.35x and 0.43x: avx512_vnni, no AMX, no avx512_bf16
NO_BF16 = _cpuinfo("Intel(R) Xeon(R) CPU @ 2.80GHz", "avx512_vnni")
# AMD EPYC (Zen 4): avx512_bf16 without AMX; bf16 matmul measured faster than fp32 here
ZEN4 = _cpuinfo("AMD EPYC 9B14", "avx512_bf16 avx512_vnni avx512vbmi")
ARM_BF16 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 bf16 i8mm\n\n"
ARM_OLD = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n\n"


@pytest.mark.parametrize("text, native", [(AMX, True), (ZEN4, True), (NO_BF16, False), (ARM_BF16, True),
                                          (ARM_OLD, False), ("", None)])
def test_bf16_is_native_only_with_the_flags_that_do_bf16(text, native):
    assert bf16_support(text).native is native


def test_the_flags_that_matter_are_read_and_unknown_elsewhere(tmp_path):
    amx = bf16_support(AMX)
    assert amx.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert amx.flags == {"amx_bf16": True, "amx_tile": True, "avx512_bf16": True, "avx512_vnni": True}
    assert bf16_support(NO_BF16).record() == {"bf16_native": False, "amx_bf16": False, "amx_tile": False,
                                              "avx512_bf16": False, "avx512_vnni": True}
    assert read_cpuinfo(tmp_path / "absent") is None  # not Linux: no /proc/cpuinfo
    unknown = bf16_support("")
    assert unknown.flags is None and unknown.model == "unknown"
    assert unknown.record() == {"bf16_native": None, "amx_bf16": None, "amx_tile": None, "avx512_bf16": None,
                                "avx512_vnni": None}


def test_warning_names_the_reason_and_the_fix_only_without_native_bf16():
    why = cpu_bf16_warning("--autocast bf16", "--autocast none", NO_BF16)
    assert why is not None and "Intel(R) Xeon(R) CPU @ 2.80GHz" in why and "no native bf16" in why
    assert "3x slower than fp32" in why and why.endswith("use --autocast none")
    for text in (AMX, ZEN4, ""):  # native, or nothing known to warn about
        assert cpu_bf16_warning("--autocast bf16", "--autocast none", text) is None


def test_extraction_autocast_bf16_warns_on_a_cpu_without_native_bf16():
    cpu_dev = torch.device("cpu")
    assert "no native bf16" in autocast_warning("bf16", cpu_dev, NO_BF16)
    assert autocast_warning("bf16", cpu_dev, AMX) is None
    assert autocast_warning("bf16", torch.device("cuda"), NO_BF16) is None  # the GPU's bf16 is another matter
    for name in ("none", "fp16", "auto"):
        assert autocast_warning(name, cpu_dev, NO_BF16) is None


def test_extraction_autocast_auto_never_picks_bf16_on_the_cpu():
    """auto: fp16 on CUDA, fp32 on the CPU on every CPU. Even where bf16 is native it stays fp32 by default:
    bf16 changes the features (no longer openai-clip's), and the same command would write other values on
    another machine. --autocast bf16 is the opt-in."""
    for text in (AMX, NO_BF16):
        assert autocast_warning("auto", torch.device("cpu"), text) is None
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.float16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_training_precision_bf16_warns_on_a_cpu_without_native_bf16():
    cpu_dev = torch.device("cpu")
    why = precision_warning("bf16", cpu_dev, NO_BF16)
    assert why is not None and "--precision bf16" in why and why.endswith("use --precision fp32")
    assert precision_warning("bf16", cpu_dev, AMX) is None
    assert precision_warning("fp32", cpu_dev, NO_BF16) is None
    assert precision_warning("bf16", torch.device("cuda"), NO_BF16) is None


def _machine(tmp_path: Path, monkeypatch, text: str) -> None:
    """Make this machine's /proc/cpuinfo read as ``text``."""
    path = tmp_path / f"cpuinfo{abs(hash(text))}"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(cpu, "CPUINFO", path)


def test_process_script_logs_the_bf16_warning_only_on_a_cpu_without_it(small_models, demo_data, tmp_path,
                                                                       monkeypatch):
    fl = demo_data / "flickr30k"
    for name, text in (("no_bf16", NO_BF16), ("amx", AMX)):
        _machine(tmp_path, monkeypatch, text)
        out = tmp_path / f"{name}.pkl"
        assert process_flickr.main([
            "--caption_path", str(fl / "results_20130124.token"), "--image_path", str(fl / "flickr30k-images"),
            "--clip_model_path", str(small_models / "small_clip.pt"), "--output_path", str(out), "--device", "cpu",
            "--batch_size", "4", "--num_workers", "0", "--val_ratio", "0", "--test_ratio", "0", "--limit", "4",
            "--autocast", "bf16"]) == 0
        log = out.with_suffix(".log").read_text()
        assert ("--autocast bf16 on the CPU: this CPU (Intel(R) Xeon(R) CPU @ 2.80GHz) has no native bf16" in log) \
            is (name == "no_bf16"), log


def test_train_logs_the_bf16_warning_on_a_cpu_without_it(small_models, tmp_path, monkeypatch):
    _machine(tmp_path, monkeypatch, NO_BF16)
    data = synthetic_features(tmp_path / "train.pkl", n_images=12)
    out = tmp_path / "run"
    assert train.main(["--data_path", str(data), "--gpt2_path", str(small_models / "small_gpt2"), "--output_path",
                       str(out), "--bs_train", "8", "--bs_eval", "16", "--epochs", "1", "--num_samples", "0",
                       "--eval_subset", "0", "--device", "cpu", "--precision", "bf16"]) == 0
    assert "--precision bf16 on the CPU: this CPU (Intel(R) Xeon(R) CPU @ 2.80GHz) has no native bf16" in \
        (out / "train.log").read_text()


def test_bench_records_the_cpu_flags_with_each_run(tmp_path, monkeypatch):
    _machine(tmp_path, monkeypatch, NO_BF16)
    info = machine_info()
    assert info["cpu"] == "Intel(R) Xeon(R) CPU @ 2.80GHz"
    assert info["cpu_flags"] == {"bf16_native": False, "amx_bf16": False, "amx_tile": False, "avx512_bf16": False,
                                 "avx512_vnni": True}
