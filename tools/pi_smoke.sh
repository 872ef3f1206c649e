#!/usr/bin/env bash
# make pi-smoke: run the device package on both Raspberry Pi OS lines, emulated, with the REAL aarch64 wheels,
# and check that its answers equal x86's on scans of all four classes:
#   bookworm: Debian bookworm arm64 userland, Python 3.11, tflite-runtime 2.14 + numpy<2 (Pi OS Bookworm)
#   trixie:   Debian trixie arm64 userland, Python 3.13, ai-edge-litert + numpy 2 (Pi OS Trixie)
# Both run under qemu-user 10 from Debian trixie (bookworm's qemu 7.2 crashes in LiteRT).
#
# Proves: the aarch64 wheels install and import on each line, the device code runs there with no TensorFlow,
# and int8 inference gives the same answers as on x86. Does not prove: speed (emulation is many times slower
# than a Pi), memory, or behaviour on real Pi hardware and kernels. Needs (first run only, then cached in
# .cache/pi): debootstrap (installed here when missing), the Debian mirror and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PI_CACHE:-.cache/pi}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MODEL=${MODEL:-device/models/student_int8.tflite}
LINES=${LINES:-bookworm trixie}
mkdir -p "$CACHE"
log() { echo "[pi-smoke] $*"; }

