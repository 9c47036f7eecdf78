#!/usr/bin/env bash
# Issue 4 in CI: no_std builds for Cortex-M, the C API (header freshness, the
# C example on x86-64 and on aarch64 under qemu-user), the firmware fixtures'
# freshness, the Cortex-M kernels against scalar and the Fashion-MNIST
# firmware test under qemu-system-arm on mps2-an386 (Cortex-M4) and
# mps3-an547 (Cortex-M55), plus size and instruction figures.
# Installs what it needs (Debian packages, rustup targets). From a fresh clone:
#
#   ./scripts/test-firmware.sh
#
# SKIP_AARCH64=1 skips the aarch64 C run; FIRMWARE_TIMEOUT (s) bounds each
# qemu run (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
step() { printf '\n=== %s\n' "$*"; }

step "packages"
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null || need+=(binutils-arm-none-eabi)
# The fixture freshness check regenerates the data set arrays.
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
/usr/bin/python3 -c "import numpy" 2>/dev/null || need+=(python3-numpy)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "rustup targets"
rustup target add thumbv7em-none-eabihf thumbv8m.main-none-eabihf aarch64-unknown-linux-gnu

THUMBS="thumbv7em-none-eabihf thumbv8m.main-none-eabihf"
step "no_std builds of kernels and runtime for Cortex-M"
for t in $THUMBS; do
  cargo build -p shiftnn-kernels -p shiftnn-runtime --no-default-features --target "$t"
done
# The Cortex-M kernels (kernels/src/arm/) only compile for Arm: lint them there.
cargo clippy -q -p shiftnn-kernels --no-default-features --target thumbv7em-none-eabihf -- -D warnings

step "C header is what cbindgen generates"
cargo test -q -p shiftnn-capi --test header

step "firmware fixtures are current (re-converted and re-run on the host)"
DATA=examples/fmnist/data
if [ ! -f "$DATA/test.npz" ] || [ ! -f "$DATA/calib.npy" ]; then
  /usr/bin/python3 python/fmnist_data.py --out "$DATA"
fi
SHIFTNN_REQUIRE_DATA=1 cargo test -q -p shiftnn-capi --test firmware_fixtures
# The CLI agrees: `shiftnn convert` writes the same bytes, `shiftnn inspect`
# prints the arena size the firmware declares.
FIX=tests/fixtures/firmware
cargo build -q -p shiftnn-converter --bin shiftnn
shiftnn="${CARGO_TARGET_DIR:-target}/debug/shiftnn"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$shiftnn" convert examples/fmnist/fmnist_fp32.onnx -o "$tmp/m.shift" \
  --bits 4 --mode int8 --calib "$DATA/calib.npy" >/dev/null
cmp "$tmp/m.shift" "$FIX/fmnist_b4_int8.shift"
arena=$("$shiftnn" inspect --json "$FIX/fmnist_b4_int8.shift" |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["arena_bytes"])')
grep -q "ARENA_BYTES: usize = $arena;" "$FIX/model_consts.rs"
echo "shiftnn convert output identical; shiftnn inspect: arena $arena bytes (= firmware ARENA_BYTES)"

step "C API tests (Rust side)"
cargo test -q -p shiftnn-capi --test api --lib

step "C example on x86-64 (static and shared library)"
make -C examples/c run

if [ "${SKIP_AARCH64:-0}" != "1" ]; then
  step "C example on aarch64 under qemu-user"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    make -C examples/c run RUST_TARGET=aarch64-unknown-linux-gnu CC=aarch64-linux-gnu-gcc \
    RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
fi

step "firmware: fmt and clippy"
(cd firmware && cargo fmt -- --check)
(cd firmware && cargo clippy -q --release --target thumbv7em-none-eabihf -- -D warnings)

step "firmware: Fashion-MNIST under qemu-system-arm"
declare -A MACHINE=([thumbv7em-none-eabihf]=mps2-an386 [thumbv8m.main-none-eabihf]=mps3-an547)
sizes=()
# The firmware workspace's cargo output (an absolute $CARGO_TARGET_DIR wins,
# as it does for cargo).
fwt="${CARGO_TARGET_DIR:-firmware/target}"
for t in $THUMBS; do
  (cd firmware && cargo build --release --target "$t")
  elf=$fwt/$t/release/fmnist-test
  m=${MACHINE[$t]}
  echo "--- $m ($t)"
  # -icount shift=0: one virtual ns per instruction, so the firmware can
  # count instructions with SysTick.
  set +e
  timeout "${FIRMWARE_TIMEOUT:-600}" qemu-system-arm -machine "$m" -nographic -icount shift=0 \
    -semihosting-config enable=on,target=native -kernel "$elf"
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    echo "firmware test failed on $m (exit $rc)"
    exit 1
  fi
  # Every Cortex-M kernel against scalar on random shapes, and instructions
  # per call on the model's layer shapes.
  timeout 300 qemu-system-arm -machine "$m" -nographic -icount shift=0 \
    -semihosting-config enable=on,target=native -kernel "$fwt/$t/release/kernel-test"
  # The minimal firmware (runtime + model + one inference) must run too.
  timeout 120 qemu-system-arm -machine "$m" -nographic \
    -semihosting-config enable=on,target=native -kernel "$fwt/$t/release/minimal"
  for b in minimal fmnist-test; do
    sizes+=("$(arm-none-eabi-size -A "$fwt/$t/release/$b" |
      awk -v b="$b" -v t="$t" '$1 ~ /^\.(vector_table|text|rodata|data)$/ {f+=$2} $1 ~ /^\.(data|bss|uninit)$/ {r+=$2}
        END {printf "%-12s %-28s flash %7d B  static RAM %7d B", b, t, f, r}')")
  done
done

step "sizes (flash = .vector_table+.text+.rodata+.data; static RAM = .data+.bss+.uninit, incl. the 48 KiB load heap)"
printf '%s\n' "${sizes[@]}"

step "firmware: all passed"
