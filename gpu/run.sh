#!/usr/bin/env bash
# The project's tests, bench and demo on a GPU through WebGPU, in one go, on an x86-64 Linux machine with an
# NVIDIA GPU and no network, from the bundle `deno task gpu-bundle` builds (.gpu-bundle/). Also tries the CUDA
# backend and records why it does or does not start.
#
#   gpu/run.sh           # full run: about 8 minutes at most
#   gpu/run.sh --quick   # fewer and smaller measurements, for a slow (software) renderer
#
# Run it from a copy of the project that has no node_modules of its own: it unpacks the bundle's. Everything
# goes to $OUT (default ./gpu-out): summary.md and summary.json, run.log, bench.json, sweep.json (webgpu and wasm
# steps/s by batch size), gpt.json once there is a GPT bench, and logs.tar.gz
# (every step's log and output). A step that fails or runs out of time is recorded, and the run goes on.
#
# Settings (environment): OUT; GPU_RUN_BUDGET_S, the whole run's time limit (480 full, 1500 quick);
# GPU_BUNDLE (default .gpu-bundle); GPU_RUN_WORK, where tools unpack (default .gpu-run); VK_DRIVER_FILES, to
# choose the Vulkan driver yourself; GPU_RUN_NO_ROOT_INSTALL=1: when the local loader finds no NVIDIA adapter
# although nvidia-smi sees a GPU, do not retry with the loader unpacked into / (which needs root).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

MODE=full
case "${1:-}" in
  "") ;;
  --quick) MODE=quick ;;
  *) echo "run.sh: unknown argument '$1'; expected nothing or --quick." >&2; exit 2 ;;
esac

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "run.sh: cannot create OUT=$OUT" >&2; exit 2; }
BUNDLE=${GPU_BUNDLE:-$ROOT/.gpu-bundle}
WORK=${GPU_RUN_WORK:-$ROOT/.gpu-run}
# Step logs gather in $WORK/logs and reach $OUT packed, at the end: $OUT holds a handful of files at any moment.
LOGS=$WORK/logs
if [ "$MODE" = full ]; then BUDGET=${GPU_RUN_BUDGET_S:-480}; else BUDGET=${GPU_RUN_BUDGET_S:-1500}; fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))
rm -rf "$LOGS" "$OUT"/summary.* "$OUT"/run.log "$OUT"/bench.json "$OUT"/sweep.json "$OUT"/gpt.json "$OUT"/logs.tar.gz
mkdir -p "$LOGS" "$WORK"

# Deno offline: no update check, no prompts, plain logs; the bundle's Deno first on PATH.
export DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1 NO_COLOR=1 DENO_DIR=$WORK/deno-dir
export PATH="$WORK/bin:$PATH"
DENO=$WORK/bin/deno
export ROOT OUT BUNDLE WORK LOGS DENO MODE

say() { printf '[%4ds] %s\n' "$(($(date +%s) - START))" "$*" | tee -a "$OUT/run.log"; }
loud() {
  local bar='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  say "$bar"
  say "!!! $*"
  say "$bar"
}
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"; }
record() { # step status seconds rc limit note
  printf '{"step":%s,"status":"%s","seconds":%s,"rc":%s,"limit":%s,"note":%s}\n' \
    "$(json_string "$1")" "$2" "$3" "$4" "$5" "$(json_string "$6")" >>"$LOGS/steps.jsonl"
}

# step NAME LIMIT [--stdout FILE] CMD...: runs CMD with a time limit (cut to what is left of the budget), its
# output in logs/NAME.log (stdout in FILE when given); records the outcome; never stops the script.
FAILED_STEPS=()
step() {
  local name=$1 limit=$2 stdout=""
  shift 2
  if [ "${1:-}" = --stdout ]; then stdout=$2; shift 2; fi
  local left=$((DEADLINE - $(date +%s) - 20))
  if [ "$left" -lt 10 ]; then
    say "✗ $name skipped: the run's ${BUDGET} s budget is spent"
    record "$name" skipped 0 0 "$limit" "budget spent"
    FAILED_STEPS+=("$name")
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "▶ $name (limit ${limit} s): $*"
  local t0 t1 rc status
  # A shell function runs in a child bash (timeout runs programs), with every function of this script.
  if declare -F "$1" >/dev/null; then set -- bash -c "$(declare -f); $(printf '%q ' "$@")"; fi
  t0=$(date +%s.%N)
  if [ -n "$stdout" ]; then
    timeout -k 10 "$limit" "$@" >"$stdout" 2>"$LOGS/$name.log"
  else
    timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  fi
  rc=$?
  t1=$(date +%s.%N)
  local seconds
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$seconds" "$rc" "$limit" "${STEP_NOTE:-}"
  STEP_NOTE=""
  if [ "$status" = ok ]; then
    say "  ok in ${seconds} s"
  else
    say "  ${status^^} (exit $rc) after ${seconds} s; last lines of logs/$name.log:"
    tail -n 6 "$LOGS/$name.log" | sed 's/^/      /' | tee -a "$OUT/run.log"
    FAILED_STEPS+=("$name")
  fi
  return $rc
}
finding() { "$DENO" run --allow-read gpu/summary.ts --step "$1" "$LOGS" 2>/dev/null | sed 's/^/  → /' | tee -a "$OUT/run.log"; }

