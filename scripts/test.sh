#!/usr/bin/env bash
# Every test of the project, from a fresh clone: formatting, lints, unit and
# integration tests, the no_std build, and a short fuzz run of each parser.
# Installs what it needs (Debian packages, rustup components, cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n=== %s\n' "$*"; }

step "mosquitto (MQTT broker for the adaptation tests, started by the tests on loopback)"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "no_std builds of kernels and runtime"
cargo build -p shiftnn-kernels --no-default-features
cargo build -p shiftnn-runtime --no-default-features

step "tests"
# The kernel tests run every registered kernel whose ISA level this CPU
# has, and cap the level to each lower one in turn; say which x86 levels
# that covers, since a CI machine without AVX-512 cannot test those kernels.
has() { grep -qw "$1" /proc/cpuinfo; }
levels="scalar"
has avx2 && levels="$levels, avx2"
if has avx_vnni; then
  levels="$levels, avxvnni (VEX form)"
elif has avx512vl && has avx512_vnni; then
  levels="$levels, avxvnni (EVEX form only: this CPU lacks AVX-VNNI)"
else
  levels="$levels (NOT avxvnni: no AVX-VNNI or AVX-512 VNNI)"
fi
if has avx512vbmi && has avx512_vnni; then
  levels="$levels, avx512"
else
  levels="$levels (NOT avx512: this CPU lacks AVX-512 VBMI/VNNI)"
fi
echo "x86 levels tested: $levels"
cargo test --workspace

step "aarch64 kernels under qemu-user (cortex-a72: NEON; max: dotprod, FEAT_FP16)"
./scripts/test-aarch64.sh

step "no multiply instruction in the shift, lut and fexp kernels (x86-64, aarch64)"
./scripts/check-no-mul.sh

step "kernels crate docs, x86-64 and aarch64 (broken links are errors)"
# Each architecture compiles only its own kernel modules, so a doc link to
# the other's items breaks on one side only.
RUSTDOCFLAGS="-D warnings" cargo doc -q -p shiftnn-kernels --no-deps --document-private-items
RUSTDOCFLAGS="-D warnings" cargo doc -q -p shiftnn-kernels --no-deps --document-private-items \
  --target aarch64-unknown-linux-gnu

step "firmware: Cortex-M under qemu-system-arm, C API on x86-64 and aarch64"
./scripts/test-firmware.sh

if [ "${SKIP_FUZZ:-0}" != "1" ]; then
  step "fuzz (${FUZZ_SECONDS}s per target)"
  if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
  fi
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
  mkdir -p fuzz/corpus/shift_reader fuzz/corpus/onnx_import fuzz/corpus/sample_msg
  # Seed the corpora with real files so the fuzzer starts from valid input.
  cp tests/fixtures/onnx/*.onnx fuzz/corpus/onnx_import/ 2>/dev/null || true
  cp examples/fmnist/*.onnx fuzz/corpus/onnx_import/ 2>/dev/null || true
  cp tests/fixtures/firmware/*.shift fuzz/corpus/shift_reader/ 2>/dev/null || true
  for t in shift_reader onnx_import sample_msg; do
    (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 2>&1 | tail -n 3)
  done
fi

step "all tests passed"