# 1. qemu-user 10 (static) from Debian trixie, unpacked, not installed.
QEMU=$CACHE/qemu10/usr/bin/qemu-aarch64
if [ ! -x "$QEMU" ]; then
  log "fetching qemu-user from Debian trixie"
  deb=$(curl -fsS "$MIRROR/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc \
        | awk '/^Package: qemu-user$/{f=1} f&&/^Filename:/{print $2; f=0}')  # no early exit: SIGPIPE under pipefail
  curl -fsS -o "$CACHE/qemu-user-trixie.deb" "$MIRROR/$deb"
  dpkg -x "$CACHE/qemu-user-trixie.deb" "$CACHE/qemu10"
fi
QEMU_VERSION=$("$QEMU" --version | head -1)

# 2. A recent pip: an old one resolves numpy for the host's Python instead of the --python-version target.
PIP=$CACHE/pip/bin/pip
if [ ! -x "$PIP" ]; then
  python3 -m venv "$CACHE/pip" && "$PIP" install -q -U pip
fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  { apt-get update -qq && apt-get install -y -qq debootstrap; } >"$CACHE/apt.log" 2>&1 \
    || { echo "error: debootstrap is missing and could not be installed (see $CACHE/apt.log)" >&2; exit 2; }
fi

# 3. Scans of all four classes (synthetic phantoms: no data needed), and a real int8 model.
[ -f "$MODEL" ] || { echo "error: no int8 model at $MODEL (make all, or MODEL=...)" >&2; exit 2; }
[ -d data/synthetic/Testing ] || .venv/bin/python -m train.phantom --out data/synthetic >/dev/null
# The shipped teacher beside the model gives every answer a second opinion, compared across machines too.
SECOND=(); [ -f "$(dirname "$MODEL")/teacher_int8.tflite" ] && SECOND=(--second-opinion)
IMGS=$(for c in data/synthetic/Testing/*/; do ls "$c"*.jpg | sed -n 1,2p; done)  # sed reads all: no SIGPIPE under pipefail

run_line() {  # suite python runtime x86-python packages...
  local suite=$1 py=$2 runtime=$3 x86=$4; shift 4
  local rootfs=$CACHE/$suite site=$CACHE/site-$suite
  if [ ! -x "$rootfs/usr/bin/python$py" ]; then
    log "debootstrap arm64 $suite (once)"
    rm -rf "$rootfs"
    debootstrap --foreign --arch=arm64 --variant=minbase --include="python$py-minimal,libpython$py-stdlib" \
      "$suite" "$rootfs" "$MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 \
      || { tail -5 "$CACHE/debootstrap-$suite.log"; exit 2; }
    # --foreign leaves the .debs unpacked only partly: unpack them all (no maintainer scripts are needed).
    for deb in "$rootfs"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$rootfs"; done
  fi
  if [ ! -f "$site/.done" ]; then
    log "installing the aarch64 wheels for $suite: $*"
    rm -rf "$site"
    "$PIP" install -q --target "$site" --platform manylinux_2_34_aarch64 --platform manylinux_2_27_aarch64 \
      --platform manylinux2014_aarch64 --python-version "$py" --implementation cp --only-binary=:all: "$@"
    touch "$site/.done"
  fi
  local pyrun=("$QEMU" -L "$rootfs" "$rootfs/usr/bin/python$py")
  log "$suite: $(PYTHONPATH="$site" "${pyrun[@]}" -c 'import platform, numpy; print(platform.machine(), "Python", platform.python_version(), "numpy", numpy.__version__)'), runtime $runtime, $QEMU_VERSION"
  # shellcheck disable=SC2086
  PYTHONPATH="$site:$PWD" "${pyrun[@]}" -m device.classify --runtime "$runtime" --json --model "$MODEL" \
    "${SECOND[@]}" $IMGS > "$CACHE/$suite-arm64.jsonl"
  # The web page (device/serve.py) answers one upload there too, with its explanation map.
  PYTHONPATH="$site:$PWD" "${pyrun[@]}" - "$MODEL" "$runtime" $IMGS <<'PY'
import http.client, json, sys, threading
from device.runtime import Classifier, ClassifierOptions
from device.serve import Server
clf = Classifier(sys.argv[1], ClassifierOptions(runtime=sys.argv[2]))
srv = Server(("127.0.0.1", 0), clf)
threading.Thread(target=srv.serve_forever, daemon=True).start()
c = http.client.HTTPConnection(*srv.server_address[:2], timeout=900)
c.request("POST", "/classify", body=open(sys.argv[3], "rb").read())
r = c.getresponse()
a = json.loads(r.read())
assert r.status == 200 and a["explanation_png"], (r.status, a)
print(f"[pi-smoke] serve: one upload answered {a['label']} {a['probability']:.4f}, map in {a['explain_ms']} ms")
srv.shutdown()
clf.close()
PY
  # shellcheck disable=SC2086
  "$x86" -m device.classify --runtime "$runtime" --json --model "$MODEL" "${SECOND[@]}" $IMGS \
    > "$CACHE/$suite-x86.jsonl"
  "$x86" - "$CACHE/$suite-arm64.jsonl" "$CACHE/$suite-x86.jsonl" "$suite" <<'PY'
import json, sys
a = [json.loads(line) for line in open(sys.argv[1])]
b = [json.loads(line) for line in open(sys.argv[2])]
assert len(a) == len(b) > 0 and all("label" in r for r in a + b), (len(a), len(b))
classes, bad, worst = set(), 0, 0.0
for ra, rb in zip(a, b):
    diff = max(abs(ra["probabilities"][c] - rb["probabilities"][c]) for c in ra["probabilities"])
    same = ra["label"] == rb["label"] and diff <= 1 / 256 + 1e-4  # at most one uint8 output step
    same = same and ra.get("second_opinion") == rb.get("second_opinion")  # the teacher's answer (--second-opinion)
    bad, worst = bad + (not same), max(worst, diff)
    classes.add(ra["path"].split("/")[-2])
    print(f"{'OK ' if same else 'DIFF'} {ra['path']}: arm64 {ra['label']} {ra['probability']:.4f} | "
          f"x86 {rb['label']} {rb['probability']:.4f}")
print(f"[pi-smoke] {sys.argv[3]}: {len(a) - bad}/{len(a)} answers equal on aarch64 and x86_64 "
      f"(classes {', '.join(sorted(classes))}; max |dp| {worst:.4f})")
sys.exit(1 if bad else 0)
PY
}

for line in $LINES; do
  case $line in
    bookworm) run_line bookworm 3.11 tflite-runtime .venv-device/bin/python \
                "tflite-runtime==2.14.0" "numpy<2" pillow pydicom ;;
    trixie)   run_line trixie 3.13 litert .venv/bin/python ai-edge-litert numpy pillow pydicom ;;
    *) echo "error: unknown line $line (bookworm | trixie)" >&2; exit 2 ;;
  esac
done
