#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the ivvmm guest kernel (Linux 6.1 from Debian's linux-source-6.1)
# from `make allnoconfig` + guest/kernel/ivvmm.config.
#
# Everything lands in ~/.cache/ivvmm/kernel-<key>/ (or $IVVMM_CACHE), where
# <key> hashes the inputs: the source package version and tarball, the
# config fragment, this script and the compiler. The unpacked tree (src/) and
# the build tree (build/, the O= directory) are kept so that out-of-tree
# modules (guest/driver) can be built against it later.
#
# Usage:
#   build.sh                   build if needed; the last line is the bzImage path
#   build.sh --print-path      print the bzImage path if built (exit 1 if not)
#   build.sh --print-build-dir print the build (O=) directory if built (exit 1 if not)
#   build.sh --print-key       print the cache key
#
# It installs nothing: scripts/setup provides linux-source-6.1, gcc, make,
# bc, bison, flex, libelf-dev, libssl-dev, cpio, kmod, xz-utils.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/ivvmm.config
tarball=${IVVMM_KERNEL_TAR:-/usr/src/linux-source-6.1.tar.xz}
cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
jobs=${IVVMM_JOBS:-$(nproc)}

die() {
	echo "guest/kernel/build.sh: $*" >&2
	exit 1
}

[ -f "$tarball" ] || die "$tarball is missing: install linux-source-6.1 (run scripts/setup)"

key_inputs() {
	echo "pkg=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo none)"
	echo "tar=$tarball $(stat -c '%s %Y' "$tarball")"
	echo "fragment=$(sha256sum <"$fragment")"
	echo "script=$(sha256sum <"${BASH_SOURCE[0]}")"
	echo "cc=$(gcc -dumpfullversion 2>/dev/null || echo none)"
}
key=$(key_inputs | sha256sum | cut -c1-16)
dir=$cache/kernel-$key
build=$dir/build
bzimage=$build/arch/x86/boot/bzImage

case "${1:-}" in
--print-key)
	echo "$key"
	exit 0
	;;
--print-path | --print-build-dir)
	[ -f "$dir/done" ] || die "no kernel built for the current inputs (key $key): run scripts/setup or guest/kernel/build.sh"
	if [ "$1" = --print-path ]; then echo "$bzimage"; else echo "$build"; fi
	exit 0
	;;
"") ;;
*) die "unknown option '$1' (use --print-path, --print-build-dir or --print-key)" ;;
esac

mkdir -p "$cache"
# One builder per key; a second concurrent run waits and then finds it done.
exec 9>"$cache/kernel-$key.lock"
flock 9

if [ -f "$dir/done" ]; then
	echo "kernel build dir: $build"
	echo "$bzimage"
	exit 0
fi

start=$(date +%s)
rm -rf "$dir"
mkdir -p "$dir/src" "$build"

echo "unpacking $tarball ..." >&2
tar -xJf "$tarball" -C "$dir/src" --strip-components=1

# allnoconfig as the base, the fragment on top (-n), then olddefconfig to
# settle dependencies. ARCH=x86_64 matters: with ARCH=x86 allnoconfig would
# pick a 32-bit kernel.
export ARCH=x86_64
(cd "$dir/src" && scripts/kconfig/merge_config.sh -n -O "$build" "$fragment" >"$dir/merge_config.log")
make -s -C "$dir/src" O="$build" olddefconfig

# merge_config.sh only warns when a request was dropped; we refuse.
missing=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*) want=$line ;;
	"# CONFIG_"*" is not set") want=$line ;;
	*) continue ;;
	esac
	sym=${want#\# }
	sym=${sym%%[= ]*}
	got=$(grep -E "^(# )?$sym[= ]" "$build/.config" || true)
	if [ "$want" != "$got" ] && ! { [ -z "$got" ] && [ "${want#\# }" != "$want" ]; }; then
		echo "config: asked for '$want', got '${got:-<absent>}'" >&2
		missing=1
	fi
done <"$fragment"
[ "$missing" = 0 ] || die "the final .config lost requested options (see above); fix guest/kernel/ivvmm.config"

# `all` = vmlinux, bzImage and modules (none in-tree, but it writes
# Module.symvers, which out-of-tree module builds need to resolve symbols).
echo "building bzImage with $jobs jobs ..." >&2
make -s -C "$dir/src" O="$build" -j"$jobs" all >"$dir/make.log" 2>&1 ||
	{ tail -40 "$dir/make.log" >&2; die "kernel build failed (full log: $dir/make.log)"; }

end=$(date +%s)
{
	echo "key=$key"
	echo "seconds=$((end - start))"
	key_inputs
} >"$dir/done"
echo "kernel built in $((end - start)) s; build dir: $build" >&2
echo "kernel build dir: $build"
echo "$bzimage"
