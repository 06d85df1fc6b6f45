// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ivshmem-doorbell on real KVM: two ivvmm VMs on an `ivvmm server`
//! ping-pong over MSI-X with no VMM userspace wakeup per doorbell; peers
//! join late and die; masked vectors become pending bits; bad doorbells
//! are dropped.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

const BOOT: Duration = Duration::from_secs(30);

/// Pong first, then (after a pause, so it joins late) ping.
fn ping_pong(server: &Server, rounds: u32, extra: &str) -> (Outcome, Outcome) {
    let pong_test = format!("pingpong role=pong rounds={rounds} {extra}");
    let ping_test = format!("pingpong role=ping rounds={rounds} {extra}");
    let dev = ["--server", server.path(), "--vectors", "1", "--stats", "-v"];
    let mut pong = start_guest(&pong_test, &dev);
    pong.wait_for("pingpong role=pong id=", BOOT);
    std::thread::sleep(Duration::from_millis(200));
    let ping = start_guest(&ping_test, &dev);
    let ping = ping.finish(Duration::from_secs(120));
    let pong = pong.finish(Duration::from_secs(30));
    (ping, pong)
}

#[test]
fn two_vms_ping_pong_1000_rounds_without_waking_the_vmm() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M", "-n", "1"]);
    let (ping, pong) = ping_pong(&server, 1000, "");
    assert!(ping.passed(), "{ping:?}");
    assert!(pong.passed(), "{pong:?}");
    let p50: u64 = ping
        .field("pingpong rounds=", "p50")
        .unwrap()
        .parse()
        .unwrap();
    assert!(p50 > 0, "{ping:?}");
    assert_eq!(
        pong.field("pingpong role=pong rounds=", "irqs").as_deref(),
        Some("1000"),
        "every doorbell became exactly one interrupt: {pong:?}"
    );
    for (name, out) in [("ping", &ping), ("pong", &pong)] {
        let exits = stats(out, "vcpu_exits");
        let events = stats(out, "event_loop");
        let dev = stats(out, "ivshmem0");
        // 1000 doorbells each way, yet only the set-up's handful of MMIO
        // writes (MSI-X table, BAR0) reached the VMM, and the event loop
        // woke only for peers joining.
        assert!(exits["mmio_write"] < 50, "{name}: {exits:?}");
        assert!(exits["mmio_read"] < 50, "{name}: {exits:?}");
        assert!(events["ivshmem0"] < 10, "{name}: {events:?}");
        assert_eq!(dev["doorbell_unmatched"], 0, "{name}: {dev:?}");
        assert_eq!(dev["masked_events"], 0, "{name}: {dev:?}");
    }
    // Pong was there first: ping joined it late, and pong saw that.
    assert_eq!(stats(&pong, "ivshmem0")["peers_joined"], 1, "{pong:?}");
    // Ping found pong in its handshake (it has since left again).
    assert_eq!(stats(&ping, "ivshmem0")["peers_joined"], 1, "{ping:?}");
}

#[test]
fn wakeups_do_not_grow_with_rounds() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M"]);
    let (short, short_pong) = ping_pong(&server, 10, "");
    let (long, long_pong) = ping_pong(&server, 2000, "");
    assert!(short.passed() && long.passed(), "{short:?}\n{long:?}");
    // The doorbells really happened between the two snapshots: each round
    // reached the pong VM as one interrupt (and its answer came back, or
    // ping would not have passed).
    for (pong, rounds) in [(&short_pong, "10"), (&long_pong, "2000")] {
        assert!(pong.passed(), "{pong:?}");
        assert_eq!(
            pong.field("pingpong role=pong rounds=", "irqs").as_deref(),
            Some(rounds),
            "{pong:?}"
        );
    }
    let a = stats(&short, "vcpu_exits");
    let b = stats(&long, "vcpu_exits");
    // 200x the doorbells, the same exits (within the noise of serial output).
    for k in ["mmio_write", "mmio_read"] {
        assert!(b[k] <= a[k] + 5, "{k}: {a:?} vs {b:?}");
    }
    assert!(stats(&long, "event_loop")["ivshmem0"] <= stats(&short, "event_loop")["ivshmem0"] + 2);
}

