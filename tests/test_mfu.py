"""MFU's peak: the processor's theoretical FLOP/s from /proc/cpuinfo (patched texts of known CPUs),
the matmul probe only as "achievable", and a reason printed for an implausible MFU."""

import torch

from gptforge.train import mfu

FLAGS_AVX2 = "fpu sse sse2 ssse3 fma avx avx2 f16c"
FLAGS_AVX512 = FLAGS_AVX2 + " avx512f avx512dq avx512bw avx512vl"


def cpuinfo(n: int, model: str, flags: str, mhz: str = "2250.000", hyperthreads: bool = False) -> str:
    """/proc/cpuinfo text of ``n`` logical processors; with ``hyperthreads``, two per core
    (processors 2k and 2k+1 on one core)."""
    blocks = []
    for i in range(n):
        core = i // 2 if hyperthreads else i
        blocks.append(f"processor\t: {i}\nvendor_id\t: X\nmodel name\t: {model}\ncpu MHz\t\t: {mhz}\n"
                      f"physical id\t: 0\ncore id\t\t: {core}\nflags\t\t: {flags}\n")
    return "\n".join(blocks) + "\n"


def test_avx2_peak_is_cores_times_clock_times_32():
    # the machine: a 2-core AMD EPYC with two 256-bit FMA units per core at 2.25 GHz = 144 GFLOP/s
    text = cpuinfo(2, "AMD EPYC 7B13", FLAGS_AVX2)
    peak, how, source = mfu.cpu_peak(text, threads=2)
    assert peak == 2 * 2.25e9 * 32 == 144e9
    assert "2 core(s) x 2.25 GHz" in how and "32 fp32 FLOPs/cycle (AVX2 + FMA)" in how and "cpu MHz" in source
    assert mfu.cpu_peak(text, threads=1)[0] == 72e9  # one thread uses one core
    assert mfu.cpu_peak(text, threads=8)[0] == 144e9  # more threads than cores: no more FMA units


def test_avx512_clock_from_cpufreq_then_model_name_and_physical_cores_only():
    model = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    text = cpuinfo(4, model, FLAGS_AVX512, mhz="1200.000", hyperthreads=True)  # 2 cores, 4 hyperthreads
    peak, how, source = mfu.cpu_peak(text, threads=4)
    assert peak == 2 * 2.9e9 * 64 and source == "the model name" and "AVX-512" in how
    peak, how, source = mfu.cpu_peak(text, threads=4, max_freq_khz="3500000\n")  # cpufreq's maximum wins
    assert peak == 2 * 3.5e9 * 64 and "cpufreq" in source


def test_bf16_peak_follows_the_instruction_set():
    amx = cpuinfo(1, "Xeon", FLAGS_AVX512 + " avx512_bf16 amx_bf16 amx_tile", mhz="2000")
    assert mfu.cpu_peak(amx, 1, torch.bfloat16)[0] == 2e9 * 2048
    assert mfu.cpu_peak(amx, 1, torch.float32)[0] == 2e9 * 64
    assert mfu.cpu_peak(cpuinfo(1, "Xeon", FLAGS_AVX512 + " avx512_bf16", mhz="2000"), 1, torch.bfloat16)[0] \
        == 2e9 * 128
    # no bf16 instructions: bf16 runs through fp32, so its peak is fp32's
    assert mfu.cpu_peak(cpuinfo(1, "EPYC", FLAGS_AVX2, mhz="2000"), 1, torch.bfloat16)[0] == 2e9 * 32


