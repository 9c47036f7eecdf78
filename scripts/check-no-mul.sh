#!/usr/bin/env bash
# The multiplication-free kernel families (shift, lut, fexp) have no
# multiply instruction: disassemble the release build of the kernels crate
# and grep their row-kernel functions (`*::shift_rows`, `*::lut_rows` (on
# x86-64: `avx2::lut_rows` and the AVX-512 kernel's `lut::lut_rows`),
# `*::fexp_rows`, and `gemm_shift::list_rows`, the exponent-list GEMM's,
# which hold the inner loops: on x86 they are
# target_feature functions and stay out of line; on aarch64 NEON is
# baseline and they are inlined into `<Shift as RowKernel>::dot` and so
# on, which are checked whole) for integer, SIMD and float
# multiplies. As a control, the `dot` row kernels must show a multiply,
# so a pattern that matches nothing cannot pass silently. x86-64 always;
# aarch64 too when its cross toolchain is installed (scripts/test-aarch64.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

rlib() { # target -> path of the kernels rlib
  cargo build -q -p shiftnn-kernels --release --target "$1" --message-format=json \
    | grep -o '"filenames":\["[^"]*libshiftnn_kernels[^"]*\.rlib"' | head -n1 | cut -d'"' -f4
}

check() { # objdump rlib multiply-regex [allowed-regex]
  local dump
  dump=$("$1" -d --no-show-raw-insn -C "$2" | awk '
    /^[0-9a-f]+ </ { f = $0; next }
    /^ / { print f "|" $0 }')
  local free dot
  free=$(grep -E '(::(shift|lut|fexp)_rows|gemm_shift::list_rows|::(Shift|Lut|Fexp) as [^>]*RowKernel>::dot)>' <<<"$dump" || true)
  dot=$(grep -E '(::(dot|sdot|w8)_rows|::(Dot|SDot|W8) as [^>]*RowKernel>::dot)>' <<<"$dump" || true)
  if [ -z "$free" ] || [ -z "$dot" ]; then
    echo "no kernel functions found in $2" >&2
    return 1
  fi
  if ! grep -qiE "$3" <<<"$dot"; then
    echo "control failed: no multiply found in the dot kernels of $2" >&2
    return 1
  fi
  if [ -n "${4:-}" ]; then
    free=$(grep -vE "$4" <<<"$free" || true)
  fi
  if grep -iE "$3" <<<"$free"; then
    echo "multiply instruction in a multiplication-free kernel ($2)" >&2
    return 1
  fi
  echo "ok: $(grep -cE '^' <<<"$free") instructions of shift/lut/fexp row kernels, no multiply ($2)"
}

X86_MUL='\s(imul|mul|mulx|v?pmull[dwq]*|v?pmadd[a-z]*|v?pmul[a-z]*|v?mul[ps][sd]|vfn?m(add|sub)[0-9a-z]*|vpdp[a-z]*)\s'
# Allowed: `vpmultishiftqb`, the AVX-512 code decode's bit-field extract
# (it selects bytes at bit offsets; it multiplies nothing).
X86_OK='\svpmultishiftqb\s'
check objdump "$(rlib x86_64-unknown-linux-gnu)" "$X86_MUL" "$X86_OK"

if command -v aarch64-linux-gnu-objdump >/dev/null 2>&1 && command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 \
  && rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  A64_MUL='\s(mul|madd|msub|[su]mull2?|[su]maddl|[su]msubl|[su]dot|usdot|f?mla|f?mls|fmul[a-z]*|fn?madd|fn?msub|[su]mlal2?|[su]mlsl2?|sqr?dmul[a-z]*|sqdml[as]l2?|pmull2?|smmla|ummla)\s'
  # Allowed: 64-bit scalar multiply-adds, which LLVM uses for address
  # arithmetic (the `(NP - 1) * stride` bound check in each function's
  # prologue); activations and weights live in vector registers.
  A64_ADDR='\s(madd|mul)\s+x[0-9]+, x[0-9]+, x[0-9]+'
  check aarch64-linux-gnu-objdump "$(rlib aarch64-unknown-linux-gnu)" "$A64_MUL" "$A64_ADDR"
fi
