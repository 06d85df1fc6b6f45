// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! QEMU VMs and ivvmm VMs as peers on one `ivvmm server`: our Linux guest
//! under `qemu-system-x86_64 -accel tcg` with QEMU's ivshmem-doorbell, and
//! the test guest under ivvmm, ringing each other both ways and pairing
//! through the shared rendezvous of docs/pingpong.md.
//!
//! Needs /dev/kvm (the ivvmm VM), qemu-system-x86_64 and the Linux guest
//! images: run `scripts/setup`. The tests take turns (a lock), so two TCG
//! VMs never compete for this machine's cores at once.

mod common;
mod linux;

use std::io::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{field_of, Outcome, Server};
use linux::{val, Vm};

/// The test guest's own deadline, under the harness's.
const TG_TIMEOUT_MS: &str = "timeout_ms=55000";
const TG_DEADLINE: Duration = Duration::from_secs(70);

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A line that shows in `cargo test` output (not captured), in one write.
fn report(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Checks for what these tests need; panics naming the fix.
fn prerequisites() -> bool {
    if !common::require_kvm() {
        return false;
    }
    linux::images(); // "run scripts/setup" when they are not built
    common::testguest(false);
    true
}

/// The test guest under ivvmm, as a peer of `server` with `vectors`.
fn test_guest(server: &Server, test: &str) -> common::Running {
    let test = format!("{test} {TG_TIMEOUT_MS}");
    common::start_guest(
        &test,
        &["--server", server.path(), "--vectors", "2", "--stats"],
    )
}

/// `key=` of the test guest's one stdout line starting with `prefix`.
fn tg_field(out: &Outcome, prefix: &str, key: &str) -> String {
    out.field(prefix, key)
        .unwrap_or_else(|| panic!("no {key}= on a '{prefix}' line\n{out:?}"))
}

#[test]
fn qemu_without_driver_and_ivvmm_ring_each_other_pba_and_msix() {
    if !prerequisites() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&["-l", "4M", "-n", "2"]);

    // QEMU: no driver; a shell script enables MSI-X with the function mask
    // set, so our doorbell can only show as its PBA bit; it rings back.
    let qemu = Vm::new("qemu-pba", "sh /tests/pba-pong.sh 50")
        .cmdline("ivvmm.driver=0")
        .doorbell(&server.socket, 2)
        .spawn();
    let tg = test_guest(&server, "pingpong role=ping rounds=1").finish(TG_DEADLINE);
    let qemu = qemu.finish();
    qemu.assert_ok();
    assert!(tg.passed(), "the ivvmm test guest: {tg:?}");

    let q_pos = val(qemu.line("PBA position="), "position").to_string();
    let tg_id = tg_field(&tg, "pingpong role=ping id=", "id");
    assert_ne!(tg_id, q_pos, "the server gave the two VMs distinct ids");
    // Both handshakes (server, then rendezvous) completed: each side knows
    // the other's id.
    assert_eq!(
        tg_field(&tg, "pingpong role=ping id=", "peer"),
        q_pos,
        "ping paired with the QEMU pong"
    );
    let paired = qemu.line("PBA paired");
    assert_eq!(val(paired, "peer"), tg_id, "{paired}");
    // ivvmm -> QEMU: the PBA bit was clear until ping could ring, then set.
    assert_eq!(
        val(paired, "pending_before"),
        "0",
        "nothing pending before the ring\n{}",
        qemu.tail()
    );
    qemu.line("PBA pending=1");
    // QEMU -> ivvmm: the test guest's round ended on its MSI-X interrupt.
    assert_eq!(val(qemu.line("PBA rang"), "peer"), tg_id);
    tg_field(&tg, "pingpong rounds=1 ", "p50");
    let dev = common::stats(&tg, "ivshmem0");
    assert_eq!(
        dev["doorbell_unmatched"], 0,
        "our doorbell reached QEMU: {dev:?}"
    );
    qemu.line("PBA done");
}

/// Linux `ivshm pong` in QEMU against the test guest's ping in ivvmm.
#[test]
fn linux_pong_in_qemu_answers_the_test_guest_ping_in_ivvmm() {
    if !prerequisites() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&["-l", "4M", "-n", "2"]);
    let qemu = Vm::new("qemu-pong", "pong --timeout 50")
        .doorbell(&server.socket, 2)
        .spawn();
    let tg = test_guest(&server, "pingpong role=ping rounds=100").finish(TG_DEADLINE);
    let qemu = qemu.finish();
    qemu.assert_ok();
    assert!(tg.passed(), "the ivvmm test guest: {tg:?}");

    let pong = qemu.line("pong: ok");
    let tg_id = tg_field(&tg, "pingpong role=ping id=", "id");
    assert_eq!(val(pong, "rounds"), "100", "{pong}");
    assert_eq!(val(pong, "peer"), tg_id, "{pong}");
    assert_eq!(
        tg_field(&tg, "pingpong role=ping id=", "peer"),
        val(pong, "position"),
        "ping rang the QEMU VM's id"
    );
    assert_ne!(tg_id, val(pong, "position"));
    let p50: u64 = tg_field(&tg, "pingpong rounds=100 ", "p50")
        .parse()
        .expect("cycles");
    assert!(p50 > 0, "{tg:?}");
    report(&format!(
        "interop: test guest ping (ivvmm) -> ivshm pong (QEMU TCG): 100 rounds, p50={p50} cycles"
    ));
}