#[test]
fn a_peer_killed_mid_run_leaves_the_survivor_running() {
    if !require_kvm() {
        return;
    }
    // Room for the ping side's samples of 4M rounds.
    let server = Server::start(&["-l", "32M"]);
    let dev = ["--server", server.path(), "--stats", "-v"];
    let mut pong = start_guest("pingpong role=pong rounds=4000000 timeout_ms=0", &dev);
    pong.wait_for("pingpong role=pong id=", BOOT);
    let mut ping = start_guest("pingpong role=ping rounds=4000000 timeout_ms=0", &dev);
    ping.wait_for("pingpong role=ping id=", BOOT);
    std::thread::sleep(Duration::from_millis(500));
    ping.signal(libc::SIGKILL);
    let ping = ping.finish(Duration::from_secs(10));
    assert_eq!(ping.status.code(), None, "killed by a signal: {ping:?}");
    // The survivor hears about it and keeps running.
    pong.wait_for("left", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pong.child.try_wait().unwrap().is_none(),
        "pong must keep running"
    );
    pong.signal(libc::SIGTERM);
    let pong = pong.finish(Duration::from_secs(10));
    assert_eq!(pong.code(), 128 + libc::SIGTERM, "orderly stop: {pong:?}");
    let dev = stats(&pong, "ivshmem0");
    assert_eq!((dev["peers_joined"], dev["peers_left"]), (1, 1), "{pong:?}");
}

#[test]
fn doorbells_to_unknown_peers_and_vectors_are_dropped() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M", "-n", "2"]);
    let out = start_guest(
        "doorbell-bad",
        &["--server", server.path(), "--vectors", "2", "--stats"],
    )
    .finish(BOOT);
    assert!(out.passed(), "{out:?}");
    assert!(!out.stdout.contains(" bad"), "{out:?}");
    // 0xffff:0, own:0xff, own:0x100, own:0xffff, own:2 all reached the VMM.
    assert!(
        stats(&out, "ivshmem0")["doorbell_unmatched"] >= 5,
        "{out:?}"
    );
}

/// Rings `peer`'s `vector` as a host peer joined through the protocol
/// library (what `ivvmm client ring` does).
fn ring_as_host(server: &Server, peer: u16, vector: usize) {
    let (_conn, hs) =
        ivvmm::protocol::connect(&server.socket, 4, Duration::from_secs(5)).expect("join server");
    let fds = hs
        .peers
        .get(&peer)
        .unwrap_or_else(|| panic!("peer {peer} not known"));
    fds[vector].write(1).unwrap();
    // Tell a guest waiting with MSI-X disabled that we rang (no PBA bit then).
    let map = hs.shm.map().unwrap();
    map.write_u32(0x8c, u32::from(hs.id)).unwrap();
    map.write_u32(0x88, u32::from_le_bytes(*b"RUNG")).unwrap();
    let _ = map.len();
    std::thread::sleep(Duration::from_millis(200));
    let _ = _conn.as_raw_fd();
}

