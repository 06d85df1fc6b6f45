#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the L1 initramfs for nested runs: busybox-static, a static ivvmm,
# our L2 guest kernel and initramfs (guest/kernel/build.sh,
# guest/initramfs/build.sh), guest/nested/init, and bash-static with
# scripts/demo in a repository-shaped /demo (build steps replaced by
# guest/nested/stand-in), as a gzip cpio; before it, uncompressed (they are
# compressed already, and L1 under TCG would spend seconds inflating them
# again), the L2 images of the boot scenarios: Debian's stock kernels
# (guest/stock/fetch.sh) and our guest kernel built with ACPI
# (guest/kernel/build.sh --acpi), each with an initramfs whose driver is
# built against that kernel (guest/initramfs/build.sh):
#   ~/.cache/ivvmm/nested-initramfs-<key>.cpio.gz   (or under $IVVMM_CACHE)
# (Linux unpacks concatenated archives, compressed or not, in order, as it
# does an early microcode cpio: the uncompressed one first, its end padded
# to 512 bytes, so that the gzip stream after it starts aligned.)
# <key> hashes every input. The last line printed is the path.
#
#   build-initramfs.sh               build if needed (ivvmm too: cargo, static)
#   build-initramfs.sh --print-path  print the path if built, else exit 1
#
# The static ivvmm is built with
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
#     --target x86_64-unknown-linux-gnu --target-dir $IVVMM_NESTED_TARGET
# ($IVVMM_NESTED_TARGET defaults to ~/.cache/ivvmm/nested-target), so that it
# does not disturb the workspace's own target/ and survives fresh clones.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest=$(dirname "$here")
repo=$(dirname "$guest")
cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
busybox=${IVVMM_BUSYBOX:-/bin/busybox}
target=${IVVMM_NESTED_TARGET:-$cache/nested-target}
ivvmm=$target/x86_64-unknown-linux-gnu/release/ivvmm

die() {
	echo "guest/nested/build-initramfs.sh: $*" >&2
	exit 1
}

print_only=no
case "${1:-}" in
--print-path) print_only=yes ;;
"") ;;
*) die "unknown option '$1' (use --print-path)" ;;
esac

if [ "$print_only" = no ]; then
	echo "building a static ivvmm in $target ..." >&2
	(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
		--target x86_64-unknown-linux-gnu --target-dir "$target" --bin ivvmm) >&2 ||
		die "the static ivvmm build failed"
	"$guest/kernel/build.sh" >/dev/null
	"$guest/initramfs/build.sh" >/dev/null
	"$guest/kernel/build.sh" --acpi >/dev/null
	"$guest/initramfs/build.sh" "$("$guest/kernel/build.sh" --acpi --print-build-dir)" >/dev/null
	"$guest/stock/fetch.sh" | tail -n2 | while read -r _ _ headers; do
		"$guest/initramfs/build.sh" "$headers" >/dev/null
	done
fi
[ -x "$ivvmm" ] || die "$ivvmm is missing: run guest/nested/build-initramfs.sh"
readelf -l "$ivvmm" | grep -q INTERP && die "$ivvmm is dynamically linked (crt-static was lost)"
l2kernel=$("$guest/kernel/build.sh" --print-path) || die "no L2 kernel: run guest/kernel/build.sh"
l2initrd=$("$guest/initramfs/build.sh" --print-path) || die "no L2 initramfs: run guest/initramfs/build.sh"
kbuild=$("$guest/kernel/build.sh" --print-build-dir)
gen_init_cpio=$kbuild/usr/gen_init_cpio
[ -x "$gen_init_cpio" ] || die "$gen_init_cpio is missing: rebuild the guest kernel"
[ -x "$busybox" ] || die "$busybox is missing: install busybox-static (run scripts/setup)"
# The boot scenarios' L2 images: /l2/<name>/{vmlinuz or bzImage, initramfs.cpio.gz}.
acpikernel=$("$guest/kernel/build.sh" --acpi --print-path) || die "no ACPI guest kernel: run guest/kernel/build.sh --acpi"
acpiinitrd=$("$guest/initramfs/build.sh" --print-path "$("$guest/kernel/build.sh" --acpi --print-build-dir)") ||
	die "no initramfs for the ACPI guest kernel: run guest/nested/build-initramfs.sh"
