#!/usr/bin/env bash
# make pi-smoke: run the device package on an emulated 64-bit Raspberry Pi OS-like
# userland (Debian bookworm arm64, Python 3.11) with the REAL aarch64 wheels
# (tflite-runtime 2.14.0, numpy<2, pillow), and check its predictions equal x86's.
#
# Proves: the aarch64 wheels install and import, the device code runs on arm64
# Python 3.11 with no TensorFlow, and int8 inference gives the same answers.
# Does not prove: speed (emulation is many times slower than a Pi), memory, or
# behaviour on real Pi hardware/kernels. Needs: debootstrap, network to the
# Debian mirror and PyPI (first run only; everything is cached in .cache/pi).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PI_CACHE:-.cache/pi}
ROOTFS=$CACHE/rootfs
SITE=$CACHE/site-aarch64
QEMU_DIR=$CACHE/qemu
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MODEL=${MODEL:-}
mkdir -p "$CACHE"

# 1. qemu-aarch64 user-mode emulator (bookworm's; runs tflite-runtime fine).
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
if [ -z "$QEMU" ]; then
  QEMU=$QEMU_DIR/usr/bin/qemu-aarch64-static
  if [ ! -x "$QEMU" ]; then
    echo "[pi-smoke] fetching qemu-user-static"
    (cd "$CACHE" && apt-get download qemu-user-static >/dev/null)
    dpkg -x "$CACHE"/qemu-user-static_*.deb "$QEMU_DIR"
  fi
fi

# 2. arm64 bookworm root with python3.11 (--foreign only unpacks: no emulation needed to build it).
if [ ! -x "$ROOTFS/usr/bin/python3.11" ]; then
  command -v debootstrap >/dev/null || { echo "error: debootstrap not installed (apt-get install debootstrap)" >&2; exit 2; }
  echo "[pi-smoke] debootstrap arm64 bookworm (once)"
  rm -rf "$ROOTFS"
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11-minimal,libpython3.11-stdlib \
    bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || { tail -5 "$CACHE/debootstrap.log"; exit 2; }
  # --foreign leaves the .debs unpacked only partly: unpack the ones Python needs.
  for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOTFS"; done
fi

# 3. The real aarch64 wheels, installed into a target folder.
if [ ! -d "$SITE/tflite_runtime" ]; then
  echo "[pi-smoke] installing aarch64 wheels"
  .venv-device/bin/pip install -q --target "$SITE" --platform manylinux_2_34_aarch64 --platform manylinux2014_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: \
    "tflite-runtime==2.14.0" "numpy<2" pillow
fi

# 4. A real int8 model and a few images.
if [ -z "$MODEL" ]; then
  MODEL=$(ls device/models/student_int8.tflite 2>/dev/null || ls -t artifacts/*/student_int8.tflite 2>/dev/null | head -1 || true)
fi
[ -n "$MODEL" ] || { echo "error: no int8 model: run make all (or set MODEL=...)" >&2; exit 2; }
if [ -z "${IMGS:-}" ]; then
  [ -d data/synthetic/Testing ] || .venv/bin/python -m train.phantom --out data/synthetic >/dev/null
  IMGS=$(ls data/synthetic/Testing/*/*.jpg | awk 'NR%13==1' | head -8)
fi

echo "[pi-smoke] aarch64: $("$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -c 'import platform; print(platform.machine(), platform.python_version())')"
# shellcheck disable=SC2086
PYTHONPATH="$SITE:$PWD" "$QEMU" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -m device.classify \
  --runtime tflite-runtime --json --model "$MODEL" $IMGS > "$CACHE/arm64.jsonl"
# shellcheck disable=SC2086
.venv-device/bin/python -m device.classify --runtime tflite-runtime --json --model "$MODEL" $IMGS > "$CACHE/x86.jsonl"
.venv-device/bin/python - "$CACHE/arm64.jsonl" "$CACHE/x86.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) > 0, (len(a), len(b))
bad = 0
for ra, rb in zip(a, b):
    same = ra["label"] == rb["label"] and ra["probabilities"] == rb["probabilities"]
    bad += not same
    print(f"{'OK ' if same else 'DIFF'} {ra['path']}: arm64 {ra['label']} {ra['probability']:.4f} | x86 {rb['label']} {rb['probability']:.4f}")
print(f"[pi-smoke] {len(a) - bad}/{len(a)} predictions identical on aarch64 and x86_64")
sys.exit(1 if bad else 0)
PY
