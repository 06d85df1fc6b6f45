// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Linux in ivvmm on SVM emulated by QEMU TCG: `guest/nested/run.sh` boots
//! an L1 Linux with KVM_AMD under `qemu-system-x86_64 -accel tcg`, and
//! inside it ivvmm (a static build of this tree) boots our guest kernel and
//! initramfs with the ivshmem driver (L2). This is where ivvmm's main use
//! case runs on a host whose own /dev/kvm cannot boot Linux (PVM), and the
//! L2 output is judged by the same checks as tests/linux_tcg.rs and
//! tests/linux_ivvmm.rs (`tests/linux/checks.rs`). It also runs the real
//! `scripts/demo` in L1, which there takes its Linux path.
//!
//! Needs qemu-system-x86_64, the L2 images and the L1 kernel
//! (`scripts/setup` builds them); without them the test prints
//! `SKIPPED (...)` and returns. A run takes about 30 s; the static ivvmm is
//! rebuilt when the sources change (1-2 min cold).

mod common;
mod linux;

use common::missing;
use linux::checks;
use linux::nested::{self, scenarios};
use linux::val;

#[test]
fn linux_runs_every_guest_check_in_ivvmm_on_nested_svm() {
    if let Some(why) = nested::missing_prerequisite(&[
        ("guest/kernel/build.sh", &["--print-path"]),
        ("guest/initramfs/build.sh", &["--print-path"]),
        ("guest/kernel/build.sh", &["--nested", "--print-path"]),
    ]) {
        missing(&why);
        return;
    }
    let out = nested::run("info,host,phases,sysfs,pat,rmmod,term,demo");
    eprintln!("nested: L1 stall retries: {}", nested::retries(&out));
    let all = format!("{}\n{}", out.stderr, out.stdout);
    let runs = scenarios(&out.stdout);
    let names: Vec<&str> = runs.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["info", "host", "phases", "sysfs", "pat", "rmmod", "term", "demo"],
        "{all}"
    );
    for s in &runs {
        s.assert_passed();
    }
    let [info, host, phases, sysfs, pat, rmmod, term, demo] = &runs[..] else {
        unreachable!("checked above");
    };

    // L2 Linux booted in ivvmm and the driver bound the plain device.
    let out = info.vm("info");
    out.assert_ok();
    let line = out.line("info: ok");
    assert_eq!(val(line, "size"), "4194304", "{line}");
    assert_eq!(val(line, "vectors"), "0", "{line}");
    assert_eq!(val(line, "cache"), "write-back", "{line}");

    // Data both ways: the guest verified what L1 wrote before the boot,
    // and L1 read back what the guest wrote (`want` is L1's expectation).
    let out = host.vm("host");
    out.assert_ok();
    out.line("check: ok host");
    let words = host.l1("sees guest word at ");
    assert_eq!(words.len(), checks::GUEST_OFFSETS.len(), "{words:?}");
    for (w, off) in words.iter().zip(checks::GUEST_OFFSETS) {
        assert!(w.contains(&format!(" at {off:#x}: ")), "{w}");
        let want = format!("{:016x}", checks::GUEST_PATTERN ^ off);
        assert!(w.contains(&format!(": {want} (want {want})")), "{w}");
    }

    // Two VMs on `ivvmm server`, 100 round trips in each wait mode.
    checks::assert_ping_pong_phases(&phases.vm("ping"), &phases.vm("pong"));

    // Two plain devices, each its own PCI function after the host bridge.
    checks::assert_sysfs(
        &sysfs.vm("sysfs"),
        &[
            ("ivshmem0", "4194304", "0000:00:01.0"),
            ("ivshmem1", "1048576", "0000:00:02.0"),
        ],
    );

    // BAR2 above 4 GiB, write-back; uncached only when asked (cache=uc).
    checks::assert_ivvmm_bar2_write_back(&pat.vm("pat"));

    checks::assert_rmmod_live(&rmmod.vm("rmmod"));

    // SIGTERM stops ivvmm (128 + 15) while its vCPU is halted in KVM.
    let stop = term.l1("term: ivvmm exited with status ");
    assert_eq!(stop.len(), 1, "{stop:?}");
    assert!(stop[0].contains(" status 143 "), "{}", stop[0]);

    // The README's main job, scripts/demo itself, on a /dev/kvm where Linux
    // boots: it takes its Linux path (two Linux VMs, driver and `ivshm`).
    let said = demo.l1("demo| ");
    assert!(
        said.iter().all(|l| !l.contains("PVM")),
        "the demo took its PVM path\n{}",
        said.join("\n")
    );
    assert!(
        said.iter()
            .any(|l| l.contains("round trip VM B → VM A → VM B")),
        "{}",
        said.join("\n")
    );
    let ok = demo.l1("demo| demo: OK: two VMs exchanged 200 doorbells");
    assert_eq!(ok.len(), 1, "{}", said.join("\n"));
}
