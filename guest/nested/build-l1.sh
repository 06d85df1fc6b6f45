#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the L1 kernel for nested runs: Linux 6.1 from `make allnoconfig` +
# guest/kernel/ivvmm.config + guest/nested/l1.config (KVM_AMD built in, unix
# sockets for ivvmm server). It runs under QEMU TCG, which emulates AMD SVM,
# and gives ivvmm a hardware-style /dev/kvm on which our guest kernel boots.
#
# Cached in ~/.cache/ivvmm/nested-<key>/ (or $IVVMM_CACHE); <key> hashes the
# source package, both fragments, this script and the compiler. The Linux
# tree unpacked by guest/kernel/build.sh is reused (read-only: O= build) when
# there is one, else the tarball is unpacked here. About 3-4 min on 2 cores.
#
#   build-l1.sh               build if needed; the last line is the bzImage path
#   build-l1.sh --print-path  print the bzImage path if built (exit 1 if not)
#   build-l1.sh --print-key   print the cache key
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest=$(dirname "$here")
fragments=("$guest/kernel/ivvmm.config" "$here/l1.config")
tarball=${IVVMM_KERNEL_TAR:-/usr/src/linux-source-6.1.tar.xz}
cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
jobs=${IVVMM_JOBS:-$(nproc)}

die() {
	echo "guest/nested/build-l1.sh: $*" >&2
	exit 1
}

[ -f "$tarball" ] || die "$tarball is missing: install linux-source-6.1 (run scripts/setup)"

key_inputs() {
	echo "pkg=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo none)"
	echo "tar=$tarball $(stat -c '%s %Y' "$tarball")"
	cat "${fragments[@]}" | sha256sum | sed 's/^/fragments=/'
	echo "script=$(sha256sum <"${BASH_SOURCE[0]}")"
	echo "cc=$(gcc -dumpfullversion 2>/dev/null || echo none)"
}
key=$(key_inputs | sha256sum | cut -c1-16)
dir=$cache/nested-$key
build=$dir/build
bzimage=$build/arch/x86/boot/bzImage

case "${1:-}" in
--print-key)
	echo "$key"
	exit 0
	;;
--print-path)
	[ -f "$dir/done" ] || die "no L1 kernel built for the current inputs (key $key): run guest/nested/build-l1.sh"
	echo "$bzimage"
	exit 0
	;;
"") ;;
*) die "unknown option '$1' (use --print-path or --print-key)" ;;
esac

mkdir -p "$cache"
exec 9>"$cache/nested-$key.lock"
flock 9

if [ -f "$dir/done" ]; then
	echo "$bzimage"
	exit 0
fi

start=$(date +%s)
rm -rf "$dir"
mkdir -p "$build"

# The guest kernel's unpacked tree, if it is there and from the same tarball.
src=""
if gbuild=$("$guest/kernel/build.sh" --print-build-dir 2>/dev/null); then
	src=$(dirname "$gbuild")/src
	[ -f "$src/Makefile" ] || src=""
fi
if [ -z "$src" ]; then
	src=$dir/src
	mkdir -p "$src"
	echo "unpacking $tarball ..." >&2
	tar -xJf "$tarball" -C "$src" --strip-components=1
fi
echo "L1 kernel: source $src, build $build" >&2

# One fragment, later lines winning (merge_config.sh does the same; we need
# the merged view to check the result).
merged=$dir/fragment.config
cat "${fragments[@]}" >"$merged"

export ARCH=x86_64
(cd "$src" && scripts/kconfig/merge_config.sh -n -O "$build" "$merged" >"$dir/merge_config.log")
make -s -C "$src" O="$build" olddefconfig

# Every symbol's last requested value must survive olddefconfig.
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
[ "$missing" = 0 ] || die "the final .config lost requested options (see above); fix guest/nested/l1.config"

echo "building the L1 bzImage with $jobs jobs ..." >&2
make -s -C "$src" O="$build" -j"$jobs" bzImage >"$dir/make.log" 2>&1 ||
	{ tail -40 "$dir/make.log" >&2; die "L1 kernel build failed (full log: $dir/make.log)"; }

end=$(date +%s)
{
	echo "key=$key"
	echo "seconds=$((end - start))"
	key_inputs
} >"$dir/done"
echo "L1 kernel built in $((end - start)) s" >&2
echo "$bzimage"