stock=$("$guest/stock/fetch.sh" --print-path) || die "the stock kernels are not fetched: run guest/stock/fetch.sh (scripts/setup)"
images=("acpi/bzImage $acpikernel" "acpi/initramfs.cpio.gz $acpiinitrd")
while read -r flavour vmlinuz headers; do
	initrd=$("$guest/initramfs/build.sh" --print-path "$headers") ||
		die "no initramfs for the stock $flavour kernel: run guest/nested/build-initramfs.sh"
	images+=("$flavour/vmlinuz $vmlinuz" "$flavour/initramfs.cpio.gz $initrd")
done <<<"$stock"
bash=${IVVMM_BASH_STATIC:-/bin/bash-static}
[ -x "$bash" ] || die "$bash is missing: install bash-static (run scripts/setup)"

key_inputs() {
	echo "ivvmm=$(sha256sum <"$ivvmm")"
	echo "l2kernel=$(sha256sum <"$l2kernel")"
	echo "l2initrd=$l2initrd"
	echo "busybox=$(sha256sum <"$busybox")"
	echo "init=$(sha256sum <"$here/init")"
	echo "bash=$(sha256sum <"$bash")"
	echo "demo=$(cat "$repo/scripts/demo" "$repo/scripts/demo-lib.sh" "$here/stand-in" | sha256sum)"
	echo "script=$(sha256sum <"${BASH_SOURCE[0]}")"
	for i in "${images[@]}"; do echo "image=${i%% *} $(sha256sum <"${i#* }")"; done
}
key=$(key_inputs | sha256sum | cut -c1-16)
out=$cache/nested-initramfs-$key.cpio.gz

if [ "$print_only" = yes ] || [ -f "$out" ]; then
	[ -f "$out" ] || die "no L1 initramfs for the current inputs (key $key): run guest/nested/build-initramfs.sh"
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/nested-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat >"$work/list" <<EOF
dir /bin 0755 0 0
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 01777 0 0
dir /root 0700 0 0
dir /l2 0755 0 0
file /init $here/init 0755 0 0
file /bin/busybox $busybox 0755 0 0
file /bin/ivvmm $ivvmm 0755 0 0
file /l2/bzImage $l2kernel 0644 0 0
file /l2/initramfs.cpio.gz $l2initrd 0644 0 0
file /bin/bash $bash 0755 0 0
dir /demo 0755 0 0
dir /demo/scripts 0755 0 0
dir /demo/guest 0755 0 0
dir /demo/guest/kernel 0755 0 0
dir /demo/guest/initramfs 0755 0 0
dir /demo/target 0755 0 0
dir /demo/target/release 0755 0 0
file /demo/scripts/demo $repo/scripts/demo 0755 0 0
file /demo/scripts/demo-lib.sh $repo/scripts/demo-lib.sh 0644 0 0
file /demo/scripts/setup $here/stand-in 0755 0 0
file /demo/guest/kernel/build.sh $here/stand-in 0755 0 0
file /demo/guest/initramfs/build.sh $here/stand-in 0755 0 0
slink /demo/target/release/ivvmm /bin/ivvmm 0777 0 0
EOF
{
	echo "dir /l2 0755 0 0"
	echo "dir /l2/acpi 0755 0 0"
	while read -r flavour _; do echo "dir /l2/$flavour 0755 0 0"; done <<<"$stock"
	for i in "${images[@]}"; do echo "file /l2/${i%% *} ${i#* } 0644 0 0"; done
} >"$work/images.list"
{
	"$gen_init_cpio" -t 0 "$work/images.list"
	"$gen_init_cpio" -t 0 "$work/list" | gzip -6n
} >"$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$out"
# Each ivvmm change makes a new one: keep only the current.
find "$cache" -maxdepth 1 -name 'nested-initramfs-*.cpio.gz' ! -path "$out" -delete
echo "L1 initramfs: $(du -h "$out" | cut -f1)" >&2
echo "$out"
