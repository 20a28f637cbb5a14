"""Model FLOPs utilisation: achieved model FLOP/s over the device's theoretical peak FLOP/s.

MFU = flops_per_token (training: forward + backward, from the model) x tokens/s per device / peak.

The peak is the hardware's, never a measurement (a measurement taken while other processes load
the machine reads low, and an MFU against it reads high: the demo of 2026-12-04 printed 61-78%
against a probe of 0.07 TFLOP/s on a processor whose peak is 0.144):

- CUDA: the vendor's dense bf16 tensor-core figure for known GPUs (``CUDA_PEAK``: A100 312,
  H100/H200 989 TFLOP/s); an unknown GPU has no MFU.
- CPU: cores x clock x FLOPs per cycle per core (``cpu_peak``): cores are the torch threads, at most
  the physical cores; the clock is the maximum from cpufreq, else the GHz in the model name, else
  ``cpu MHz`` (a virtual machine's nominal clock); FLOPs per cycle follow the instruction set in
  the ``flags`` (two FMA units per core: AVX-512 64 fp32, AVX2 with FMA 32, AVX 16, SSE 8; bf16:
  AMX 2048, AVX512-BF16 128, else the fp32 figure, as bf16 is then computed in fp32); AMD's Zen 4
  (family 25 with AVX-512) runs AVX-512 on 256-bit units, half those figures.

Beside it, a short n x n matmul probe gives what this machine reaches now ("achievable"); a probe
faster than the computed CPU peak shows the clock was read low (a VM's nominal ``cpu MHz`` under
turbo), and the peak is raised to the probe's figure so that no MFU exceeds 100%. An MFU
above 60% of the peak, or above the achievable fraction, gets a reason from ``mfu_caveat``.
"""

from __future__ import annotations

import functools
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# dense bf16 tensor-core peak, FLOP/s (vendor datasheets)
CUDA_PEAK = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}

# FLOPs per cycle per core, first matching ISA flag wins: (flag, fp32, fp32 ISA, bf16, bf16 ISA); two
# FMA units per core (ARM: two 128-bit NEON units assumed)
CPU_ISA = (("amx_bf16", 64, "AVX-512", 2048, "AMX-BF16"), ("avx512_bf16", 64, "AVX-512", 128, "AVX512-BF16"),
           ("avx512f", 64, "AVX-512", 64, "AVX-512, bf16 in fp32"),
           ("fma", 32, "AVX2 + FMA", 32, "AVX2 + FMA, bf16 in fp32"), ("avx", 16, "AVX", 16, "AVX"),
           ("sse2", 8, "SSE2", 8, "SSE2"), ("asimd", 16, "ARM NEON", 16, "ARM NEON"))
MAX_PLAUSIBLE_MFU = 0.6  # above this fraction of the theoretical peak, an MFU needs a reason


@dataclass
class Peak:
    """A device's peak FLOP/s for MFU.

    flops: the MFU denominator, FLOP/s per device (None: unknown, no MFU).
    how: how ``flops`` was found, one line for the log.
    achievable: the best n x n matmul FLOP/s the probe saw (None: not probed).
    clock_source: where a CPU's clock came from (why an MFU may read high), "" otherwise.
    """

    flops: float | None
    how: str
    achievable: float | None = None
    clock_source: str = ""


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    blocks = _cpuinfo_fields(_read("/proc/cpuinfo") or "")
    name = blocks[0].get("model name") if blocks else None
    return name or platform.processor() or platform.machine() or "unknown-cpu"


