// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The boot scenarios: the kernels users run (Debian 12's stock
//! `linux-image-amd64` and `linux-image-cloud-amd64`, our driver built
//! against their headers) and our own guest kernel (without ACPI, and its
//! CONFIG_ACPI build), each with the default command line and with
//! `acpi=off`. The same table and the same judgement serve
//! tests/stock_kernels.rs (ivvmm on nested SVM, guest/nested/init's
//! `boot-*`) and tests/linux_ivvmm.rs (ivvmm on hardware KVM).
//!
//! Per kernel: `ivvmm server` and two VMs with `--cpus 2`. Each VM checks
//! the firmware path its kernel took (the ACPI tables DSDT/APIC/FACP and
//! the MADT for a kernel with ACPI; the MP table otherwise), that both
//! CPUs are online and that our driver bound its devices
//! (guest/initramfs/tests/boot.sh); the ping VM runs `ivshm check --host`
//! on a second, plain device, then the two play 100 doorbell round trips
//! through the server; then each ends itself: `poweroff` (ACPI S5) where
//! the kernel has ACPI, `reboot` where it has none (a kernel without ACPI
//! cannot power off), and ivvmm must exit 0.

use std::path::PathBuf;
use std::process::Command;

use super::{images, repo, val, Images, Output};

/// Which kernel image a scenario boots.
#[derive(Clone, Copy)]
pub enum Image {
    /// A Debian stock kernel, by flavour (`amd64`, `cloud-amd64`).
    Stock(&'static str),
    /// Our guest kernel (no ACPI).
    Ours,
    /// Our guest kernel built with CONFIG_ACPI.
    OursAcpi,
}

impl Image {
    /// The kernel and its initramfs (our driver built for it); panics with
    /// what to run when `scripts/setup` has not built them.
    pub fn images(self) -> Images {
        match self {
            Image::Ours => Images {
                kernel: images().kernel.clone(),
                initramfs: images().initramfs.clone(),
            },
            Image::OursAcpi => {
                let build = script_line("guest/kernel/build.sh", &["--acpi", "--print-build-dir"]);
                Images {
                    kernel: script_line("guest/kernel/build.sh", &["--acpi", "--print-path"])
                        .into(),
                    initramfs: initramfs_for(&build),
                }
            }
            Image::Stock(flavour) => {
                let list = script_line("guest/stock/fetch.sh", &["--print-path"]);
                let line = list
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(flavour))
                    .unwrap_or_else(|| {
                        panic!("guest/stock/fetch.sh lists no {flavour} kernel: run scripts/setup\n{list}")
                    });
                let mut words = line.split_whitespace().skip(1);
                let (vmlinuz, headers) = (words.next(), words.next());
                let (Some(vmlinuz), Some(headers)) = (vmlinuz, headers) else {
                    panic!("guest/stock/fetch.sh: unexpected line {line:?}");
                };
                Images {
                    kernel: vmlinuz.into(),
                    initramfs: initramfs_for(headers),
                }
            }
        }
    }
}

/// A boot scenario: its name (guest/nested/init's), the image, extra
/// kernel command line, the kernel release it must report (a prefix and a
/// suffix) and the firmware path (whether it powers off).
pub struct Kernel {
    pub scenario: &'static str,
    pub image: Image,
    pub cmdline: &'static str,
    pub release: (&'static str, &'static str),
    pub acpi: bool,
}

pub const KERNELS: [Kernel; 6] = [
    Kernel {
        scenario: "boot-amd64",
        image: Image::Stock("amd64"),
        cmdline: "",
        release: ("6.1.0-", "-amd64"),
        acpi: true,
    },
    Kernel {
        scenario: "boot-cloud",
        image: Image::Stock("cloud-amd64"),
        cmdline: "",
        release: ("6.1.0-", "-cloud-amd64"),
        acpi: true,
    },
    Kernel {
        scenario: "boot-ours",
        image: Image::Ours,
        cmdline: "",
        release: ("6.1.", ""),
        acpi: false,
    },
    Kernel {
        scenario: "boot-ours-acpioff",
        image: Image::Ours,
        cmdline: "acpi=off",
        release: ("6.1.", ""),
        acpi: false,
    },
    Kernel {
        scenario: "boot-oursacpi",
        image: Image::OursAcpi,
        cmdline: "",
        release: ("6.1.", ""),
        acpi: true,
    },
    Kernel {
        scenario: "boot-oursacpi-acpioff",
        image: Image::OursAcpi,
        cmdline: "acpi=off",
        release: ("6.1.", ""),
        acpi: false,
    },
];

impl Kernel {
    /// `sh /tests/boot.sh`'s firmware argument.
    pub fn firmware(&self) -> &'static str {
        if self.acpi {
            "acpi"
        } else {
            "mptable"
        }
    }

    /// The kernel command line words of the scenario: its own, and how the
    /// guest's /init ends the VM (`ivvmm.exit`).
    pub fn cmdline(&self) -> String {
        let exit = if self.acpi { "poweroff" } else { "reboot" };
        format!("{} ivvmm.exit={exit}", self.cmdline)
            .trim()
            .to_string()
    }

    /// The kernel and its initramfs (see [`Image::images`]).
    pub fn images(&self) -> Images {
        self.image.images()
    }
}

/// The initramfs whose driver is built against the kernel tree `build`.
fn initramfs_for(build: &str) -> PathBuf {
    script_line("guest/initramfs/build.sh", &["--print-path", build]).into()
}

/// What `script args` prints (trimmed); panics with the fix if it fails.
fn script_line(script: &str, args: &[&str]) -> String {
    let out = Command::new(repo().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !text.is_empty(),
        "{script} {}: nothing built; run scripts/setup\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    text
}

/// What one VM of a boot scenario must have printed.
pub fn assert_vm_booted(k: &Kernel, out: &Output, devices: usize) {
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

/// The 100 doorbell round trips of a boot scenario through `ivvmm server`,
/// each VM ringing the other (two vectors each); ping's `ping: ok` line.
pub fn assert_round_trips<'a>(ping: &'a Output, pong: &Output) -> &'a str {
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
    pi
}
