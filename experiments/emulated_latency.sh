#!/usr/bin/env bash
# Latency of .tflite models on an emulated 64-bit Pi userland (aarch64 Python 3.11 under qemu user mode), with
# both real aarch64 runtimes: tflite-runtime 2.14 (numpy<2) and LiteRT (ai-edge-litert).
#
#   bash experiments/emulated_latency.sh MODEL.tflite [MODEL.tflite ...] > latency.jsonl
#
# Emulation translates every ARM instruction, so absolute times say nothing about a Pi; ratios between models
# and between int8 and fp32 follow the instructions executed, which is what they are quoted for. Caches, memory
# bandwidth and the Pi's clock are not modelled. Needs `make pi-smoke` once (arm64 root + tflite-runtime
# wheels in $PI_CACHE); fetches qemu 10 (Debian trixie's qemu-user: bookworm's 7.2 crashes in LiteRT) and the
# LiteRT wheels on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: bash experiments/emulated_latency.sh MODEL.tflite [...]" >&2; exit 2; }
CACHE=${PI_CACHE:-.cache/pi}
ROOTFS=$CACHE/rootfs
RUNS=${RUNS:-200}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -x "$ROOTFS/usr/bin/python3.11" ] && [ -d "$CACHE/site-aarch64/tflite_runtime" ] \
  || { echo "error: no arm64 root in $CACHE: run make pi-smoke first (or set PI_CACHE)" >&2; exit 2; }

QEMU=$CACHE/qemu10/usr/bin/qemu-aarch64
if [ ! -x "$QEMU" ]; then
  echo "[latency] fetching qemu-user 10 from Debian trixie" >&2
  deb=$(curl -fsS "$MIRROR/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc \
        | awk '/^Package: qemu-user$/{f=1} f&&/^Filename:/{print $2; f=0}')  # no early exit: SIGPIPE under pipefail
  curl -fsS -o "$CACHE/qemu-user-trixie.deb" "$MIRROR/$deb"
  dpkg -x "$CACHE/qemu-user-trixie.deb" "$CACHE/qemu10"
fi
if [ ! -d "$CACHE/site-litert/ai_edge_litert" ]; then
  echo "[latency] installing aarch64 LiteRT wheels" >&2
  .venv-device/bin/pip install -q --target "$CACHE/site-litert" --platform manylinux_2_34_aarch64 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --python-version 3.11 \
    --implementation cp --abi cp311 --only-binary=:all: ai-edge-litert numpy pillow >&2
fi

for model in "$@"; do
  [ -f "$model" ] || { echo "error: no such model: $model" >&2; exit 2; }
  for rt in tflite-runtime:site-aarch64 litert:site-litert; do
    PYTHONPATH="$CACHE/${rt#*:}:$PWD" "$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -m device.bench \
      --model "$model" --runtime "${rt%%:*}" --threads 1 --runs "$RUNS" --warmup 20 --json 2>/dev/null | tail -1
  done
done