def test_zen4_runs_avx512_at_half_rate():
    """Zen 4 (AMD family 25) executes each 512-bit instruction on two 256-bit halves; Zen 5 (26) does not."""
    def amd(family):
        return (f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel name\t: AMD EPYC\n"
                f"cpu MHz\t\t: 2000.000\nflags\t\t: {FLAGS_AVX512} avx512_bf16\n")
    peak, how, _ = mfu.cpu_peak(amd(25), 1, torch.float32)
    assert peak == 2e9 * 32 and "Zen 4" in how
    assert mfu.cpu_peak(amd(25), 1, torch.bfloat16)[0] == 2e9 * 64
    assert mfu.cpu_peak(amd(26), 1, torch.float32)[0] == 2e9 * 64
    zen3 = amd(25).replace(f"{FLAGS_AVX512} avx512_bf16", FLAGS_AVX2)  # family 25 without AVX-512
    assert mfu.cpu_peak(zen3, 1, torch.float32)[0] == 2e9 * 32


def test_native_bf16_means_bf16_instructions_in_the_flags():
    assert mfu.cpu_native_bf16(cpuinfo(2, "Xeon", FLAGS_AVX512 + " avx512_bf16 amx_bf16 amx_tile"))
    assert mfu.cpu_native_bf16(cpuinfo(2, "EPYC", FLAGS_AVX512 + " avx512_bf16"))
    assert not mfu.cpu_native_bf16(cpuinfo(2, "Xeon", FLAGS_AVX512))  # AVX-512 alone emulates bf16
    assert not mfu.cpu_native_bf16(cpuinfo(2, "EPYC", FLAGS_AVX2))
    assert not mfu.cpu_native_bf16("")  # unreadable: fp32, never a guess


def test_unreadable_cpu_has_no_peak_rather_than_a_guess():
    assert mfu.cpu_peak("", 2)[0] is None
    assert mfu.cpu_peak(cpuinfo(2, "Mystery", "fpu vme"), 2)[0] is None  # no SIMD flag known
    no_clock = "processor\t: 0\nmodel name\t: Mystery\nflags\t\t: fma avx2\n"
    peak, how, _ = mfu.cpu_peak(no_clock, 1)
    assert peak is None and "no clock" in how


def test_implausible_mfu_says_why():
    p = mfu.Peak(144e9, "test", achievable=83e9, clock_source="'cpu MHz' in /proc/cpuinfo")
    assert mfu.mfu_caveat(0.3, p) == ""
    why = mfu.mfu_caveat(0.61, p)  # the demo's MFU against the true peak: above 60% and above achievable
    assert "above 60% of the theoretical peak" in why and "turbo" in why and "probe reached (58%" in why
    assert "probe" in mfu.mfu_caveat(0.59, p) and "60%" not in mfu.mfu_caveat(0.59, p)
    assert mfu.mfu_caveat(None, p) == "" and mfu.mfu_caveat(0.9, mfu.Peak(None, "unknown")) == ""


def test_this_machine_peak_bounds_what_a_matmul_reaches():
    """The real /proc/cpuinfo: the theoretical peak is computed, and the probe (achievable) stays
    below it, unless the clock was read low (a VM's 'cpu MHz' under turbo: CI saw 0.370 TFLOP/s
    against 0.333), when the peak is raised to the probe and the line says so. A wrong
    FLOPs-per-cycle table would show here as a peak raised by far more than turbo explains."""
    p = mfu.device_peak("cpu")
    line = mfu.describe_peak("cpu")
    assert "achievable" in line and "FLOPs/cycle" in line
    assert p.flops and 0 < p.achievable <= p.flops
    if p.achievable == p.flops:
        assert "raised to" in line and "MHz" in p.clock_source
        computed = float(line.split("= ")[1].split(" TFLOP")[0]) * 1e12
        assert p.flops < 1.6 * computed, line
    assert mfu.peak_flops("cpu") == p.flops  # the MFU denominator is the theoretical peak, not the probe


def test_a_probe_faster_than_the_computed_peak_raises_it(monkeypatch):
    monkeypatch.setattr(mfu, "probe_matmul_flops", lambda *a, **k: 1e15)
    mfu._device_peak.cache_clear()
    try:
        p = mfu.device_peak("cpu")
    finally:
        mfu._device_peak.cache_clear()
    assert p.flops == 1e15 and "raised to the 1000.000 TFLOP/s" in p.how
