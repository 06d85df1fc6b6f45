#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the ivvmm guest kernel (Linux 6.1 from Debian's linux-source-6.1)
# from `make allnoconfig` + guest/kernel/ivvmm.config; with --nested, the
# L1 kernel of guest/nested/ instead: the same fragment plus
# guest/nested/l1.config (KVM_AMD built in, unix sockets, ACPI), later
# lines winning; with --acpi, the guest kernel with CONFIG_ACPI on
# (guest/kernel/acpi.config), to test the ACPI path with our own kernel.
#
# Everything lands in ~/.cache/ivvmm/kernel-<key>/ (nested: nested-<key>/,
# acpi: kernel_acpi-<key>/; or under $IVVMM_CACHE), where <key> hashes the inputs: the source package
# version and tarball, the config fragments, this script and the compiler.
# The unpacked tree (src/) and the build tree (build/, the O= directory) are
# kept so that out-of-tree modules (guest/driver) can be built against it
# later. The nested and acpi kernels build from the guest kernel's src/ when
# that is there (read-only, O= build), else they unpack their own.
#
# Usage:
# (--acpi works wherever --nested does.)
#   build.sh [--nested]                   build if needed; the last line is the bzImage path
#   build.sh [--nested] --print-path      print the bzImage path if built (exit 1 if not)
#   build.sh [--nested] --print-build-dir print the build (O=) directory if built (exit 1 if not)
#   build.sh [--nested] --print-key       print the cache key
#
# It installs nothing: scripts/setup provides linux-source-6.1, gcc, make,
# bc, bison, flex, libelf-dev, libssl-dev, cpio, kmod, xz-utils.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragments=("$here/ivvmm.config")
name=kernel
case "${1:-}" in
--nested)
	fragments+=("$(dirname "$here")/nested/l1.config")
	name=nested
	shift
	;;
--acpi)
	fragments+=("$here/acpi.config")
	name=kernel_acpi
	shift
	;;
esac
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
	echo "fragments=$(cat "${fragments[@]}" | sha256sum)"
	echo "script=$(sha256sum <"${BASH_SOURCE[0]}")"
	echo "cc=$(gcc -dumpfullversion 2>/dev/null || echo none)"
}
key=$(key_inputs | sha256sum | cut -c1-16)
dir=$cache/$name-$key
build=$dir/build
bzimage=$build/arch/x86/boot/bzImage

case "${1:-}" in
--print-key)
	echo "$key"
	exit 0
	;;
--print-path | --print-build-dir)
	[ -f "$dir/done" ] || die "no $name kernel built for the current inputs (key $key): run scripts/setup"
	if [ "$1" = --print-path ]; then echo "$bzimage"; else echo "$build"; fi
	exit 0
	;;
"") ;;
*) die "unknown option '$1' (use --print-path, --print-build-dir or --print-key)" ;;
esac

mkdir -p "$cache"
# One builder per key; a second concurrent run waits and then finds it done.
exec 9>"$cache/$name-$key.lock"
flock 9

if [ -f "$dir/done" ]; then
	echo "kernel build dir: $build"
	echo "$bzimage"
	exit 0
fi

start=$(date +%s)
rm -rf "$dir"
mkdir -p "$build"

src=$dir/src
if [ "$name" != kernel ] && gbuild=$("$here/build.sh" --print-build-dir 2>/dev/null) &&
	[ -f "$(dirname "$gbuild")/src/Makefile" ]; then
	src=$(dirname "$gbuild")/src
else
	mkdir -p "$src"
	echo "unpacking $tarball ..." >&2
	tar -xJf "$tarball" -C "$src" --strip-components=1
fi

# allnoconfig as the base, the fragments on top (-n), then olddefconfig to
# settle dependencies. ARCH=x86_64 matters: with ARCH=x86 allnoconfig would
# pick a 32-bit kernel.
export ARCH=x86_64
merged=$dir/fragment.config
cat "${fragments[@]}" >"$merged"
(cd "$src" && scripts/kconfig/merge_config.sh -n -O "$build" "$merged" >"$dir/merge_config.log")
make -s -C "$src" O="$build" olddefconfig

# merge_config.sh only warns when a request was dropped; we refuse. Each
# symbol is checked against its last request.
missing=0
while IFS= read -r want; do
	sym=${want#\# }
	sym=${sym%%[= ]*}
	got=$(grep -E "^(# )?${sym}[= ]" "$build/.config" || true)
	if [ "$want" != "$got" ] && ! { [ -z "$got" ] && [ "${want#\# }" != "$want" ]; }; then
		echo "config: asked for '$want', got '${got:-<absent>}'" >&2
		missing=1
	fi
done < <(grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$merged" |
	awk '{ s = $0; sub(/^# /, "", s); sub(/[= ].*/, "", s); last[s] = $0; order[++n] = s }
	     END { for (i = 1; i <= n; i++) if (!(order[i] in seen)) { seen[order[i]] = 1; print last[order[i]] } }')
[ "$missing" = 0 ] || die "the final .config lost requested options (see above); fix ${fragments[*]}"

# `all` = vmlinux, bzImage and modules (none in-tree, but it writes
# Module.symvers, which out-of-tree module builds need to resolve symbols).
echo "building the $name bzImage with $jobs jobs ..." >&2
make -s -C "$src" O="$build" -j"$jobs" all >"$dir/make.log" 2>&1 ||
	{ tail -40 "$dir/make.log" >&2; die "kernel build failed (full log: $dir/make.log)"; }

end=$(date +%s)
{
	echo "key=$key"
	echo "seconds=$((end - start))"
	key_inputs
} >"$dir/done"
echo "$name built in $((end - start)) s; build dir: $build" >&2
echo "kernel build dir: $build"
echo "$bzimage"
