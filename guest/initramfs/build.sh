#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the ivvmm test initramfs: busybox-static, the ivshmem driver built
# against our kernel, the static guest tool `ivshm`, /init and the guest
# test scripts, as a gzip cpio:
#   ~/.cache/ivvmm/initramfs-<key>.cpio.gz   (or under $IVVMM_CACHE)
# <key> hashes every input (kernel build, driver sources, tool, busybox,
# /init, scripts, this script). The last line printed is the path.
#
#   build.sh [KERNEL_BUILD_DIR]               build if needed
#   build.sh --print-path [KERNEL_BUILD_DIR]  print the path if built, else exit 1
# KERNEL_BUILD_DIR defaults to `guest/kernel/build.sh --print-build-dir`.
# It may also be a distribution's headers tree (e.g. Debian's
# /usr/src/linux-headers-<release>, as guest/stock/fetch.sh unpacks it): the
# driver then builds out of tree against it, as DKMS would, and
# gen_init_cpio comes from our own guest kernel's build tree.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest=$(dirname "$here")
cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
busybox=${IVVMM_BUSYBOX:-/bin/busybox}

die() {
	echo "guest/initramfs/build.sh: $*" >&2
	exit 1
}

print_only=no
if [ "${1:-}" = --print-path ]; then
	print_only=yes
	shift
fi
case "${1:-}" in -*) die "unknown option '$1' (use --print-path [KERNEL_BUILD_DIR])" ;; esac
kbuild=${1:-$("$guest/kernel/build.sh" --print-build-dir)}
[ -f "$kbuild/Module.symvers" ] || die "$kbuild is not a built kernel tree (no Module.symvers): run guest/kernel/build.sh"
kbuild=$(cd "$kbuild" && pwd)
gen_init_cpio=$kbuild/usr/gen_init_cpio
if [ ! -x "$gen_init_cpio" ] && [ ! -d "$kbuild/usr" ]; then
	# A headers tree has no usr/: use our guest kernel's tool.
	own=$("$guest/kernel/build.sh" --print-build-dir) || die "$kbuild has no usr/gen_init_cpio and our guest kernel is not built: run guest/kernel/build.sh"
	gen_init_cpio=$own/usr/gen_init_cpio
fi
[ -x "$gen_init_cpio" ] || die "$gen_init_cpio is missing: the kernel needs CONFIG_BLK_DEV_INITRD"
# The release the driver is built for ("6.1.0-57-amd64"); a headers tree's
# include/config/kernel.release may hold only the upstream version.
release=$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$kbuild/include/generated/utsrelease.h" 2>/dev/null || true)
[ -n "$release" ] || release=$(cat "$kbuild/include/config/kernel.release")

if [ "$print_only" = yes ]; then
	tool=$("$guest/tool/build.sh" --print-path)
else
	tool=$("$guest/tool/build.sh" | tail -n1)
fi
[ -x "$busybox" ] || die "$busybox is missing: install busybox-static (run scripts/setup)"
readelf -l "$busybox" | grep -q INTERP && die "$busybox is dynamically linked: install busybox-static"

key_inputs() {
	echo "kernel=$kbuild $release $(sha256sum <"$kbuild/.config")"
	echo "tool=$tool"
	echo "busybox=$(sha256sum <"$busybox")"
	(cd "$guest" && find driver initramfs -type f \( -name '*.[ch]' -o -name Makefile \
		-o -name init -o -name '*.sh' \) | LC_ALL=C sort | xargs sha256sum)
}
key=$(key_inputs | sha256sum | cut -c1-16)
out=$cache/initramfs-$key.cpio.gz

if [ "$print_only" = yes ]; then
	[ -f "$out" ] || die "no initramfs built for the current inputs (key $key): run scripts/setup or guest/initramfs/build.sh"
	echo "$out"
	exit 0
fi
if [ -f "$out" ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/initramfs-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Build the driver out of tree in a scratch copy (the worktree stays clean)
# and insist on a warning-free build.
mkdir "$work/driver"
cp "$guest/driver/"*.[ch] "$guest/driver/Makefile" "$work/driver/"
make -C "$kbuild" M="$work/driver" W=1 modules >"$work/driver.log" 2>&1 ||
	{ cat "$work/driver.log" >&2; die "the ivshmem driver does not build against $kbuild"; }
if grep -q 'warning:' "$work/driver.log"; then
	grep -B2 -A4 'warning:' "$work/driver.log" >&2
	die "the ivshmem driver builds with warnings"
fi
modinfo -F vermagic "$work/driver/ivshmem.ko" | grep -q "^$release " ||
	die "the driver's vermagic ($(modinfo -F vermagic "$work/driver/ivshmem.ko")) is not for $release"
# Debug info is most of a distribution build's .ko (600 KB of 620): the
# guest has no use for it.
strip --strip-debug "$work/driver/ivshmem.ko"

# gen_init_cpio (from the kernel tree) lets us add /dev/console without
# being root and gives a reproducible archive (-t).
cat >"$work/list" <<EOF
dir /bin 0755 0 0
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 01777 0 0
dir /root 0700 0 0
dir /lib 0755 0 0
dir /lib/modules 0755 0 0
dir /tests 0755 0 0
file /init $here/init 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /bin/ivshm $tool 0755 0 0
file /lib/modules/ivshmem.ko $work/driver/ivshmem.ko 0644 0 0
EOF
for t in "$here"/tests/*.sh; do
	echo "file /tests/$(basename "$t") $t 0755 0 0" >>"$work/list"
done
"$gen_init_cpio" -t 0 "$work/list" | gzip -9n >"$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$out"
echo "initramfs: $(du -h "$out" | cut -f1) with driver for $release" >&2
echo "$out"
