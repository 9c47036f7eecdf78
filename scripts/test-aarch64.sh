#!/usr/bin/env bash
# The kernels crate's tests on aarch64 under qemu-user, twice: with
# `-cpu cortex-a72` (ARMv8.0 NEON, no dotprod, no FEAT_FP16: fallback
# paths) and with the default `max` CPU (dotprod, FEAT_FP16, i8mm, sve). Installs what it needs (Debian
# cross gcc and libc, qemu-user, the rustup target). See shared CROSS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1 \
  || [ ! -d "$SYSROOT/lib" ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
rustup target add "$TARGET" >/dev/null 2>&1 || rustup target add "$TARGET"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

for cpu in cortex-a72 max; do
  printf '\n=== aarch64 kernels tests, qemu -cpu %s\n' "$cpu"
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L $SYSROOT"
  cargo test -p shiftnn-kernels --release --target "$TARGET" "$@"
done
