#!/usr/bin/env bash
# The main job on the bundled example, from a fresh machine: install the
# Fashion-MNIST data set (Debian package) and numpy, build shiftnn, write the
# test split as .npz, convert the bundled FP32 ONNX model at 4 and 3 bits
# (BITS="4 3 2" adds 2) in int8 and float modes, and print accuracy (float
# ONNX vs shift) and latency.
set -euo pipefail
cd "$(dirname "$0")/../.."

BITS="${BITS:-4 3}"
OUT=out/fmnist
DATA=examples/fmnist/data
MODEL="${MODEL:-examples/fmnist/fmnist_fp32.onnx}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# Debian's python3 gets numpy from apt; a python3 earlier on PATH (pyenv)
# may lack it, so use whichever interpreter has numpy.
find_python() { for p in /usr/bin/python3 python3; do if "$p" -c "import numpy" 2>/dev/null; then echo "$p"; return; fi; done; }
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ -z "$(find_python)" ]; then
  echo "== installing dataset-fashion-mnist and python3-numpy"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist python3-numpy >/dev/null
fi

echo "== building shiftnn (release)"
cargo build --release -q -p shiftnn-converter
BIN=target/release/shiftnn

if [ ! -f "$DATA/test.npz" ] || [ ! -f "$DATA/calib.npy" ]; then
  echo "== writing the test split and a calibration batch"
  "$(find_python)" python/fmnist_data.py --out "$DATA"
fi

mkdir -p "$OUT"
ref_json=""
rows=()
for mode in int8 float; do
  for b in $BITS; do
    f="$OUT/fmnist_b${b}_${mode}.shift"
    echo "== convert: ${b} bits, ${mode} mode"
    calib=(); [ "$mode" = int8 ] && calib=(--calib "$DATA/calib.npy")
    "$BIN" convert "$MODEL" -o "$f" --bits "$b" --mode "$mode" "${calib[@]}" >"$OUT/convert_b${b}_${mode}.txt"
    tail -n 4 "$OUT/convert_b${b}_${mode}.txt"
    if [ -z "$ref_json" ]; then
      ev=$("$BIN" eval "$f" --data "$DATA/test.npz" --reference "$MODEL" --json)
      ref_json="$ev"
    else
      ev=$("$BIN" eval "$f" --data "$DATA/test.npz" --json)
    fi
    be=$("$BIN" bench "$f" --iters 300 --json)
    rows+=("$b|$mode|$ev|$be|$(stat -c %s "$f")")
  done
done

"$(find_python)" - "$MODEL" "$ref_json" "${rows[@]}" <<'PY'
import json, os, sys
model, ref = sys.argv[1], json.loads(sys.argv[2])
print()
print(f"Fashion-MNIST test set, {ref['n']} images; FP32 ONNX model ({os.path.getsize(model)} bytes): top-1 {100*ref['reference_top1']:.2f}%")
print(f"{'bits':>4} {'mode':>6} {'top-1 %':>8} {'vs FP32':>8} {'file bytes':>11} {'p50 ms':>8} {'p99 ms':>8} {'arena B':>8}")
for row in sys.argv[3:]:
    b, mode, ev, be, size = row.split("|")
    ev, be = json.loads(ev), json.loads(be)
    d = 100 * (ev["top1"] - ref["reference_top1"])
    print(f"{b:>4} {mode:>6} {100*ev['top1']:8.2f} {d:+8.2f} {int(size):11d} {be['p50_ms']:8.3f} {be['p99_ms']:8.3f} {be['arena_bytes']:8d}")
PY
