#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the guest tool `ivshm` as a static x86_64 binary for the initramfs.
# Output: ~/.cache/ivvmm/ivshm-<key> (or $IVVMM_CACHE), where <key> hashes
# the sources, Cargo.lock, this script and the rustc version; the last line
# printed is its path. A second run with the same inputs builds nothing.
#
#   build.sh               build if needed, print the path
#   build.sh --print-path  print the path if built (exit 1 if not)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
target=x86_64-unknown-linux-gnu

die() {
	echo "guest/tool/build.sh: $*" >&2
	exit 1
}

key_inputs() {
	(cd "$here" && find Cargo.toml Cargo.lock build.sh src -type f | LC_ALL=C sort | xargs sha256sum)
	rustc -vV 2>/dev/null || echo "rustc missing"
}
key=$(key_inputs | sha256sum | cut -c1-16)
out=$cache/ivshm-$key

case "${1:-}" in
--print-path)
	[ -x "$out" ] || die "no guest tool built for the current sources (key $key): run scripts/setup or guest/tool/build.sh"
	echo "$out"
	exit 0
	;;
"") ;;
*) die "unknown option '$1' (use --print-path)" ;;
esac

if [ ! -x "$out" ]; then
	command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"
	mkdir -p "$cache"
	# crt-static links glibc statically: the initramfs has no libc.
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
		--manifest-path "$here/Cargo.toml" --target "$target" \
		--target-dir "$cache/tool-target" >&2
	bin=$cache/tool-target/$target/release/ivshm
	# A static(-pie) binary has no program interpreter and no DT_NEEDED.
	if readelf -ld "$bin" | grep -qE 'INTERP|\(NEEDED\)'; then
		die "$bin is not statically linked"
	fi
	cp "$bin" "$out.tmp"
	mv "$out.tmp" "$out"
fi
echo "$out"