fn masked_case(mask: &str) {
    let server = Server::start(&["-l", "4M", "-n", "2"]);
    let test = format!("msix-mask mask={mask} vector=1 timeout_ms=20000");
    let mut vm = start_guest(
        &test,
        &["--server", server.path(), "--vectors", "2", "--stats"],
    );
    vm.wait_for("ready", BOOT);
    let id: u16 = field_of(
        vm.stdout().lines().find(|l| l.contains("ready")).unwrap(),
        "id",
    )
    .unwrap()
    .parse()
    .unwrap();
    ring_as_host(&server, id, 1);
    let out = vm.finish(BOOT);
    assert!(out.passed(), "{mask}: {out:?}");
    let masked = lines_with(&out, "msix-mask step=masked")[0];
    assert_eq!(
        field_of(masked, "irqs").as_deref(),
        Some("0"),
        "{mask}: {out:?}"
    );
    assert_eq!(
        field_of(masked, "pending").as_deref(),
        Some("1"),
        "PBA bit set: {out:?}"
    );
    let unmasked = lines_with(&out, "msix-mask step=unmasked")[0];
    assert_eq!(
        field_of(unmasked, "irqs").as_deref(),
        Some("1"),
        "once: {out:?}"
    );
    assert_eq!(
        field_of(unmasked, "pending").as_deref(),
        Some("0"),
        "{out:?}"
    );
    let dev = stats(&out, "ivshmem0");
    assert_eq!(dev["masked_events"], 1, "{out:?}");
    assert_eq!(dev["pending_injected"], 1, "{out:?}");
}

#[test]
fn masked_entry_sets_the_pending_bit_and_unmask_injects_once() {
    if require_kvm() {
        masked_case("entry");
    }
}

#[test]
fn function_mask_sets_the_pending_bit_and_unmask_injects_once() {
    if require_kvm() {
        masked_case("function");
    }
}

#[test]
fn msix_disabled_holds_the_event_until_enabled() {
    if require_kvm() {
        masked_case("disabled");
    }
}

#[test]
fn polling_mode_needs_no_interrupts_at_all() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M"]);
    let (ping, pong) = ping_pong(&server, 1000, "mode=poll");
    assert!(ping.passed() && pong.passed(), "{ping:?}\n{pong:?}");
}

#[test]
fn vms_keep_talking_after_the_server_dies() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "32M"]);
    let dev = ["--server", server.path(), "-v"];
    let mut pong = start_guest("pingpong role=pong rounds=3000000 timeout_ms=0", &dev);
    pong.wait_for("pingpong role=pong id=", BOOT);
    let mut ping = start_guest("pingpong role=ping rounds=3000000 timeout_ms=0", &dev);
    ping.wait_for("pingpong role=ping id=", BOOT);
    // Kill the server outright: no disconnect notices for anyone.
    let mut srv = server;
    let proc = srv.proc.take().unwrap();
    proc.signal(libc::SIGKILL);
    let _ = proc.finish(Duration::from_secs(10));
    pong.wait_for("went away", Duration::from_secs(10));
    ping.wait_for("went away", Duration::from_secs(10));
    // Doorbells still flow: the pong's interrupt count keeps rising. Sample
    // it through SIGUSR1 stats? The guest only reports at the end, so
    // instead check both VMs are alive and then stop them in order.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pong.child.try_wait().unwrap().is_none(),
        "pong still running"
    );
    assert!(
        ping.child.try_wait().unwrap().is_none(),
        "ping still running"
    );
    ping.signal(libc::SIGTERM);
    pong.signal(libc::SIGTERM);
    let ping = ping.finish(Duration::from_secs(10));
    let pong = pong.finish(Duration::from_secs(10));
    assert_eq!(ping.code(), 128 + libc::SIGTERM, "{ping:?}");
    assert_eq!(pong.code(), 128 + libc::SIGTERM, "{pong:?}");
}