# Decompression without xz: Python's lzma. Unpacking a .deb without dpkg-deb: Python reads the ar archive.
unxz_cat() {
  if command -v xz >/dev/null; then xz -dc "$1"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}
unpack_deb() { # deb dest
  if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$1" "$2"; else
    python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb (ar) file"
pos = 8
while pos < len(data):
    name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
PY
  fi
}

say "GPU run, $MODE mode, budget ${BUDGET} s; output in $OUT"

# --- 1. unpack the bundle -------------------------------------------------------------------------------------
unpack() {
  [ -f "$BUNDLE/manifest.json" ] || { echo "no bundle at $BUNDLE: run 'deno task gpu-bundle' where there is network"; return 1; }
  local id
  id=$(sed -n 's/^  "id": "\(.*\)",$/\1/p' "$BUNDLE/manifest.json")
  echo "bundle id $id"
  if command -v sha256sum >/dev/null; then (cd "$BUNDLE" && sha256sum --quiet -c SHA256SUMS) || return 1; fi
  if [ -d node_modules ] && [ "$(cat node_modules/.gpu-bundle-id 2>/dev/null)" != "$id" ]; then
    if [ -f node_modules/.gpu-bundle-id ]; then rm -rf node_modules; else
      echo "this project already has a node_modules folder that the bundle did not make (a development copy?);"
      echo "run.sh unpacks its own and will not overwrite it: run it in a fresh copy (gpu/proof.sh makes one)"
      return 1
    fi
  fi
  if [ ! -f node_modules/.gpu-bundle-id ]; then
    for part in node_modules mnist text-data; do
      [ -f "$BUNDLE/$part.tar.xz" ] || continue
      unxz_cat "$BUNDLE/$part.tar.xz" | tar -xf - -C "$ROOT" || return 1
      echo "unpacked $part.tar.xz"
    done
    echo "$id" >node_modules/.gpu-bundle-id
  fi
  if [ "$(cat "$WORK/.bundle-id" 2>/dev/null)" != "$id" ]; then
    rm -rf "${WORK:?}/bin" "${WORK:?}/deno-dir" "${WORK:?}/vulkan"
    mkdir -p "$WORK/bin" "$WORK/deno-dir"
    unxz_cat "$BUNDLE/deno.xz" >"$WORK/bin/deno" && chmod +x "$WORK/bin/deno" || return 1
    [ -f "$BUNDLE/deno-dir.tar.xz" ] && { unxz_cat "$BUNDLE/deno-dir.tar.xz" | tar -xf - -C "$WORK/deno-dir" || return 1; }
    echo "$id" >"$WORK/.bundle-id"
  fi
  "$DENO" --version
}
step unpack 120 unpack || { say "cannot go on without the bundle"; exit 1; }
BUNDLE_ID=$(cat "$WORK/.bundle-id")

# --- 2. the machine ---------------------------------------------------------------------------------------------
system_facts() {
  echo "## date"; date -u
  echo "## uname"; uname -a
  echo "## os"; head -n 4 /etc/os-release 2>/dev/null
  echo "## glibc"; ldd --version 2>/dev/null | head -n 1
  echo "## cpu"; nproc; grep -m1 'model name' /proc/cpuinfo
  echo "## memory"; free -g 2>/dev/null | head -n 2
  echo "## nvidia-smi"; nvidia-smi 2>&1 | head -n 20
  echo "## libraries (ldconfig)"; ldconfig -p 2>/dev/null | grep -Ei 'vulkan|nvidia|libcuda|cudart|cudnn|GLX|EGL|tensorflow' || true
  echo "## Vulkan driver manifests"
  ls -l /usr/local/nvidia/share/vulkan/icd.d /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d 2>&1
  echo "## NVIDIA driver folders"; ls /usr/local/nvidia /usr/local/nvidia/lib64 2>&1 | head -n 40
}
step system 30 system_facts
GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
MACHINE="$(nproc) cores, $(uname -m), GPU: ${GPU_NAME:-none seen by nvidia-smi}"
say "machine: $MACHINE"

