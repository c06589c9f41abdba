#!/usr/bin/env bash
# System packages the tests need, and why:
#   fluidsynth          renders the synthetic music corpus (presto data synth, end-to-end tests)
#   fluid-soundfont-gm  the General MIDI soundfont FluidSynth plays (FluidR3_GM.sf2)
#   chromium            renders the HTML evaluation report to PDF/PNG in the report test
# Installs only what is missing: nothing to do (and no root needed) when all are present.
# Without root and without sudo, prints the apt command to run and exits 1.
set -euo pipefail
need=()
why=()
check() {  # check PACKAGE REASON TEST...
  local pkg=$1 reason=$2
  shift 2
  if "$@" >/dev/null 2>&1; then
    echo "system-deps: $pkg present ($reason)"
  else
    need+=("$pkg")
    why+=("$pkg: $reason")
  fi
}
check fluidsynth "renders the synthetic music corpus" command -v fluidsynth
check fluid-soundfont-gm "the General MIDI soundfont FluidSynth plays" test -f "${PRESTO_SF2:-/usr/share/sounds/sf2/FluidR3_GM.sf2}"
check chromium "renders the HTML eval report in the report test" command -v chromium
if [ ${#need[@]} -eq 0 ]; then
  echo "system-deps: nothing to install"
  exit 0
fi
printf 'system-deps: missing %s\n' "${why[@]}"
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${need[*]}"
if [ "$(id -u)" = 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "system-deps: not root and no sudo; run as root: $cmd" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]} (about 650 MB with chromium; apt output follows)"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need[@]}"
