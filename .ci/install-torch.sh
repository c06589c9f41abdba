#!/usr/bin/env bash
# `make install`'s torch step; it says which route it takes (TORCH=... picks one):
#   auto (default)  keep an installed torch $TORCH_VERSION; else the CUDA build when an NVIDIA GPU
#                   answers (nvidia-smi), else the CPU-only build (on macOS: PyPI's wheel)
#   cpu             pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
#                   (no CUDA packages: a far smaller download)
#   cuda            pip install torch==2.13.0 (PyPI's Linux wheel is the CUDA build, with its CUDA packages)
#   keep            leave the installed torch as it is
# Each route falls back to any torch>=2.3 of its kind when 2.13.0 has no wheel for this platform.
# It also says when pip would install into a Python that is not a virtual environment.
set -uo pipefail
PY=${PY:-python3}
read -r -a pip <<< "${PIP:-$PY -m pip}"
VERSION=${TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu
route=${TORCH:-auto}
say() { echo "install: $*" >&2; }

if [ -z "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] \
   && [ "$("$PY" -c 'import sys; print(sys.prefix == sys.base_prefix)' 2>/dev/null)" = True ]; then
  say "not in a virtual environment: packages go into $("$PY" -c 'import sys; print(sys.prefix)' 2>/dev/null)."
  say "to keep presto's apart: python3 -m venv .venv && . .venv/bin/activate && make install"
fi
installed=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "$route" = auto ]; then
  if [ -n "$installed" ] && [ "${installed%%+*}" = "$VERSION" ]; then route=keep
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then route=cuda
  elif [ "$(uname -s)" = Darwin ]; then route=pypi
  else route=cpu
  fi
fi
case "$route" in
  keep)
    if [ -z "$installed" ]; then say "TORCH=keep but no torch is installed: use TORCH=cpu or TORCH=cuda"; exit 1; fi
    say "torch route: keep the installed torch $installed (TORCH=cpu or TORCH=cuda reinstalls it)" ;;
  cpu)
    say "torch route: CPU-only build: pip install torch==$VERSION --index-url $CPU_INDEX (TORCH=cuda for the CUDA build)"
    "${pip[@]}" install "torch==$VERSION" --index-url "$CPU_INDEX" \
      || { say "no torch $VERSION CPU wheel here: any CPU torch>=2.3"; "${pip[@]}" install "torch>=2.3" --index-url "$CPU_INDEX"; } ;;
  cuda|pypi)
    if [ "$route" = cuda ]; then
      say "torch route: CUDA build: pip install torch==$VERSION (PyPI's wheel, with the CUDA packages; TORCH=cpu for CPU-only)"
    else
      say "torch route: PyPI's wheel: pip install torch==$VERSION"
    fi
    "${pip[@]}" install "torch==$VERSION" \
      || { say "no torch $VERSION wheel here: any torch>=2.3"; "${pip[@]}" install "torch>=2.3"; } ;;
  *) say "unknown TORCH=$route: use auto, cpu, cuda or keep"; exit 2 ;;
esac
