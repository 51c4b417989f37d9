"""Does this CPU run bf16 natively? The answer decides whether bf16 autocast on the CPU is worth it.

Measured with `make bench` (docs/performance.md): on an Intel Xeon with AMX (amx_bf16, amx_tile) bf16 autocast
made extraction 3.46x and training 1.42x faster than fp32; on an Intel Xeon with avx512_vnni but neither AMX nor
avx512_bf16 the same runs were 0.35x and 0.43x, about 3 times *slower*: torch then emulates bf16 (converting to
fp32 and back around every op). So the flags, not the CPU vendor or torch's own capability string, decide:

- ``amx_bf16`` (AMX tiles, Sapphire Rapids and later) or ``avx512_bf16`` (VDPBF16PS: Cooper Lake, AMD Zen 4 and
  later) on x86, ``bf16`` in the Features line on Arm: native;
- none of them: not native (``avx512_vnni`` is recorded, it is an int8 instruction and does not make bf16 native);
- no /proc/cpuinfo (macOS, Windows): unknown, and no advice is given.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")  # read at each call (Linux); elsewhere absent: "unknown"

# the x86 flags recorded with every benchmark run; the first two and avx512_bf16 make bf16 native
RECORDED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni")
NATIVE_BF16 = ("amx_bf16", "avx512_bf16", "bf16")  # "bf16": Arm's Features line (FEAT_BF16)

# what "not native" cost where it was measured (make bench, bf16 autocast / fp32): see the module docstring
SLOWDOWN_NOTE = "about 3x slower than fp32 on such a CPU (measured: extraction 0.35x, training 0.43x)"


@dataclass(frozen=True)
class CpuBf16:
    """What the CPU's flags say about bf16. ``native``: True / False, or None when the flags are unknown."""
    native: bool | None
    model: str                      # "model name" of the first processor, or "unknown"
    flags: dict[str, bool] | None   # RECORDED_FLAGS -> present; None when unknown

    def record(self) -> dict:
        """For results files: {"bf16_native": ..., "amx_bf16": ..., ...} (None values when unknown)."""
        flags = self.flags or {}
        return {"bf16_native": self.native, **{f: flags.get(f) for f in RECORDED_FLAGS}}


def read_cpuinfo(path: str | Path | None = None) -> str | None:
    """The text of /proc/cpuinfo (or ``path``), or None where there is none (not Linux) or it cannot be read."""
    try:
        return Path(path or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """{field: value} of the first processor block (all cores of one machine report the same flags)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def bf16_support(cpuinfo: str | None = None) -> CpuBf16:
    """Parse ``cpuinfo`` (the text of /proc/cpuinfo; None: read this machine's) into a CpuBf16."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    fields = _first_processor(cpuinfo or "")
    line = fields.get("flags", fields.get("features"))  # x86: flags; Arm: Features
    model = fields.get("model name", "unknown")
    if line is None:
        return CpuBf16(native=None, model=model, flags=None)
    have = set(line.split())
    return CpuBf16(native=any(f in have for f in NATIVE_BF16), model=model,
                   flags={f: f in have for f in RECORDED_FLAGS})


def cpu_bf16_warning(option: str, instead: str, cpuinfo: str | None = None) -> str | None:
    """The warning for ``option`` (e.g. "--autocast bf16") run on this CPU, or None when bf16 is native here or
    the flags are unknown. ``instead``: the option to use instead (e.g. "--autocast none")."""
    cpu = bf16_support(cpuinfo)
    if cpu.native is not False:
        return None
    return (f"{option} on the CPU: this CPU ({cpu.model}) has no native bf16 (no amx_bf16 or avx512_bf16 in "
            f"/proc/cpuinfo), so torch emulates it and bf16 autocast runs {SLOWDOWN_NOTE}; use {instead}")


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside (as each torchrun rank with OMP_NUM_THREADS=1), the caller's count restored
    after. Other thread counts change the float32 summation order inside matrix products, and so the last bits."""
    import torch  # here: the rest of this module reads /proc/cpuinfo and needs no torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
