#!/usr/bin/env bash
# Creates .cache/quant-tools-venv: the real quantizers (llm-compressor, compressed-tensors) in a venv of their own.
#
# tests/quant writes checkpoints with them (tests/quant/ct_writer.py runs in this venv) and checks that glmv loads
# what they write and that their reader accepts what `glmv quantize` writes. A venv of its own because llm-compressor
# pins its own transformers/torch ranges. CPU torch from this machine's local wheels, pinned by a constraint file so
# no CUDA build is pulled in. Idempotent (a stamp file records a finished install; one builder at a time).
# Env: QUANT_VENV (default .cache/quant-tools-venv), PYTHON (default python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${QUANT_VENV:-.cache/quant-tools-venv}
TORCH=${QUANT_TORCH_VERSION:-2.13.0+cpu}
LLMC=${LLMCOMPRESSOR_VERSION:-0.14.0.1}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3.11 || command -v python3)
fi
RECIPE=1
STAMP="$VENV/.glmv-ready-llmc$LLMC-r$RECIPE"
[ -f "$STAMP" ] && { echo "quant tools venv ready: $VENV"; exit 0; }
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
[ -f "$STAMP" ] && { echo "quant tools venv ready: $VENV"; exit 0; }

pip_quiet() {
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
echo "Creating $VENV (llmcompressor==$LLMC, torch==$TORCH)."
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=(pip_quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
CONSTRAINT="$VENV/torch-constraint.txt"
echo "torch==$TORCH" >"$CONSTRAINT"
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" -c "$CONSTRAINT" "llmcompressor==$LLMC"
"$VENV/bin/python" -m pip uninstall -q -y triton 2>/dev/null || true
"$VENV/bin/python" -c "import compressed_tensors, llmcompressor, torch; \
print('compressed-tensors', compressed_tensors.__version__, 'llmcompressor', llmcompressor.__version__, 'torch', torch.__version__)"
touch "$STAMP"
echo "quant tools venv ready: $VENV ($(du -sh "$VENV" | cut -f1))"