#[test]
fn sigusr1_prints_stats_while_running() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "32M"]);
    let dev = ["--server", server.path()];
    let mut pong = start_guest("pingpong role=pong rounds=3000000 timeout_ms=0", &dev);
    pong.wait_for("pingpong role=pong id=", BOOT);
    let mut ping = start_guest("pingpong role=ping rounds=3000000 timeout_ms=0", &dev);
    ping.wait_for("pingpong role=ping id=", BOOT);
    std::thread::sleep(Duration::from_millis(300));
    pong.signal(libc::SIGUSR1);
    pong.wait_for("ivvmm stats: vcpu_exits", Duration::from_secs(5));
    let first = pong.stderr();
    std::thread::sleep(Duration::from_millis(700));
    pong.signal(libc::SIGUSR1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pong.stderr().matches("ivvmm stats: vcpu_exits").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second stats print"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pong.child.try_wait().unwrap().is_none(),
        "SIGUSR1 must not stop the VM"
    );
    // Between the two prints thousands of doorbells went by; the MMIO exit
    // count did not move.
    let all = pong.stderr();
    let counts: Vec<u64> = all
        .lines()
        .filter(|l| l.starts_with("ivvmm stats: vcpu_exits"))
        .map(|l| field_of(l, "mmio_write").unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts[0], counts[1], "{first}\n{all}");
    ping.signal(libc::SIGTERM);
    pong.signal(libc::SIGTERM);
    let _ = ping.finish(Duration::from_secs(10));
    let _ = pong.finish(Duration::from_secs(10));
}

#[test]
fn host_client_pings_a_vm() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M"]);
    let mut pong = start_guest(
        "pingpong role=pong rounds=500",
        &["--server", server.path()],
    );
    pong.wait_for("pingpong role=pong id=", BOOT);
    let ping = Running::ivvmm(&["client", "-S", server.path(), "ping", "--count", "500"])
        .finish(Duration::from_secs(60));
    assert_eq!(ping.code(), 0, "{ping:?}");
    let line = lines_with(&ping, "ping peer=")[0];
    for k in ["p50", "p90", "p99", "max"] {
        let v: f64 = field_of(line, k)
            .unwrap()
            .trim_end_matches("us")
            .parse()
            .unwrap();
        assert!(v > 0.0, "{k}: {line}");
    }
    assert_eq!(field_of(line, "count").as_deref(), Some("500"), "{line}");
    let pong = pong.finish(BOOT);
    assert!(pong.passed(), "{pong:?}");
}

#[test]
fn vm_pings_a_host_client() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M"]);
    let mut pong = Running::ivvmm(&["client", "-S", server.path(), "pong"]);
    pong.wait_for("ready", BOOT);
    let ping = start_guest(
        "pingpong role=ping rounds=500",
        &["--server", server.path()],
    )
    .finish(Duration::from_secs(60));
    assert!(ping.passed(), "{ping:?}");
    pong.wait_for("done answered=500", Duration::from_secs(10));
    pong.signal(libc::SIGINT);
    let pong = pong.finish(Duration::from_secs(10));
    assert_eq!(pong.code(), 0, "{pong:?}");
}

#[test]
fn too_many_peers_times_vectors_is_refused_clearly_and_the_vm_keeps_running() {
    if !require_kvm() {
        return;
    }
    // 64 vectors (the server's maximum, as QEMU's): the VM's own 64 plus 15
    // host peers' 64 each is 1024 doorbells, past KVM's ~1000 per VM.
    let server = Server::start(&["-l", "4M", "-n", "64"]);
    let mut vm = start_guest(
        "serial-echo timeout_ms=0",
        &["--server", server.path(), "--vectors", "64", "--stats"],
    );
    vm.wait_for("ready", BOOT);
    let mut peers = Vec::new();
    for _ in 0..15 {
        let mut c = Running::ivvmm(&["client", "-S", server.path()]);
        c.wait_for("id=", BOOT);
        peers.push(c);
    }
    vm.wait_for("KVM allows about", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "the VM keeps running"
    );
    vm.signal(libc::SIGTERM);
    let out = vm.finish(Duration::from_secs(10));
    let dev = stats(&out, "ivshmem0");
    assert!(dev["over_budget"] >= 34, "{dev:?}");
    // Said clearly, but not once per doorbell.
    let said = out.stderr.matches("KVM allows about").count();
    assert!((1..=8).contains(&said), "{said} lines: {out:?}");
    for p in peers {
        p.signal(libc::SIGINT);
        let _ = p.finish(Duration::from_secs(10));
    }
}
