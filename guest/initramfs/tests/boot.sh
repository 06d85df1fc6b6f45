#!/bin/sh
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# What a kernel found at boot, for the boot scenarios of guest/nested/init
# (stock Debian kernels and ours, with and without ACPI):
#   sh /tests/boot.sh FIRMWARE CPUS
# FIRMWARE is the path the kernel must have taken: `acpi` (the ACPI tables
# DSDT, APIC (MADT) and FACP (FADT) in /sys/firmware/acpi/tables, the MADT
# used for SMP) or `mptable` (no ACPI; the MP table parsed). CPUS: how many
# must be online (/sys/devices/system/cpu/online = 0-<CPUS-1>). Then every
# ivshmem device must be bound to our driver. Prints `BOOT key=value`
# lines and exits non-zero on the first mismatch it reports.
want=$1 cpus=$2
rc=0
fail() {
	echo "BOOT FAIL: $*"
	rc=1
}

tables=""
for t in DSDT APIC FACP; do
	[ -f "/sys/firmware/acpi/tables/$t" ] && tables="$tables${tables:+,}$t"
done
if dmesg | grep -q 'Using ACPI (MADT) for SMP'; then madt=yes; else madt=no; fi
if dmesg | grep -q 'Intel MultiProcessor Specification'; then mptable=yes; else mptable=no; fi
echo "BOOT firmware tables=${tables:-none} madt_smp=$madt mptable=$mptable"
case "$want" in
acpi)
	[ "$tables" = DSDT,APIC,FACP ] || fail "ACPI tables: want DSDT,APIC,FACP, found '${tables:-none}'"
	[ "$madt" = yes ] || fail "the kernel did not take its CPUs from the MADT"
	;;
mptable)
	[ -z "$tables" ] || fail "ACPI tables found ($tables) where the MP table was expected"
	[ "$mptable" = yes ] || fail "the kernel did not parse the MP table"
	;;
*) fail "unknown firmware path '$want' (acpi or mptable)" ;;
esac

online=$(cat /sys/devices/system/cpu/online)
echo "BOOT cpus online=$online present=$(cat /sys/devices/system/cpu/present) want=$cpus"
want_online=0
[ "$cpus" -le 1 ] || want_online="0-$((cpus - 1))"
[ "$online" = "$want_online" ] || fail "CPUs online: $online, want $want_online"

n=0
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x1af4:0x1110 ] || continue
	n=$((n + 1))
	drv=none
	[ -L "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
	echo "BOOT ivshmem ${d##*/} driver=$drv"
	[ "$drv" = ivshmem ] || fail "${d##*/} is not bound to the ivshmem driver"
done
[ "$n" -gt 0 ] || fail "no ivshmem device on the PCI bus"
echo "BOOT kernel $(uname -r) rc=$rc"
exit $rc
