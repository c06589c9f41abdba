#!/usr/bin/env bash
# Install the [clap] extra (LAION-CLAP) WITHOUT replacing the installed torch.
# Each torchvision release requires one exact torch (0.28.0 needs torch==2.13.0, 0.29.0 torch==2.14.0),
# so a plain `pip install ".[clap]"` takes the newest torchvision and with it a new (CUDA) torch.
# Pinning torch to the installed version makes pip choose the matching torchvision. A CPU torch
# ("+cpu") also needs torchvision's CPU build: the PyPI wheel fails to import against a CPU torch
# ("operator torchvision::nms does not exist"), so the PyTorch CPU index is added for it.
set -euo pipefail
PY=${PY:-python3}
full=$($PY -c 'import torch; print(torch.__version__)')
base=${full%%+*}
extra=()
case "$full" in
  *+cpu) extra=(--extra-index-url https://download.pytorch.org/whl/cpu) ;;
esac
echo "install-clap: keeping torch $full; pip install -e \".[clap]\" \"torch==$base\" ${extra[*]}"
$PY -m pip install -e ".[clap]" "torch==$base" "${extra[@]}"
after=$($PY -c 'import torch; print(torch.__version__)')
[ "$after" = "$full" ] || { echo "install-clap: torch changed from $full to $after" >&2; exit 1; }
$PY -c 'import laion_clap' || { echo "install-clap: laion_clap does not import (see presto env)" >&2; exit 1; }
echo "install-clap: laion_clap imports; torch is still $after"
