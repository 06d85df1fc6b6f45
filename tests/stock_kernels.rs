// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The kernels users run, booted by ivvmm on nested SVM (guest/nested/,
//! QEMU TCG): Debian 12's stock `linux-image-amd64` and
//! `linux-image-cloud-amd64` (fetched by guest/stock/fetch.sh, our driver
//! built against their `linux-headers-*` out of tree, as DKMS would), our
//! own minimal guest kernel (no ACPI) and its CONFIG_ACPI build, each with
//! the default command line and with `acpi=off`.
//!
//! Per kernel, one scenario of guest/nested/init (`boot-*`): `ivvmm
//! server` and two VMs with `--cpus 2`. Each VM checks the firmware path
//! its kernel took (the ACPI tables DSDT/APIC/FACP and the MADT for a
//! kernel with ACPI; the MP table otherwise), that both CPUs are online and
//! that our driver bound its devices; the ping VM runs `ivshm check
//! --host` on a second, plain device (L1 checks the guest's words), then
//! the two play 100 doorbell round trips through the server; then each
//! ends itself: `poweroff` (ACPI S5) where the kernel has ACPI, `reboot`
//! where it has none (a kernel without ACPI cannot power off), and ivvmm
//! must exit 0.
//!
//! Needs QEMU and what `scripts/setup` builds (without them: `SKIPPED`,
//! or a failure under CI=true).

mod common;
mod linux;

use common::missing;
use linux::checks;
use linux::nested::{self, scenarios, Scenario};
use linux::{val, Output};

/// A boot scenario: its name, the kernel release it must report (a
/// prefix and a suffix), the firmware path, and whether it powers off.
struct Kernel {
    scenario: &'static str,
    release: (&'static str, &'static str),
    acpi: bool,
}

const KERNELS: [Kernel; 6] = [
    Kernel {
        scenario: "boot-amd64",
        release: ("6.1.0-", "-amd64"),
        acpi: true,
    },
    Kernel {
        scenario: "boot-cloud",
        release: ("6.1.0-", "-cloud-amd64"),
        acpi: true,
    },
    Kernel {
        scenario: "boot-ours",
        release: ("6.1.", ""),
        acpi: false,
    },
    Kernel {
        scenario: "boot-ours-acpioff",
        release: ("6.1.", ""),
        acpi: false,
    },
    Kernel {
        scenario: "boot-oursacpi",
        release: ("6.1.", ""),
        acpi: true,
    },
    Kernel {
        scenario: "boot-oursacpi-acpioff",
        release: ("6.1.", ""),
        acpi: false,
    },
];

/// What one VM of a boot scenario must have printed.
fn assert_vm_booted(k: &Kernel, out: &Output, devices: usize) {
    out.assert_ok();
    let init = out.line("IVVMM-INIT: linux ");
    let release = init["IVVMM-INIT: linux ".len()..]
        .split(',')
        .next()
        .unwrap_or_default();
    assert!(
        release.starts_with(k.release.0) && release.ends_with(k.release.1),
        "{}: kernel {release:?}, want {}*{}",
        out.name,
        k.release.0,
        k.release.1
    );
    let fw = out.line("BOOT firmware ");
    if k.acpi {
        assert_eq!(val(fw, "tables"), "DSDT,APIC,FACP", "{}: {fw}", out.name);
        assert_eq!(val(fw, "madt_smp"), "yes", "{}: {fw}", out.name);
    } else {
        assert_eq!(val(fw, "tables"), "none", "{}: {fw}", out.name);
        assert_eq!(val(fw, "mptable"), "yes", "{}: {fw}", out.name);
    }
    let cpus = out.line("BOOT cpus ");
    assert_eq!(val(cpus, "online"), "0-1", "{}: {cpus}", out.name);
    let bound = out.lines("BOOT ivshmem ");
    assert_eq!(bound.len(), devices, "{}\n{}", out.name, out.tail());
    for b in bound {
        assert_eq!(val(b, "driver"), "ivshmem", "{}: {b}", out.name);
    }
    // How the VM ended: the kernel's own last words, then ivvmm's status.
    let (how, not) = if k.acpi {
        ("reboot: Power down", "reboot: Restarting system")
    } else {
        ("reboot: Restarting system", "reboot: Power down")
    };
    assert_eq!(out.lines(how).len(), 1, "{}\n{}", out.name, out.tail());
    assert!(out.lines(not).is_empty(), "{}\n{}", out.name, out.tail());
}

fn assert_boot_scenario(k: &Kernel, s: &Scenario) -> Vec<f64> {
    s.assert_passed();
    let (ping, pong) = (s.vm("ping"), s.vm("pong"));
    assert_vm_booted(k, &ping, 2);
    assert_vm_booted(k, &pong, 1);
    let status = s.l1("boot: ivvmm exit status ");
    assert_eq!(
        status,
        ["L1 boot: ivvmm exit status ping=0 pong=0 (want 0 0)"]
    );

    // Data both ways with L1 on the plain device.
    ping.line("check: ok host");
    let words = s.l1("sees guest word at ");
    assert_eq!(words.len(), checks::GUEST_OFFSETS.len(), "{words:?}");
    for (w, off) in words.iter().zip(checks::GUEST_OFFSETS) {
        let want = format!("{:016x}", checks::GUEST_PATTERN ^ off);
        assert!(w.contains(&format!(": {want} (want {want})")), "{w}");
    }

    // 100 round trips through `ivvmm server`, each VM ringing the other.
    let info = ping.line("info: ok");
    assert_eq!(val(info, "vectors"), "2", "{info}");
    let pi = ping.line("ping: ok");
    let po = pong.line("pong: ok");
    assert_eq!(val(pi, "rounds"), "100", "{pi}");
    assert_eq!(val(po, "rounds"), "100", "{po}");
    assert_eq!(val(pi, "peer"), val(po, "position"), "ping rang pong's id");
    assert_eq!(
        val(po, "peer"),
        val(info, "position"),
        "pong rang ping's id"
    );
    eprintln!("{}: {pi}", k.scenario);

    let boots = s.l1("boot: IVVMM-BOOT: ");
    assert_eq!(boots.len(), 2, "{boots:?}");
    boots
        .iter()
        .map(|b| val(b, "secs").parse().expect("seconds"))
        .collect()
}

#[test]
fn stock_and_own_kernels_boot_check_ping_pong_and_power_off_on_nested_svm() {
    if let Some(why) = nested::missing_prerequisite(&[
        ("guest/nested/build-initramfs.sh", &["--print-path"]),
        ("guest/kernel/build.sh", &["--nested", "--print-path"]),
    ]) {
        missing(&why);
        return;
    }
    let names: Vec<&str> = KERNELS.iter().map(|k| k.scenario).collect();
    let out = nested::run(&names.join(","));
    let runs = scenarios(&out.stdout);
    let got: Vec<&str> = runs.iter().map(|s| s.name).collect();
    assert_eq!(got, names, "{}\n{}", out.stderr, out.stdout);
    for (k, s) in KERNELS.iter().zip(&runs) {
        let secs = assert_boot_scenario(k, s);
        eprintln!(
            "{}: ivvmm start to L2 /init: {:.1} s and {:.1} s (two VMs booting at once)",
            k.scenario, secs[0], secs[1]
        );
    }
    eprintln!("nested: L1 stall retries: {}", nested::retries(&out));
}
