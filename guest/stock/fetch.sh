#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Fetch Debian 12's stock kernels, as a user of ivvmm would run them:
# `linux-image-amd64` and `linux-image-cloud-amd64` resolved to the
# current linux-image-6.1.0-<abi>-{amd64,cloud-amd64} packages, with the
# matching linux-headers-* (and linux-headers-<abi>-common and
# linux-kbuild-6.1 they depend on) to build out-of-tree modules against.
# Downloaded with `apt-get download` and unpacked with `dpkg-deb -x`:
# nothing is installed, /boot and /lib/modules are untouched.
#
#   ~/.cache/ivvmm/stock-<abi>-<version>/root/  the unpacked packages (or under $IVVMM_CACHE)
#   (the .deb files and the kernels' own modules are deleted once unpacked)
#
# Idempotent: a second run with the same candidate version does nothing
# (no network). The last lines printed are, per flavour:
#   <flavour> <vmlinuz> <headers dir>
#
#   fetch.sh               fetch if needed
#   fetch.sh --print-path  print the lines if fetched (no apt), else exit 1
set -euo pipefail

cache=${IVVMM_CACHE:-$HOME/.cache/ivvmm}
flavours=(amd64 cloud-amd64)

die() {
	echo "guest/stock/fetch.sh: $*" >&2
	exit 1
}

print_only=no
case "${1:-}" in
--print-path) print_only=yes ;;
"") ;;
*) die "unknown option '$1' (use --print-path)" ;;
esac

# The newest fetched entry, for --print-path (which must not ask apt).
if [ "$print_only" = yes ]; then
	dir=$(find "$cache" -maxdepth 1 -name 'stock-*' -type d 2>/dev/null | LC_ALL=C sort | tail -n1)
	[ -n "$dir" ] && [ -f "$dir/done" ] || die "the stock Debian kernels are not fetched: run scripts/setup (or guest/stock/fetch.sh)"
	cat "$dir/done"
	exit 0
fi

command -v apt-cache >/dev/null || die "apt-cache is missing: this needs Debian 12 (bookworm) or a derivative"
# linux-image-amd64 -> linux-image-6.1.0-57-amd64 (its one Depends).
resolve() {
	apt-cache depends "$1" 2>/dev/null | sed -n "s/^  Depends: \(linux-image-6\.1\.0-[0-9]*-$2\)\$/\1/p" | head -n1
}
declare -A image
for f in "${flavours[@]}"; do
	meta=linux-image-$f
	image[$f]=$(resolve "$meta" "$f")
	[ -n "${image[$f]}" ] || die "apt knows no linux-image-6.1.0-*-$f behind $meta: run 'apt-get update' (Debian 12 main)"
done
abi=${image[amd64]#linux-image-}
abi=${abi%-amd64}
[ "${image[cloud-amd64]}" = "linux-image-$abi-cloud-amd64" ] ||
	die "the two flavours resolve to different ABIs (${image[amd64]}, ${image[cloud-amd64]}): run 'apt-get update'"
version=$(apt-cache policy "${image[amd64]}" | sed -n 's/^  Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || die "no candidate version of ${image[amd64]}"

dir=$cache/stock-$abi-$version
if [ -f "$dir/done" ]; then
	cat "$dir/done"
	exit 0
fi

pkgs=("linux-image-$abi-amd64" "linux-image-$abi-cloud-amd64"
	"linux-headers-$abi-amd64" "linux-headers-$abi-cloud-amd64"
	"linux-headers-$abi-common" "linux-kbuild-6.1")
mkdir -p "$cache"
exec 9>"$cache/stock.lock"
flock 9
start=$(date +%s)
rm -rf "$dir"
mkdir -p "$dir/debs" "$dir/root"
echo "downloading ${pkgs[*]} (about 110 MB) ..." >&2
# apt-get download needs no root; it writes into the current directory.
(cd "$dir/debs" && apt-get download -q "${pkgs[@]/%/=$version}" >&2) ||
	die "apt-get download failed (network? 'apt-get update'?)"
for deb in "$dir/debs"/*.deb; do
	dpkg-deb -x "$deb" "$dir/root"
done
# The headers' Makefile includes the common tree by its installed path
# (/usr/src/linux-headers-<abi>-common/Makefile): point it at ours. The
# scripts/ and tools/ links are relative and already land in root/.
for f in "${flavours[@]}"; do
	mk=$dir/root/usr/src/linux-headers-$abi-$f/Makefile
	sed -i "s|^include /usr/src/|include $dir/root/usr/src/|" "$mk"
	grep -q "^include $dir/root/" "$mk" || die "$mk: unexpected contents (no 'include /usr/src/...' line)"
done
# The kernels' own modules (480 MB) and the .debs are not needed again: the
# guests load only our driver, and `done` makes later runs skip apt.
rm -rf "$dir/root/lib/modules" "$dir/debs"

{
	for f in "${flavours[@]}"; do
		vmlinuz=$dir/root/boot/vmlinuz-$abi-$f
		headers=$dir/root/usr/src/linux-headers-$abi-$f
		[ -f "$vmlinuz" ] || die "$vmlinuz is missing from the package"
		[ -f "$headers/Module.symvers" ] || die "$headers has no Module.symvers"
		echo "$f $vmlinuz $headers"
	done
} >"$dir/done.tmp"
mv "$dir/done.tmp" "$dir/done"
# An older version's entry is of no further use.
find "$cache" -maxdepth 1 -name 'stock-*' -type d ! -path "$dir" -exec rm -rf {} +
echo "stock kernels $abi ($version) fetched in $(($(date +%s) - start)) s" >&2
cat "$dir/done"
