// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Linux inside ivvmm: the checks of tests/linux_tcg.rs (driver binding,
//! `check --host` both ways, a write-back BAR2 mapping, ping-pong between
//! two VMs through the driver, rmmod under a live mapping), with our guest
//! kernel and initramfs booted by ivvmm itself
//! (`ivvmm --kernel bzImage --initrd initramfs --cmdline ivvmm.run=...`).
//!
//! Only on hardware KVM: on PVM (`/sys/module/kvm_pvm`) no Linux boots, and
//! each test prints `SKIPPED (PVM: no hardware virtualization)` and returns.
//! Needs the guest images (run `scripts/setup`).

mod common;
mod linux;

use linux::boot::{assert_round_trips, assert_vm_booted, KERNELS};
use linux::checks::{self, MIB4};
use linux::{skip_linux_in_ivvmm, TempDir, Vm};

#[test]
fn driver_binds_every_plain_device_with_its_sysfs_attributes() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let dir = TempDir::new("ivvmm-sysfs");
    let out = Vm::ivvmm("sysfs", "sh /tests/sysfs.sh")
        .plain(&dir.path().join("a"), "4M")
        .plain(&dir.path().join("b"), "1M")
        .run();
    // ivvmm: the host bridge is 00:00.0, then one slot per device in
    // command-line order.
    checks::assert_sysfs(
        &out,
        &[
            ("ivshmem0", "4194304", "0000:00:01.0"),
            ("ivshmem1", "1048576", "0000:00:02.0"),
        ],
    );
}

#[test]
fn guest_verifies_the_host_pattern_and_the_host_sees_the_guest_pattern() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let dir = TempDir::new("ivvmm-host");
    let path = dir.path().join("shm");
    let f = checks::shm_file(&path, MIB4);
    checks::write_host_pattern(&f);

    let out = Vm::ivvmm("check-host", "check --host")
        .plain(&path, "4M")
        .run();
    out.assert_ok();
    out.line("check: ok host");
    checks::assert_guest_pattern(&f);
}

/// Linux (our ACPI kernel) assigns both devices' BARs itself from the
/// DSDT's windows after a remove and rescan, and the data still goes both
/// ways: the `realloc` scenario of tests/linux_nested.rs, on hardware KVM.
#[test]
fn linux_assigns_the_bars_itself_from_the_dsdt_windows() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let out = checks::run_realloc("0000:00:01.0", |run, img| {
        Vm::ivvmm_with("realloc", run, img)
    });
    checks::assert_linux_placed_the_bars_in_ivvmm(&out);
}

#[test]
fn bar2_mapping_is_write_back() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let dir = TempDir::new("ivvmm-pat");
    let out = Vm::ivvmm("pat-4M", "sh /tests/pat.sh")
        .plain(&dir.path().join("shm"), "4M")
        .run();
    checks::assert_ivvmm_bar2_write_back(&out);
}

#[test]
fn two_vms_ping_pong_through_the_driver_over_ivvmm_server() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let dir = TempDir::new("ivvmm-doorbell");
    let sock = dir.path().join("sock");
    let _server = checks::start_server(&sock);

    let pong = Vm::ivvmm("pong", checks::PONG_PHASES)
        .doorbell(&sock, 2)
        .spawn();
    let ping = Vm::ivvmm("ping", checks::PING_PHASES)
        .doorbell(&sock, 2)
        .spawn();
    let ping = ping.finish();
    let pong = pong.finish();
    checks::assert_ping_pong_phases(&ping, &pong);
}

#[test]
fn rmmod_is_refused_while_mapped_and_unbind_revokes_the_mapping() {
    if skip_linux_in_ivvmm() {
        return;
    }
    let dir = TempDir::new("ivvmm-rmmod");
    let out = Vm::ivvmm("rmmod", "sh /tests/rmmod-live.sh")
        .plain(&dir.path().join("shm"), "4M")
        .run();
    checks::assert_rmmod_live(&out);
}

/// tests/stock_kernels.rs's boot scenarios (see tests/linux/boot.rs), on
/// hardware KVM: per kernel, `ivvmm server` and two `--cpus 2` VMs that
/// check their firmware path, CPUs and driver, `check --host` on a plain
/// device, 100 doorbell round trips, then power off (or, without ACPI,
/// reboot), ivvmm exiting 0.
#[test]
fn stock_and_own_kernels_boot_check_ping_pong_and_power_off() {
    if skip_linux_in_ivvmm() {
        return;
    }
    for k in &KERNELS {
        let img = k.images();
        let dir = TempDir::new(k.scenario);
        let sock = dir.path().join("sock");
        let _server = checks::start_server(&sock);
        let plain = dir.path().join("plain");
        let f = checks::shm_file(&plain, MIB4);
        checks::write_host_pattern(&f);
        let boot = format!("sh /tests/boot.sh {} 2", k.firmware());

        let pong = Vm::ivvmm_with(
            &format!("{}-pong", k.scenario),
            &format!("{boot} && ivshm pong"),
            &img,
        )
        .cpus(2)
        .cmdline(&k.cmdline())
        .doorbell(&sock, 2)
        .spawn();
        let ping = Vm::ivvmm_with(
            &format!("{}-ping", k.scenario),
            &format!(
                "{boot} && ivshm --dev /dev/ivshmem1 check --host && ivshm info && ivshm ping --count 100"
            ),
            &img,
        )
        .cpus(2)
        .cmdline(&k.cmdline())
        .doorbell(&sock, 2)
        .plain(&plain, "4M")
        .spawn();
        // finish() insists the VMM exited 0: poweroff (S5) or reboot.
        let ping = ping.finish();
        let pong = pong.finish();
        assert_vm_booted(k, &ping, 2);
        assert_vm_booted(k, &pong, 1);
        ping.line("check: ok host");
        checks::assert_guest_pattern(&f);
        let pi = assert_round_trips(&ping, &pong);
        eprintln!(
            "{}: {pi}; ivvmm start to exit {:.1} s / {:.1} s",
            k.scenario, ping.secs, pong.secs
        );
    }
}