/// The other way round: the test guest's pong in ivvmm, Linux `ivshm ping`.
#[test]
fn linux_ping_in_qemu_gets_answers_from_the_test_guest_pong_in_ivvmm() {
    if !prerequisites() {
        return;
    }
    let _turn = one_at_a_time();
    let server = Server::start(&["-l", "4M", "-n", "2"]);
    let mut tg = test_guest(&server, "pingpong role=pong rounds=100");
    tg.wait_for("pingpong role=pong id=", Duration::from_secs(30));
    let qemu = Vm::new("qemu-ping", "ping --count 100 --timeout 50")
        .doorbell(&server.socket, 2)
        .run();
    let tg = tg.finish(TG_DEADLINE);
    qemu.assert_ok();
    assert!(tg.passed(), "the ivvmm test guest: {tg:?}");

    let ping = qemu.line("ping: ok");
    let tg_id = tg_field(&tg, "pingpong role=pong id=", "id");
    assert_eq!(val(ping, "rounds"), "100", "{ping}");
    assert_eq!(val(ping, "peer"), tg_id, "ping rang the test guest: {ping}");
    let done = tg
        .stdout
        .lines()
        .find(|l| l.starts_with("pingpong role=pong rounds="))
        .unwrap_or_else(|| panic!("no pong summary: {tg:?}"));
    assert_eq!(
        field_of(done, "irqs").as_deref(),
        Some("100"),
        "one interrupt per round, none extra: {done}"
    );
    let p50: u64 = val(ping, "p50").parse().expect("ns");
    assert!(p50 > 0, "{ping}");
    report(&format!(
        "interop: ivshm ping (QEMU TCG) -> test guest pong (ivvmm): 100 rounds, p50={p50} ns"
    ));
}

/// A QEMU VM on a server that is SIGKILLed and restarted behaves as QEMU
/// does (it cannot rejoin, and keeps running), and the ivvmm VM beside it
/// rejoins unharmed, seeing that the QEMU peer did not come back.
#[test]
fn a_qemu_vm_on_a_restarted_server_keeps_running_while_ivvmm_rejoins() {
    if !prerequisites() {
        return;
    }
    let _turn = one_at_a_time();
    let shm = common::ShmGuard::new("ivt-interop-restart");
    let sock = std::env::temp_dir().join(common::unique("ivvmm-interop-restart.sock"));
    let s = sock.to_str().unwrap().to_string();
    let server_args = [
        "server",
        "-S",
        &s,
        "-l",
        "4M",
        "-n",
        "2",
        "-M",
        &shm.0,
        "--keep-shm",
    ];
    let mut first = common::Running::ivvmm(&server_args);
    first.wait_for("serving", Duration::from_secs(10));
    let mut qemu = Vm::new("qemu-restart", "sleep 120")
        .doorbell(&sock, 2)
        .spawn();
    first.wait_for("peer 0 joined", Duration::from_secs(60));
    let mut tg = common::start_guest(
        "presence until_link=3 timeout_ms=60000",
        &["--server", &s, "--vectors", "2"],
    );
    tg.wait_for("presence ready", Duration::from_secs(30));

    first.signal(libc::SIGKILL);
    let _ = first.finish(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let mut second = common::Running::ivvmm(&server_args);
    second.wait_for("serving", Duration::from_secs(10));
    tg.wait_for("link=3", Duration::from_secs(10));
    let out = tg.finish(TG_DEADLINE);
    assert!(out.passed(), "{out:?}");
    let states: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("presence gen="))
        .collect();
    let first_state = states.first().copied().unwrap_or_default();
    let last_state = states.last().copied().unwrap_or_default();
    assert_eq!(
        field_of(first_state, "peers").as_deref(),
        Some("0:2"),
        "QEMU was peer 0: {states:#?}"
    );
    assert_eq!(
        field_of(last_state, "peers").as_deref(),
        Some("none"),
        "QEMU did not rejoin: {states:#?}"
    );
    assert!(
        qemu.is_running(),
        "QEMU keeps running after losing its server"
    );
    report("interop: QEMU kept running across the restart; the ivvmm VM rejoined without it");
}
