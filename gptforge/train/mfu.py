"""Model FLOPs utilisation: achieved model FLOP/s over the device's peak FLOP/s.

MFU = flops_per_token (training: forward + backward, from the model) x tokens/s per device / peak.

Peak: on CUDA, the vendor's dense bf16 tensor-core figure for known GPUs (A100 312, H100/H200
989 TFLOP/s); on CPU (and unknown GPUs), a matmul probe: the best of several short bursts. A
probe taken while other processes load the machine reads low, and an MFU against a low peak
reads high (the same model at the same tokens/s was once 22.8% and 57-62% MFU), so every run
probes again (about a second) and uses the best reading ever seen on this machine: the larger of
the new probe and the one cached in ``$XDG_CACHE_HOME/gptforge/peak_flops.json`` (default
``~/.cache``; keyed by device name, thread count and dtype). A reading is cached only when the
machine was idle (1-minute load average under half a core per thread used), so a busy moment
never becomes the reference. The run's log and the speedrun's report say which peak they used.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.io import atomic_write

# dense bf16 tensor-core peak, FLOP/s (vendor datasheets)
CUDA_PEAK = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptforge" / "peak_flops.json"


def probe_matmul_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024,
                       seconds: float = 1.0) -> float:
    """Best achieved FLOP/s of one n x n matmul on ``device`` over about ``seconds`` of repeats
    (the best single multiply, so that a moment of contention from other processes is skipped)."""
    # its own generator: probing (the first run on a machine) must not move the global RNG that
    # seeds dropout, or a run would differ from a rerun with a cached peak
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


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Peak FLOP/s of one device for MFU (see the module docstring); cached probe on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in CUDA_PEAK.items():
            if key in name:
                return flops
        key = f"cuda:{name}|{dtype}"
    else:
        key = f"{device.type}:{cpu_name()}|threads={torch.get_num_threads()}|{dtype}"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cached = cache.get(key) if isinstance(cache.get(key), (int, float)) else 0.0
    # three bursts the first time; one short check against a cached best after that
    probed = max(probe_matmul_flops(str(device), dtype, seconds=0.3 if not cached else 0.2)
                 for _ in range(1 if cached else 3))
    if probed > cached and machine_idle():
        cache[key] = probed
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(cache, indent=1) + "\n")
        except (OSError, UserError):
            pass  # a read-only home: probe again next time
    return float(max(probed, cached))


def machine_idle() -> bool:
    """True when the 1-minute load average is under half a core per torch thread in use (or
    unknown: no load average on this OS)."""
    try:
        return os.getloadavg()[0] < 0.5 * torch.get_num_threads()
    except OSError:
        return True
