#!/usr/bin/env bash
# Runs gpu/run.sh here the way a GPU machine would run it: in a fresh copy of the project holding only what a
# copy of the working tree carries (tracked files, untracked files that are not ignored, and .gpu-bundle/), with
# no network, and with this machine's own Deno and Vulkan loader masked, so that only the bundle's can serve.
# Needs root (for unshare's network and mount namespaces) and a built bundle (deno task gpu-bundle).
#
#   gpu/proof.sh [--quick]      # OUT: where the results go (default ./gpu-out)
set -euo pipefail
case "${1:-}" in "" | --quick) ;; *) echo "proof.sh: unknown argument '$1'; expected nothing or --quick." >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
[ -f .gpu-bundle/manifest.json ] || { echo "proof.sh: no bundle; run 'deno task gpu-bundle' first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "proof.sh: needs root for unshare -n -m" >&2; exit 2; }

COPY=$(mktemp -d /tmp/gpu-proof.XXXXXX)
trap 'rm -rf "$COPY"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null |
  tar -C "$COPY" -xf -
cp -a .gpu-bundle "$COPY/"
echo "proof.sh: copy of the project in $COPY ($(du -sh "$COPY" | cut -f1)), no node_modules: $([ -e "$COPY/node_modules" ] && echo PRESENT || echo absent)"

# Mask what the bundle must replace: the Deno on PATH and the system's Vulkan loader (bind /dev/null over them).
masks=()
for f in "$(readlink -f "$(command -v deno || echo /nonexistent)")" /usr/lib/x86_64-linux-gnu/libvulkan.so.1*; do
  [ -f "$f" ] && masks+=("$(readlink -f "$f")")
done
mapfile -t masks < <(printf '%s\n' "${masks[@]}" | sort -u | grep .)
echo "proof.sh: masking ${masks[*]:-nothing}; no network"
# shellcheck disable=SC2016 # expanded by the inner shell
unshare -n -m bash -c '
  set -e
  for f in "${@:3}"; do mount --bind /dev/null "$f"; done
  ip link set lo up 2>/dev/null || true
  if getent hosts registry.npmjs.org >/dev/null 2>&1; then echo "proof.sh: the network is reachable"; exit 3; fi
  cd "$1" && OUT="$2" exec bash gpu/run.sh '"${1:-}"'
' proof "$COPY" "$OUT" "${masks[@]}"