# --- 3. the Vulkan loader, from the bundle, into a local prefix --------------------------------------------------
export VK_PREFIX=$WORK/vulkan
VK_LOADER=bundle
vulkan_setup() {
  mkdir -p "$VK_PREFIX"
  for deb in "$BUNDLE"/vulkan/*.deb; do unpack_deb "$deb" "$VK_PREFIX" || return 1; echo "unpacked $(basename "$deb")"; done
  ls "$VK_PREFIX/usr/lib/x86_64-linux-gnu/libvulkan.so.1" || return 1
}
STEP_NOTE="loader and GL dispatch libraries from the bundle in $VK_PREFIX"
step vulkan 60 vulkan_setup
libs=$VK_PREFIX/usr/lib/x86_64-linux-gnu
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The loader looks for driver manifests in /etc and /usr/share; NVIDIA's may sit in the driver's own folder.
if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for d in /usr/local/nvidia/share/vulkan/icd.d /etc/vulkan/icd.d /usr/share/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    for f in "$d"/nvidia*.json; do [ -f "$f" ] && { export VK_DRIVER_FILES=$f VK_ICD_FILENAMES=$f; break 2; }; done
  done
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && nvidia-smi >/dev/null 2>&1; then
  # A driver without its manifest: write one naming the driver's Vulkan library.
  cat >"$WORK/nvidia_icd.json" <<'JSON'
{ "file_format_version": "1.0.0", "ICD": { "library_path": "libGLX_nvidia.so.0", "api_version": "1.3" } }
JSON
  export VK_DRIVER_FILES=$WORK/nvidia_icd.json VK_ICD_FILENAMES=$WORK/nvidia_icd.json
  say "no NVIDIA Vulkan manifest found: wrote $WORK/nvidia_icd.json (libGLX_nvidia.so.0)"
fi
f=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$f" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$f
mkdir -p "$WORK/xdg" && chmod 700 "$WORK/xdg" && export XDG_RUNTIME_DIR=$WORK/xdg
say "Vulkan: loader from the bundle; VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset, so the loader searches its default folders}"

# --- 4. the WebGPU adapter ----------------------------------------------------------------------------------------
if [ "$MODE" = full ]; then MATMUL=4096; else MATMUL=1024; fi
adapter_probe() { step adapter 90 --stdout "$LOGS/adapter.json" "$DENO" run -A gpu/adapter.ts --matmul=$MATMUL; }
adapter_probe
finding adapter
if ! grep -q '"nvidia": true' "$LOGS/adapter.json" 2>/dev/null && nvidia-smi >/dev/null 2>&1 &&
  [ "$(id -u)" = 0 ] && [ -z "${GPU_RUN_NO_ROOT_INSTALL:-}" ]; then
  # The other way to bring the loader, known to work on such machines: its packages unpacked into /, then ldconfig.
  say "no NVIDIA adapter through the local loader, yet nvidia-smi sees a GPU: unpacking the loader into / and retrying"
  mv "$LOGS/adapter.json" "$LOGS/adapter-local-loader.json"
  mv "$LOGS/adapter.log" "$LOGS/adapter-local-loader.log"
  for deb in "$BUNDLE"/vulkan/*.deb; do dpkg -x "$deb" / 2>>"$LOGS/vulkan.log" || unpack_deb "$deb" /; done
  ldconfig
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH#"$VK_PREFIX/usr/lib/x86_64-linux-gnu"}
  export LD_LIBRARY_PATH=${LD_LIBRARY_PATH#:}
  VK_LOADER="system (unpacked into /)"
  adapter_probe
  finding adapter
fi
if [ ! -s "$LOGS/adapter.json" ]; then
  loud "The WebGPU adapter probe gave no report (see logs/adapter.log): the webgpu steps below may fail or mislead"
elif grep -q '"software": true' "$LOGS/adapter.json"; then
  loud "WebGPU runs on a SOFTWARE renderer ($(sed -n 's/^    "description": "\(.*\)",$/\1/p' "$LOGS/adapter.json")): no GPU figures below"
elif ! grep -q '"nvidia": true' "$LOGS/adapter.json"; then
  loud "WebGPU found no NVIDIA adapter (see logs/adapter.json): the webgpu steps below will fail or mislead"
fi

# --- 5. the CUDA backend ------------------------------------------------------------------------------------------
step cuda 60 --stdout "$LOGS/cuda.json" "$DENO" run -A gpu/cuda_probe.ts
finding cuda

# --- 6. tests on webgpu -------------------------------------------------------------------------------------------
webgpu_tests() {
  local files=() f
  for f in tests/*_test.ts; do [ "$f" = tests/notebooks_test.ts ] || files+=("$f"); done
  LORA_BACKEND=webgpu "$DENO" test --no-check --allow-read --allow-env --allow-write=data --allow-run --allow-ffi \
    --junit-path="$LOGS/tests.xml" "${files[@]}"
  echo "deno test exit code $?"
  # A test that reads a tensor synchronously fails on webgpu in Deno (tfjs-backend-webgpu reads through an
  # OffscreenCanvas, which Deno lacks): a known limit, not a fault. Any other failure fails the step.
  "$DENO" run --allow-read gpu/summary.ts --check tests "$LOGS"
}
STEP_NOTE="all test files but notebooks_test.ts, LORA_BACKEND=webgpu; only failures other than synchronous reads count"
step tests 150 webgpu_tests
finding tests

# --- 7. the bench on webgpu ---------------------------------------------------------------------------------------
QUICK=()
[ "$MODE" = quick ] && QUICK=(--quick)
step bench 150 --stdout "$LOGS/bench.json" "$DENO" task bench --backend=webgpu --json "${QUICK[@]}"
finding bench

# --- 8. steps/s against batch size, webgpu and wasm (one step each, so that a time-out costs only one) -------------
if [ "$MODE" = full ]; then SIZES=64,256,1024,4096,16384; else SIZES=64,256; fi
for backend in webgpu wasm; do
  step "sweep-$backend" 120 --stdout "$LOGS/sweep-$backend.json" \
    "$DENO" task bench --backend=$backend --json --batch-sizes=$SIZES "${QUICK[@]}"
done
finding sweep

# --- 9. the demo on webgpu ----------------------------------------------------------------------------------------
DEMO_ARGS=(--backend webgpu)
[ "$MODE" = quick ] && DEMO_ARGS+=(--epochs 1 --limit 2000)
step demo 180 "$DENO" task demo "${DEMO_ARGS[@]}"
finding demo

# --- 10. the GPT bench, once bench.ts has one ------------------------------------------------------------------------
if grep -q -- '--model=' bench/bench.ts; then
  step gpt 120 --stdout "$LOGS/gpt.json" "$DENO" task bench --model=gpt --backend=webgpu --json "${QUICK[@]}"
  finding gpt
else
  say "✗ gpt skipped: bench/bench.ts has no --model= option yet"
  record gpt skipped 0 0 0 "bench/bench.ts has no --model= option yet"
fi

# --- summary --------------------------------------------------------------------------------------------------------
printf '{"mode":"%s","started":"%s","budgetSeconds":%s,"seconds":%s,"bundle":"%s","machine":%s,"vulkanLoader":%s,"vkDriverFiles":%s}\n' \
  "$MODE" "$(date -u -d "@$START" +%FT%TZ)" "$BUDGET" "$(($(date +%s) - START))" "$BUNDLE_ID" \
  "$(json_string "$MACHINE")" "$(json_string "$VK_LOADER")" "$(json_string "${VK_DRIVER_FILES:-}")" >"$LOGS/run.json"
say "summary:"
"$DENO" run --allow-read --allow-write="$OUT" gpu/summary.ts "$LOGS" "$OUT" >>"$OUT/run.log" 2>&1
cat "$OUT/summary.md"
for f in bench gpt; do [ -s "$LOGS/$f.json" ] && cp "$LOGS/$f.json" "$OUT/$f.json"; done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
failed=${#FAILED_STEPS[@]}
which=""
[ "$failed" -gt 0 ] && which=": ${FAILED_STEPS[*]}"
say "done in $(($(date +%s) - START)) s; $failed step(s) failed, timed out or were skipped$which"
say "files: $(cd "$OUT" && ls | tr '\n' ' ')"
[ "$failed" -eq 0 ]
