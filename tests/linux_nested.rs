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

use std::sync::Mutex;

use common::{missing, Outcome};
use linux::checks;
use linux::nested;
use linux::{kv, val};

/// The images both tests need (scripts/setup builds them).
const IMAGES: &[(&str, &[&str])] = &[
    ("guest/kernel/build.sh", &["--print-path"]),
    ("guest/initramfs/build.sh", &["--print-path"]),
    ("guest/kernel/build.sh", &["--nested", "--print-path"]),
    // `realloc` boots our ACPI kernel.
    ("guest/kernel/build.sh", &["--acpi", "--print-path"]),
];

/// One nested QEMU run at a time: two TCG L1s on this host's cores would
/// starve each other into stalls.
fn run_nested(list: &str) -> Outcome {
    static NESTED: Mutex<()> = Mutex::new(());
    let _one = NESTED.lock().unwrap_or_else(|e| e.into_inner());
    let out = nested::run(list);
    common::noted(&format!(
        "nested ({list}): L1 stall retries: {}",
        nested::retries(&out)
    ));
    out
}

#[test]
fn linux_runs_every_guest_check_in_ivvmm_on_nested_svm() {
    if let Some(why) = nested::missing_prerequisite(IMAGES) {
        missing(&why);
        return;
    }
    let out = run_nested("info,host,phases,sysfs,pat,realloc,rmmod,term,demo");
    let runs = nested::passed(
        &out,
        &[
            "info", "host", "phases", "sysfs", "pat", "realloc", "rmmod", "term", "demo",
        ],
    );
    let [info, host, phases, sysfs, pat, realloc, rmmod, term, demo] = &runs[..] else {
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
    assert_l1_sees_the_guest_words(host);

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

    // Linux (our ACPI kernel) assigns both devices' BARs itself from the
    // DSDT's windows (it swaps the two BAR2s), and ivvmm follows: the host
    // check passes on the first device at its new place.
    let out = realloc.vm("realloc");
    checks::assert_linux_placed_the_bars_in_ivvmm(&out);
    out.line("check: ok host");
    assert_l1_sees_the_guest_words(realloc);

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

/// L1 read back, in the file behind the VM's first device, the words
/// `ivshm check --host` wrote (L1 prints what it saw and what it wants).
fn assert_l1_sees_the_guest_words(s: &nested::Scenario) {
    let words = s.l1("sees guest word at ");
    assert_eq!(words.len(), checks::GUEST_OFFSETS.len(), "{words:?}");
    for (w, off) in words.iter().zip(checks::GUEST_OFFSETS) {
        assert!(w.contains(&format!(" at {off:#x}: ")), "{w}");
        let want = format!("{:016x}", checks::GUEST_PATTERN ^ off);
        assert!(w.contains(&format!(": {want} (want {want})")), "{w}");
    }
}

/// Every `generation=N` in `lines`, in order.
fn generations(lines: &[&str]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| kv(l, "generation"))
        .map(|g| g.parse().expect("a generation number"))
        .collect()
}

/// The generation never goes back over all the lines a VM printed, and
/// moves on at every change it reported.
fn assert_generations_climb(text: &[&str], changes: &[&str]) {
    let gens = generations(text);
    assert!(
        gens.windows(2).all(|g| g[0] <= g[1]),
        "generation went back: {gens:?}"
    );
    let at_change = generations(changes);
    assert!(at_change.windows(2).all(|g| g[0] < g[1]), "{at_change:?}");
}

/// The id `ivvmm client` printed first (`L1 clientN id=...`).
fn client_id(s: &nested::Scenario, n: u32) -> String {
    let line = s.l1(&format!("client{n} id="));
    assert_eq!(line.len(), 1, "{}", s.lines.join("\n"));
    val(line[0], "id").to_string()
}

#[test]
fn linux_sees_peers_come_and_go_and_rejoins_a_restarted_server_on_nested_svm() {
    if let Some(why) = nested::missing_prerequisite(IMAGES) {
        missing(&why);
        return;
    }
    let out = run_nested("presence,rejoin");
    let runs = nested::passed(&out, &["presence", "rejoin"]);
    let [presence, rejoin] = &runs[..] else {
        unreachable!("checked above");
    };

    // A host client joins and leaves while the VM watches with change
    // events, then another while it samples with no notification.
    let out = presence.vm("presence");
    out.assert_ok();
    let text: Vec<&str> = out.text.lines().collect();
    let shown = out.lines("peers: ok dev=");
    assert_eq!(
        shown.len(),
        2,
        "before and after the watches\n{}",
        out.tail()
    );
    let first = shown[0];
    assert_eq!(val(first, "link"), "connected", "{first}");
    assert_eq!(val(first, "count"), "0", "alone on the server: {first}");
    assert_eq!(val(first, "notify"), "none", "no notification by default");
    let watching = out.lines("peers: watching");
    assert_eq!(watching.len(), 2, "{}", out.tail());
    assert_eq!(val(watching[0], "notify"), "1", "the last of 2 vectors");
    assert_eq!(val(watching[1], "notify"), "none", "{}", watching[1]);
    let changes = out.lines("peers: change");
    assert_eq!(
        changes.len(),
        4,
        "a join and a leave each time\n{}",
        out.tail()
    );
    let (c1, c2) = (client_id(presence, 1), client_id(presence, 2));
    for (line, (joined, left, via)) in changes.iter().zip([
        (c1.as_str(), "none", "event"),
        ("none", c1.as_str(), "event"),
        (c2.as_str(), "none", "interval"),
        ("none", c2.as_str(), "interval"),
    ]) {
        assert_eq!(val(line, "joined"), joined, "{line}");
        assert_eq!(val(line, "left"), left, "{line}");
        assert_eq!(val(line, "via"), via, "{line}");
        assert_eq!(val(line, "link"), "connected", "{line}");
    }
    assert_eq!(val(changes[0], "count"), "1", "{}", changes[0]);
    assert!(
        val(changes[0], "ids").starts_with(&format!("{c1}:")),
        "{}",
        changes[0]
    );
    assert_generations_climb(&text, &changes);
    for done in out.lines("peers: ok watched") {
        assert_eq!(val(done, "backwards"), "0", "{done}");
        assert_eq!(val(done, "changes"), "2", "{done}");
    }
    for n in [1, 2] {
        let step = out.line(&format!("STEP watch-{n} "));
        assert_eq!(val(step, "rc"), "0", "SIGTERM ends a watch cleanly: {step}");
    }
    // The notification interrupts arrive on vector 1, and only while asked
    // for: sampling adds none, and the driver turned PR_NOTIFY off.
    let events = |tag: &str| -> Vec<u64> {
        let line = out.line(&format!("EVENTS {tag} "));
        line.split_whitespace()
            .skip(2)
            .map(|c| c.parse().expect("an event count"))
            .collect()
    };
    assert_eq!(events("before"), [0, 0]);
    let ev = events("event");
    assert_eq!(ev[0], 0, "vector 0 got nothing: {ev:?}");
    assert!(
        ev[1] >= 2,
        "a notification for the join and the leave: {ev:?}"
    );
    assert_eq!(events("interval"), ev, "no interrupt without notification");
    assert_eq!(out.line("NOTIFY after-event "), "NOTIFY after-event none");
    assert_eq!(val(shown[1], "notify"), "none", "{}", shown[1]);
    assert_eq!(val(shown[1], "count"), "0", "{}", shown[1]);

    // The server is SIGKILLed and restarted on the same -M object: the
    // link goes lost, then rejoined with a new id, and a new peer is seen.
    let out = rejoin.vm("rejoin");
    out.assert_ok();
    let text: Vec<&str> = out.text.lines().collect();
    let (c1, c2) = (client_id(rejoin, 1), client_id(rejoin, 2));
    let shown = out.lines("peers: ok dev=");
    assert_eq!(shown.len(), 2, "before and after\n{}", out.tail());
    let before = shown[0];
    let old_id = val(before, "own_id").to_string();
    let pos = |tag: &str| {
        out.line(&format!("POSITION {tag} "))
            .split_whitespace()
            .nth(2)
            .expect("a position")
            .to_string()
    };
    assert_eq!(pos("before"), old_id, "own_id is IVPOSITION");
    assert_eq!(val(before, "link"), "connected", "{before}");
    assert_eq!(val(before, "rejoins"), "0", "{before}");
    assert!(
        val(before, "ids").starts_with(&format!("{c1}:")),
        "{before}"
    );
    let changes = out.lines("peers: change");
    assert_eq!(changes.len(), 4, "{}", out.tail());
    assert_eq!(val(changes[0], "left"), c1, "{}", changes[0]);
    assert_eq!(val(changes[1], "link"), "lost", "{}", changes[1]);
    assert_eq!(val(changes[2], "link"), "rejoined", "{}", changes[2]);
    assert_eq!(val(changes[2], "rejoins"), "1", "{}", changes[2]);
    assert_eq!(val(changes[3], "joined"), c2, "{}", changes[3]);
    let after = shown[1];
    assert_eq!(val(after, "link"), "rejoined", "{after}");
    assert_eq!(val(after, "rejoins"), "1", "{after}");
    let new_id = val(after, "own_id");
    assert_eq!(pos("after"), new_id, "own_id is the new IVPOSITION");
    assert_ne!(
        new_id, old_id,
        "the first server gave id {old_id} after the client's {c1}; the new one starts afresh"
    );
    assert!(val(after, "ids").starts_with(&format!("{c2}:")), "{after}");
    assert_generations_climb(&text, &changes);
    assert_eq!(val(out.line("peers: ok watched"), "backwards"), "0");
}
