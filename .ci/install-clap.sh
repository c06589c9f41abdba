#!/usr/bin/env bash
# Install the [clap] extra (LAION-CLAP) WITHOUT replacing the installed torch, and never leave the
# environment worse than it found it.
#
# Each torchvision release requires one exact torch (0.28.0 needs torch==2.13.0, 0.29.0 torch==2.14.0),
# so a plain `pip install ".[clap]"` takes the newest torchvision and with it a new (CUDA) torch.
# Pinning torch to the installed version makes pip choose the matching torchvision. A CPU torch
# ("+cpu") also needs torchvision's CPU build: the PyPI wheel fails to import against a CPU torch
# ("operator torchvision::nms does not exist"), so the PyTorch CPU index is added for it.
#
# 1. Records every installed package's version (torch, torchvision, numpy, laion_clap named).
# 2. Checks before it changes anything: `pip install --dry-run` must resolve, keep torch, and (for a
#    CPU torch) take torchvision's CPU build; otherwise it stops with nothing changed.
# 3. Installs; then torch must be unchanged and torchvision and laion_clap must import.
# 4. On any failure (Ctrl-C included) it puts the environment back: uninstalls what it added,
#    reinstalls the recorded version of what it changed, and says what it could not restore.
#
# PY and PIP (a command line) can be replaced, e.g. by a fake pip in tests/test_install_scripts.py.
set -uo pipefail
PY=${PY:-python3}
read -r -a pip <<< "${PIP:-$PY -m pip}"
read -r -a net <<< "${PIP_NET_OPTS:---retries 2 --timeout 30}"  # fail in a minute, not 6 retries later
CPU_INDEX=https://download.pytorch.org/whl/cpu
say() { echo "install-clap: $*" >&2; }

freeze() { "${pip[@]}" list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-' | sed -n 's/^\([a-z0-9.-]*\)==\(.*\)$/\1 \2/p' | sort; }
version_in() { awk -v n="$2" '$1 == n {print $2}' <<< "$1"; }

before=$(freeze)
torch_full=$(version_in "$before" torch)
if [ -z "$torch_full" ]; then
  say "torch is not installed; run \`make install\` first"
  exit 1
fi
torch_base=${torch_full%%+*}
for p in torch torchvision numpy laion-clap; do
  v=$(version_in "$before" "$p")
  say "before: $p ${v:-(not installed)}"
done
extra=()
case "$torch_full" in
  *+cpu) extra=(--extra-index-url "$CPU_INDEX") ;;
esac
args=(install -e ".[clap]" "torch==$torch_base" "${extra[@]}" "${net[@]}")

# -- 2. check before changing anything
say "checking: pip ${args[*]} --dry-run"
if ! plan=$("${pip[@]}" "${args[@]}" --dry-run 2>&1); then
  say "pip cannot resolve the [clap] extra here: $(grep -v '^\s*$' <<< "$plan" | tail -n 1)"
  say "nothing was changed"
  exit 1
fi
would=$(grep -i '^would install' <<< "$plan" | head -n 1)
say "${would:-pip would install nothing new}"
if grep -Eqi '(^| )torch-[0-9]' <<< "$would"; then
  say "pip would replace torch $torch_full ($(grep -Eo '(^| )torch-[^ ]+' <<< "$would" | tr -d ' ')); nothing was changed"
  exit 1
fi
if [ ${#extra[@]} -gt 0 ] && grep -Eqi '(^| )torchvision-[0-9]' <<< "$would" \
   && ! grep -Eqi '(^| )torchvision-[^ ]*\+cpu' <<< "$would"; then
  say "torch $torch_full needs torchvision's CPU build from $CPU_INDEX, which pip could not get"
  say "(PyPI's torchvision does not import against a CPU torch); nothing was changed"
  exit 1
fi

# -- 4. the way back
restore() {
  trap '' INT TERM
  local now failed=() p v
  now=$(freeze)
  local added=() changed=()
  while read -r p v; do
    [ -n "$p" ] || continue
    local old
    old=$(version_in "$before" "$p")
    if [ -z "$old" ]; then added+=("$p"); elif [ "$old" != "$v" ]; then changed+=("$p==$old"); fi
  done <<< "$now"
  if [ ${#added[@]} -gt 0 ]; then
    say "rolling back: pip uninstall -y ${added[*]}"
    "${pip[@]}" uninstall -y "${added[@]}" >&2 || failed+=("uninstall of ${added[*]}")
  fi
  for p in "${changed[@]}"; do
    say "rolling back: pip install --no-deps $p"
    local idx=()
    case "$p" in *+cpu) idx=(--extra-index-url "$CPU_INDEX") ;; esac
    "${pip[@]}" install --no-deps "$p" "${idx[@]}" "${net[@]}" >&2 || failed+=("$p")
  done
  now=$(freeze)
  for p in torch torchvision numpy laion-clap; do
    local x y
    x=$(version_in "$now" "$p")
    y=$(version_in "$before" "$p")
    if [ "$x" != "$y" ]; then
      failed+=("$p (now ${x:-not installed}, was ${y:-not installed})")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    say "could NOT restore: ${failed[*]}; put them back by hand with pip install --no-deps NAME==VERSION"
  else
    say "the environment is back as it was (torch $torch_full, numpy $(version_in "$before" numpy))"
  fi
}

fail() {
  say "$1"
  restore
  exit 1
}

trap 'say "interrupted"; restore; exit 130' INT TERM

# -- 3. install and check
say "installing: pip ${args[*]}"
if ! "${pip[@]}" "${args[@]}" >&2; then
  fail "pip install failed (see above): could not get the [clap] extra"
fi
after=$(freeze)
if [ "$(version_in "$after" torch)" != "$torch_full" ]; then
  fail "torch changed from $torch_full to $(version_in "$after" torch)"
fi
if ! err=$("$PY" -c 'import torchvision' 2>&1); then
  fail "torchvision does not import: $(tail -n 1 <<< "$err")"
fi
if ! err=$("$PY" -c 'import laion_clap' 2>&1); then
  fail "laion_clap does not import: $(tail -n 1 <<< "$err")"
fi
trap - INT TERM
say "laion_clap imports; torch is still $torch_full; numpy $(version_in "$before" numpy) -> $(version_in "$after" numpy)"