def _cpuinfo_fields(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo text -> one dict per processor block."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware: AMX-BF16 or AVX512-BF16 in the ``flags`` of
    ``cpuinfo`` (the text of /proc/cpuinfo; read from there when None; False where it cannot be
    read). There bf16 autocast trains faster than fp32; elsewhere torch computes bf16 in fp32 and
    autocast only adds casts (bench/README.md, "bf16 autocast on a CPU with native bf16")."""
    blocks = _cpuinfo_fields((_read("/proc/cpuinfo") or "") if cpuinfo is None else cpuinfo)
    native = {flag for flag, fp32, _, bf16, _ in CPU_ISA if bf16 > fp32}  # amx_bf16, avx512_bf16
    return bool(blocks and native & _flags(blocks[0]))


def _flags(block: dict[str, str]) -> set[str]:
    """The instruction-set flags of one /proc/cpuinfo processor block (x86 ``flags``, ARM ``Features``)."""
    return set((block.get("flags") or block.get("Features") or "").split())


def cpu_peak(cpuinfo: str, threads: int, dtype: torch.dtype = torch.float32,
             max_freq_khz: str | None = None) -> tuple[float | None, str, str]:
    """(peak FLOP/s, how it was computed, clock source) of ``threads`` cores from /proc/cpuinfo text.

    ``max_freq_khz``: the contents of cpufreq's ``cpuinfo_max_freq`` (kHz), None when absent.
    Returns (None, why, "") when the clock or the instruction set cannot be read.
    """
    blocks = _cpuinfo_fields(cpuinfo)
    if not blocks:
        return None, "no /proc/cpuinfo: the CPU's peak is unknown", ""
    first = blocks[0]
    physical = {(b.get("physical id"), b.get("core id")) for b in blocks}
    n_physical = len(physical) if all("core id" in b for b in blocks) else len(blocks)
    cores = max(1, min(threads, n_physical))
    name = first.get("model name", "")
    ghz_in_name = re.search(r"@\s*([\d.]+)\s*GHz", name)
    if max_freq_khz and max_freq_khz.strip().isdigit():
        ghz, source = int(max_freq_khz) / 1e6, "cpufreq cpuinfo_max_freq"
    elif ghz_in_name:
        ghz, source = float(ghz_in_name.group(1)), "the model name"
    elif "cpu MHz" in first:
        ghz, source = float(first["cpu MHz"]) / 1e3, "'cpu MHz' in /proc/cpuinfo (base or current clock)"
    else:
        return None, "no clock in /proc/cpuinfo or cpufreq: the CPU's peak is unknown", ""
    flags = _flags(first)
    bf16 = dtype == torch.bfloat16
    for flag, fp32_per_cycle, fp32_isa, bf16_per_cycle, bf16_isa in CPU_ISA:
        if flag in flags:
            per_cycle, isa = (bf16_per_cycle, bf16_isa) if bf16 else (fp32_per_cycle, fp32_isa)
            break
    else:
        return None, "instruction set not recognised in /proc/cpuinfo flags: the CPU's peak is unknown", ""
    zen4 = first.get("vendor_id") == "AuthenticAMD" and first.get("cpu family") == "25"
    if zen4 and flag.startswith("avx512"):  # Zen 4 runs each 512-bit instruction as two 256-bit halves
        per_cycle, isa = per_cycle // 2, isa + " on Zen 4's 256-bit units"
    kind = "bf16" if bf16 else "fp32"
    peak = cores * ghz * 1e9 * per_cycle
    how = (f"{cores} core(s) x {ghz:.2f} GHz (from {source}) x {per_cycle} {kind} FLOPs/cycle ({isa}) "
           f"= {peak / 1e12:.3f} TFLOP/s")
    return peak, how, source


def probe_matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024,
                       seconds: float = 1.0) -> float:
    """Best achieved FLOP/s of one n x n matmul on ``device`` over about ``seconds`` of repeats
    (the best single multiply, so that a moment of contention from other processes is skipped)."""
    # its own generator: probing must not move the global RNG that seeds dropout
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b  # warm up
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


@functools.lru_cache(maxsize=8)
def _device_peak(device: str, dtype: torch.dtype, threads: int) -> Peak:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, flops in CUDA_PEAK.items():
            if key in name:
                return Peak(flops, f"{name}: datasheet dense bf16 peak {flops / 1e12:.0f} TFLOP/s")
        return Peak(None, f"{name}: no datasheet peak known, so no MFU")
    if dev.type != "cpu":
        return Peak(None, f"{dev.type}: no peak known, so no MFU")
    flops, how, source = cpu_peak(_read("/proc/cpuinfo") or "", threads, dtype,
                                  _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    achievable = probe_matmul_flops("cpu", dtype, seconds=0.3)
    if flops and achievable > flops:  # the clock read is below the (turbo) clock the matmul ran at
        how += (f"; raised to the {achievable / 1e12:.3f} TFLOP/s a matmul reached, as the clock from "
                f"{source} is below the clock it ran at")
        flops = achievable
    return Peak(flops, f"CPU ({cpu_name()}): {how}", achievable, source)


def device_peak(device: torch.device | str, dtype: torch.dtype = torch.float32) -> Peak:
    """The peak of one device (module docstring), probed once per process, device, dtype and
    thread count."""
    return _device_peak(str(torch.device(device)), dtype, torch.get_num_threads())


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float | None:
    """Theoretical peak FLOP/s of one device for MFU (None: unknown); see ``device_peak``."""
    return device_peak(device, dtype).flops


def describe_peak(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """One line for the log: the MFU denominator, how it was computed and what is achievable."""
    p = device_peak(device, dtype)
    line = f"MFU against {p.how}" if p.flops else p.how
    if p.achievable:
        share = f", {p.achievable / p.flops:.0%} of the peak" if p.flops else ""
        line += f"; achievable: a 1024^3 matmul reaches {p.achievable / 1e12:.3f} TFLOP/s here now{share}"
    return line


def mfu_caveat(mfu: float | None, p: Peak) -> str:
    """Why an MFU (a fraction of ``p.flops``) reads implausibly high, "" when it does not: above
    ``MAX_PLAUSIBLE_MFU`` of the theoretical peak, or above the achievable (the probe's share)."""
    if mfu is None or not p.flops:
        return ""
    reasons = []
    if mfu > MAX_PLAUSIBLE_MFU:
        why = ("the clock was read from " + p.clock_source + ", and turbo clocks run faster, so the peak "
               "is understated" if "MHz" in p.clock_source else
               "the model's FLOPs per token may overcount the work, or the clock ran above its maximum")
        reasons.append(f"above {MAX_PLAUSIBLE_MFU:.0%} of the theoretical peak ({why})")
    if p.achievable and mfu > p.achievable / p.flops:
        reasons.append(f"above what the matmul probe reached ({p.achievable / p.flops:.0%} of the peak; the "
                       "probe reads low when other processes load the machine)")
    return f"MFU {mfu:.1%} is " + " and ".join(reasons) if reasons else ""
