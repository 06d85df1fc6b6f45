// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Linux guest side (kernel, initramfs, ivshmem driver, guest tool)
//! under `qemu-system-x86_64 -accel tcg` against QEMU's own ivshmem device,
//! the reference for what a guest sees. Linux cannot boot on this host's
//! KVM, so ivvmm itself is not involved here except as the server (the
//! same checks in ivvmm, on hardware KVM: tests/linux_ivvmm.rs).
//!
//! Needs qemu-system-x86_64 and the guest images: run `scripts/setup` (or
//! guest/kernel/build.sh and guest/initramfs/build.sh). Without them every
//! test fails and says so. See tests/linux/mod.rs for how images are found.

mod common;
mod linux;

use linux::checks::{self, GUEST_OFFSETS, HOST_PATTERN, MIB4};
use linux::{val, TempDir, Vm};

#[test]
fn driver_binds_every_plain_device_with_its_sysfs_attributes() {
    let dir = TempDir::new("sysfs");
    let out = Vm::new("sysfs", "sh /tests/sysfs.sh")
        .plain(&dir.path().join("a"), "4M")
        .plain(&dir.path().join("b"), "1M")
        .run();
    // PCI slot order is command-line order: the 4M device comes first.
    checks::assert_sysfs(
        &out,
        &[
            ("ivshmem0", "4194304", "0000:00:04.0"),
            ("ivshmem1", "1048576", "0000:00:05.0"),
        ],
    );
}

#[test]
fn guest_verifies_the_host_pattern_and_the_host_sees_the_guest_pattern() {
    let dir = TempDir::new("host");
    let path = dir.path().join("shm");
    let f = checks::shm_file(&path, MIB4);
    checks::write_host_pattern(&f);

    let out = Vm::new("check-host", "check --host")
        .plain(&path, "4M")
        .run();
    out.assert_ok();
    out.line("check: ok host");
    checks::assert_guest_pattern(&f);
}

#[test]
fn guest_check_fails_when_the_host_pattern_is_missing() {
    let dir = TempDir::new("nohost");
    let path = dir.path().join("shm");
    let f = checks::shm_file(&path, MIB4);
    checks::write_u64(&f, 0x200, HOST_PATTERN ^ 0x200); // right at 0x200, missing at 0x1000

    let out = Vm::new("check-nohost", "check --host")
        .plain(&path, "4M")
        .run();
    assert_eq!(out.result_rc(), 1, "{}", out.tail());
    assert!(
        out.line("ivshm: FAILED")
            .contains("mismatch at offset 0x1000"),
        "{}",
        out.tail()
    );
    assert_eq!(
        checks::read_u64(&f, GUEST_OFFSETS[0]),
        0,
        "nothing written after a failed check"
    );
}

#[test]
fn rmmod_is_refused_while_mapped_and_unbind_revokes_the_mapping() {
    let dir = TempDir::new("rmmod");
    let out = Vm::new("rmmod", "sh /tests/rmmod-live.sh")
        .plain(&dir.path().join("shm"), "4M")
        .run();
    checks::assert_rmmod_live(&out);
}

/// Linux (our ACPI kernel) assigns both devices' BARs itself from the host
/// bridge's windows after a remove and rescan, and the data still goes
/// both ways: the reference for the `realloc` check in ivvmm
/// (tests/linux_nested.rs, tests/linux_ivvmm.rs).
#[test]
fn linux_assigns_the_bars_itself_from_the_firmware_windows() {
    let out = checks::run_realloc("0000:00:04.0", |run, img| Vm::new_with("realloc", run, img));
    checks::linux_placed_the_bars(&out, &["0000:00:04.0", "0000:00:05.0"]);
}

#[test]
fn bar2_mapping_is_write_back_where_the_firmware_allows_it() {
    // SeaBIOS (QEMU -M pc) moves 64-bit BARs above 4 GiB, where its MTRRs
    // say write-back, only when they do not fit below; a small BAR lands in
    // the 32-bit hole, which its MTRRs make uncached, so Linux refuses WB.
    let dir = TempDir::new("pat");
    let big = Vm::new("pat-2G", "sh /tests/pat.sh")
        .plain(&dir.path().join("big"), "2G")
        .spawn();
    let small = Vm::new("pat-4M", "sh /tests/pat.sh")
        .plain(&dir.path().join("small"), "4M")
        .run();
    let big = big.finish();
    big.assert_ok();
    small.assert_ok();

    let (start, end, cache) = checks::bar2(&big, "wb", "ivshmem0");
    assert!(start >= 1 << 32, "the 2 GiB BAR is above 4 GiB: {start:#x}");
    assert_eq!(end - start + 1, 2 << 30);
    assert_eq!(checks::pat_type(&big, "wb", start, end), "write-back");
    assert_eq!(cache, "write-back", "the driver reports the real type");
    checks::assert_uc_control(&big);

    let (start, end, cache) = checks::bar2(&small, "wb", "ivshmem0");
    assert!(
        end < 1 << 32,
        "the 4 MiB BAR is in the 32-bit hole: {end:#x}"
    );
    let pat = checks::pat_type(&small, "wb", start, end);
    assert_eq!(pat, "uncached-minus", "firmware MTRR UC demotes WB");
    assert_eq!(
        cache, pat,
        "the driver does not claim write-back it did not get"
    );
}

#[test]
fn two_vms_ping_pong_through_the_driver_over_ivvmm_server() {
    let dir = TempDir::new("doorbell");
    let sock = dir.path().join("sock");
    let _server = checks::start_server(&sock);

    let pong = Vm::new("pong", checks::PONG_PHASES)
        .doorbell(&sock, 2)
        .spawn();
    let ping = Vm::new("ping", checks::PING_PHASES)
        .doorbell(&sock, 2)
        .spawn();
    let ping = ping.finish();
    let pong = pong.finish();
    checks::assert_ping_pong_phases(&ping, &pong);
}

#[test]
fn qemu_ivshmem_has_no_peer_presence_and_ivshm_peers_says_unsupported() {
    // QEMU's doorbell device on `ivvmm server` and a plain one: neither has
    // the IVPR capability (docs/ivshmem-presence.md), so the driver never
    // touches BAR0 above 16 and reports every presence file unsupported.
    let dir = TempDir::new("presence");
    let sock = dir.path().join("sock");
    let _server = checks::start_server(&sock);
    let out = Vm::new("presence-qemu", "sh /tests/presence-none.sh")
        .doorbell(&sock, 2)
        .plain(&dir.path().join("plain"), "1M")
        .run();
    checks::assert_presence_unsupported(&out, &["ivshmem0", "ivshmem1"]);
    let info = out.line("info: ok dev=/dev/ivshmem0");
    assert_eq!(val(info, "vectors"), "2", "the doorbell device: {info}");
}
