#!/usr/bin/env bash
# Edge-side adaptation tests (issue 5): selection, upload queue, signed
# affine patches, atomic swap between sessions, alpha-BN; plus the no_std
# build of the runtime. Installs mosquitto for the MQTT transport tests
# (the broker is started by the tests themselves, on loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ -x "$(command -v apt-get)" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    else
        echo "note: mosquitto missing and not root; MQTT tests will skip" >&2
    fi
fi
# The Debian package may start a system broker on 1883; the tests use their
# own ports, so leave it alone.

cargo test -p shiftnn-runtime --lib adapt::
cargo test -p shiftnn-runtime --test adapt_queue --test adapt_patch \
    --test adapt_alpha_bn --test adapt_no_alloc
cargo build -p shiftnn-runtime --no-default-features --target thumbv7em-none-eabihf
