// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The VMM core on real KVM: the test guest boots through the Linux boot
//! path (bzImage) and the PVH path, and what it reports is checked here.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn serial_output_reaches_stdout() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("hello", &[]);
    assert!(out.stdout.contains("Hello from testguest"), "{out:?}");
    assert!(out.passed(), "{out:?}");
}

#[test]
fn pvh_elf_boots_too() {
    if !require_kvm() {
        return;
    }
    let kernel = testguest(true);
    let out = run_ivvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "test=hello",
        ],
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains("Hello from testguest"), "{out:?}");
    assert!(out.passed(), "{out:?}");
}

#[test]
fn elf_vmlinux_without_pvh_note_boots_through_the_64bit_entry() {
    if !require_kvm() {
        return;
    }
    let kernel = testguest_file("testguest.vmlinux");
    let out = run_ivvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "test=pci",
        ],
        Duration::from_secs(60),
    );
    assert!(out.passed(), "{out:?}");
    assert_eq!(
        out.field("pci functions", "functions").as_deref(),
        Some("1")
    );
}

#[test]
fn exit_port_status_propagates() {
    if !require_kvm() {
        return;
    }
    for code in [0, 3, 42, 255] {
        let out = boot_test(&format!("exit code={code}"), &[]);
        assert_eq!(out.code(), code, "{out:?}");
    }
}

#[test]
fn pci_scan_finds_the_host_bridge() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("pci", &[]);
    assert!(out.passed(), "{out:?}");
    let bridge = out
        .stdout
        .lines()
        .find(|l| l.starts_with("pci 00:00.0"))
        .unwrap_or_else(|| panic!("no 00:00.0 in {out:?}"));
    assert_eq!(field_of(bridge, "vendor").as_deref(), Some("1b36"));
    assert_eq!(field_of(bridge, "device").as_deref(), Some("0008"));
    assert_eq!(field_of(bridge, "class").as_deref(), Some("060000"));
    assert_eq!(field_of(bridge, "hdr").as_deref(), Some("00"));
    // Nothing but the bridge without devices.
    assert_eq!(
        out.field("pci functions", "functions").as_deref(),
        Some("1")
    );
}

#[test]
fn i8042_reset_ends_the_vm_with_status_0() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("reboot", &["-v"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stdout.contains("FAIL"), "{out:?}");
    assert!(out.stderr.contains("guest reset the machine"), "{out:?}");
}

#[test]
fn triple_fault_ends_the_vm() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("triplefault", &["-v"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stdout.contains("FAIL"), "{out:?}");
    assert!(out.stderr.contains("triple-faulted"), "{out:?}");
}

#[test]
fn emulation_failure_ends_the_vmm_with_the_reason_and_rip() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("bad-insn", &[]);
    assert_eq!(out.code(), 1, "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].contains("KVM_EXIT_INTERNAL_ERROR"), "{out:?}");
    assert!(lines[0].contains("emulation failure"), "{out:?}");
    let rip = lines[0].rsplit("guest RIP 0x").next().unwrap();
    let rip = u64::from_str_radix(rip.trim(), 16).unwrap();
    // Inside the test guest's image (loaded at 1 MiB), not garbage.
    assert!((0x10_0000..0x20_0000).contains(&rip), "{rip:#x}");
    assert!(!out.stdout.contains("FAIL"), "{out:?}");
}

#[test]
fn unhandled_accesses_read_all_ones_and_are_logged_once() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("unhandled", &["-v"]);
    assert!(out.passed(), "{out:?}");
    assert_eq!(
        out.field("unhandled reads", "not_all_ones").as_deref(),
        Some("0")
    );
    // 50 rounds of accesses, one log line per address.
    for needle in [
        "port access at 0x2f8",
        "port access at 0x2fb",
        "MMIO access at 0xd0000000",
    ] {
        assert_eq!(out.stderr.matches(needle).count(), 1, "{needle}: {out:?}");
    }
}

/// The guest finds the initrd where each boot protocol says, in usable RAM,
/// byte for byte the file we gave.
#[test]
fn initrd_reaches_the_guest_intact_through_every_boot_path() {
    if !require_kvm() {
        return;
    }
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = fnv1a(&data);
    let initrd = std::env::temp_dir().join(unique("ivvmm-initrd"));
    std::fs::write(&initrd, &data).unwrap();
    for image in [
        "testguest.bzImage",
        "testguest.pvh.elf",
        "testguest.vmlinux",
    ] {
        let kernel = testguest_file(image);
        let out = run_ivvmm(
            &[
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--cmdline",
                "test=initrd",
            ],
            Duration::from_secs(60),
        );
        assert!(out.passed(), "{image}: {out:?}");
        assert_eq!(
            out.field("initrd addr", "size").as_deref(),
            Some("3000000"),
            "{image}"
        );
        assert_eq!(
            out.field("initrd fnv1a", "fnv1a"),
            Some(format!("{want:#x}")),
            "{image}: {out:?}"
        );
    }
    let _ = std::fs::remove_file(initrd);
}

#[test]
fn two_vcpus_come_up() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("smp", &["--cpus", "2"]);
    assert!(out.passed(), "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("smp cpus_up"))
        .unwrap_or_else(|| panic!("no smp line in {out:?}"));
    assert_eq!(field_of(line, "cpus_up").as_deref(), Some("2"), "{line}");
    assert_eq!(out.field("mptable", "cpus").as_deref(), Some("2"));
}

#[test]
fn stdin_reaches_the_guest_through_irq4() {
    if !require_kvm() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let kernel = testguest(false);
    let mut child = Command::new(ivvmm())
        .args(["--kernel", kernel.to_str().unwrap()])
        .args(["--cmdline", "test=serial-echo timeout_ms=20000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Type only once the guest waits in hlt with IRQ 4 routed, as a user would.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("guest ended before it was ready: {seen}");
        }
        seen.push_str(&line);
        if line.contains("ready") {
            break;
        }
    }
    stdin.write_all(b"hello from the host\r").unwrap();
    child.stdout = Some(stdout.into_inner());
    let out = wait_with_deadline(child, Duration::from_secs(30));
    drop(stdin);
    assert!(
        out.stdout.contains("echo: hello from the host"),
        "{seen}{out:?}"
    );
    assert!(out.passed(), "{seen}{out:?}");
    // The interrupt, not polling, woke the guest.
    let irqs: u32 = out
        .field("serial-echo: irqs", "irqs")
        .unwrap()
        .parse()
        .unwrap();
    assert!(irqs >= 1, "{out:?}");
}

#[test]
fn serial_can_go_to_a_file_or_nowhere() {
    if !require_kvm() {
        return;
    }
    let log = std::env::temp_dir().join(unique("ivvmm-serial"));
    let log_s = log.to_str().unwrap().to_string();
    let out = boot_test("hello", &["--serial", &log_s]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stdout.contains("Hello"), "{out:?}");
    let written = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(written.contains("Hello from testguest"), "{written}");
    let out = boot_test("hello", &["--serial", "none"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn stats_show_exit_counters() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("hello", &["--stats"]);
    assert_eq!(out.code(), 0, "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("ivvmm stats: vcpu_exits"))
        .unwrap_or_else(|| panic!("no stats in {out:?}"));
    let pio_out: u64 = field_of(line, "pio_out").unwrap().parse().unwrap();
    // At least the greeting's bytes went out through COM1.
    assert!(pio_out >= "Hello from testguest".len() as u64, "{line}");
}
