// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The peer-presence extension and rejoining a restarted server
//! (docs/ivshmem-presence.md), seen from the test guest's `presence` case:
//! peers coming and going, the server SIGKILLed and restarted with the same
//! (or other) memory, and `--no-rejoin`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const BOOT: Duration = Duration::from_secs(30);

/// `ivvmm server` on a socket path we choose (a restarted one takes the
/// same path over from its SIGKILLed predecessor's stale socket).
fn server_at(socket: &Path, args: &[&str]) -> Running {
    let s = socket.to_str().unwrap();
    let mut all = vec!["server", "-S", s];
    all.extend_from_slice(args);
    let mut proc = Running::ivvmm(&all);
    proc.wait_for("serving", Duration::from_secs(10));
    proc
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(unique("ivvmm-presence.sock"))
}

/// The `presence gen=...` state lines the guest printed, in order.
fn states(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("presence gen="))
        .map(str::to_string)
        .collect()
}

fn field(line: &str, key: &str) -> String {
    field_of(line, key).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn kill9(p: &Running) {
    p.signal(libc::SIGKILL);
}

fn peers_seen(host_client: &mut Running) -> u16 {
    // `ivvmm client` prints its summary line with its id first.
    host_client.wait_for("id", Duration::from_secs(10));
    let out = host_client.stdout();
    let line = out.lines().next().unwrap_or("").to_string();
    line.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {line:?}"))
}

fn joins_and_leaves(notify: bool) {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "1M", "-n", "1"]);
    let test = format!("presence changes=2 notify={}", u8::from(notify));
    let mut vm = start_guest(&test, &["--server", server.path()]);
    vm.wait_for("presence ready", BOOT);
    let mut host = Running::ivvmm(&["client", "-S", server.path()]);
    let host_id = peers_seen(&mut host);
    std::thread::sleep(Duration::from_millis(300));
    host.signal(libc::SIGTERM);
    let _ = host.finish(Duration::from_secs(5));
    let out = vm.finish(Duration::from_secs(30));
    assert!(out.passed(), "{out:?}");
    let st = states(&out.stdout);
    assert_eq!(st.len(), 3, "initial, join, leave: {st:#?}");
    assert_eq!(field(&st[0], "peers"), "none", "{st:#?}");
    assert_eq!(field(&st[1], "peers"), format!("{host_id}:1"), "{st:#?}");
    assert_eq!(field(&st[1], "count"), "1", "{st:#?}");
    assert_eq!(field(&st[2], "peers"), "none", "{st:#?}");
    let gens: Vec<u32> = st
        .iter()
        .map(|l| field(l, "gen").parse().unwrap())
        .collect();
    assert!(gens.windows(2).all(|w| w[1] > w[0]), "{gens:?}");
    for l in &st {
        assert_eq!(field(l, "link"), "1", "connected throughout: {l}");
    }
    let irqs: u32 = out
        .field("presence done", "notify_irqs")
        .unwrap()
        .parse()
        .unwrap();
    if notify {
        assert!(irqs >= 1, "the notification vector fired: {out:?}");
    } else {
        assert_eq!(irqs, 0);
    }
}

#[test]
fn the_guest_sees_a_host_peer_come_and_go() {
    joins_and_leaves(false);
}

#[test]
fn the_notification_vector_fires_on_a_change_when_asked_for() {
    joins_and_leaves(true);
}

#[test]
fn without_a_server_extension_registers_are_absent_on_a_plain_device() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-presence-plain");
    let out = boot_test("presence", &["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    assert!(
        out.stdout.contains("presence absent reg=0x0"),
        "plain ivshmem has no extension, like QEMU: {out:?}"
    );
}

/// Both VMs rejoin a SIGKILLed server restarted with the same `-M` object,
/// learn their new ids and each other's, and the shared memory kept what
/// was written before the restart.
#[test]
fn a_server_restarted_with_the_same_memory_is_rejoined_by_both_vms() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-rejoin");
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1", "-M", shm.0.as_str(), "--keep-shm"];
    let first = server_at(&sock, &args);
    let dev = ["--server", sock.to_str().unwrap()];
    let test = "presence until_link=3 until_peers=1 timeout_ms=30000";
    let mut a = start_guest(test, &dev);
    a.wait_for("presence ready", BOOT);
    let mut b = start_guest(test, &dev);
    b.wait_for("presence ready", BOOT);
    let before = write_u64_marker(&shm.path());

    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    let restarted = Instant::now();
    let second = server_at(&sock, &args);
    a.wait_for("link=3", Duration::from_secs(10));
    b.wait_for("link=3", Duration::from_secs(10));
    let took = restarted.elapsed();
    eprintln!("presence: both VMs rejoined {took:?} after the restart");
    assert!(took < Duration::from_secs(3), "rejoin took {took:?}");

    let (a, b) = (a.finish(BOOT), b.finish(BOOT));
    assert!(a.passed() && b.passed(), "{a:?}\n{b:?}");
    let last = |o: &Outcome| states(&o.stdout).last().cloned().unwrap();
    let (la, lb) = (last(&a), last(&b));
    assert_eq!(field(&la, "rejoins"), "1", "{la}");
    // Each knows its new id (IVPOSITION follows) and sees the other.
    assert_eq!(field(&la, "own"), field(&la, "ivposition"), "{la}");
    assert_eq!(field(&lb, "own"), field(&lb, "ivposition"), "{lb}");
    assert_eq!(
        field(&la, "peers"),
        format!("{}:1", field(&lb, "own")),
        "{la}\n{lb}"
    );
    assert_eq!(
        field(&lb, "peers"),
        format!("{}:1", field(&la, "own")),
        "{la}\n{lb}"
    );
    assert!(a.stderr.contains("is back: rejoined as id"), "{}", a.stderr);
    assert_eq!(read_u64_at(&shm.path(), 0x8000), before, "memory kept");
    drop(second);
}

/// Two VMs ping-pong (round trips through doorbells, round numbers in
/// shared memory) while the server is SIGKILLed and restarted with the
/// same object: every round is answered, the lost ones after a retry to the
/// peer's new id, and both VMs rejoin.
#[test]
fn ping_pong_carries_on_across_a_server_restart() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-rejoin-pp");
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1", "-M", shm.0.as_str(), "--keep-shm"];
    let first = server_at(&sock, &args);
    let dev = ["--server", sock.to_str().unwrap()];
    let mut pong = start_guest("rejoin-pingpong role=pong", &dev);
    pong.wait_for("role=pong id=", BOOT);
    let mut ping = start_guest("rejoin-pingpong role=ping rounds=1500 gap_ms=2", &dev);
    ping.wait_for("role=ping id=", BOOT);
    std::thread::sleep(Duration::from_millis(800));
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let _second = server_at(&sock, &args);
    let ping = ping.finish(Duration::from_secs(60));
    let pong = pong.finish(Duration::from_secs(30));
    assert!(ping.passed(), "{ping:?}");
    assert!(pong.passed(), "{pong:?}");
    let rounds = ping.field("rejoin-pingpong rounds=", "rounds");
    assert_eq!(rounds.as_deref(), Some("1500"), "{ping:?}");
    assert_eq!(
        ping.field("rejoin-pingpong rounds=", "rejoins").as_deref(),
        Some("1"),
        "the server restarted during the rounds: {ping:?}"
    );
    assert_eq!(
        pong.field("rejoin-pingpong role=pong echoed=", "rejoins")
            .as_deref(),
        Some("1"),
        "{pong:?}"
    );
    eprintln!(
        "presence: ping-pong across a restart: {} retries, slowest round {} us",
        ping.field("rejoin-pingpong rounds=", "retries").unwrap(),
        ping.field("rejoin-pingpong rounds=", "slowest_us").unwrap()
    );
}

/// A server with other memory is refused (said once) and the VM keeps
/// trying; when the right one is back, it rejoins.
#[test]
fn a_server_with_other_memory_is_refused_until_the_right_one_returns() {
    if !require_kvm() {
        return;
    }
    let (right, wrong) = (ShmGuard::new("ivt-rejoin-a"), ShmGuard::new("ivt-rejoin-b"));
    let sock = socket_path();
    let with = |shm: &ShmGuard| {
        vec![
            "-l".to_string(),
            "1M".into(),
            "-n".into(),
            "1".into(),
            "-M".into(),
            shm.0.clone(),
            "--keep-shm".into(),
        ]
    };
    let args_right = with(&right);
    let args_wrong = with(&wrong);
    let first = server_at(&sock, &as_strs(&args_right));
    let mut vm = start_guest(
        "presence until_link=3 timeout_ms=40000",
        &["--server", sock.to_str().unwrap()],
    );
    vm.wait_for("presence ready", BOOT);
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    vm.wait_for("link=2", Duration::from_secs(10));

    let other = server_at(&sock, &as_strs(&args_wrong));
    vm.wait_for("stays away", Duration::from_secs(10));
    // Several more tries against it: still away, said once.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!vm.stdout().contains("link=3"), "{}", vm.stdout());
    assert_eq!(
        vm.stderr().matches("stays away").count(),
        1,
        "{}",
        vm.stderr()
    );
    other.signal(libc::SIGTERM);
    let _ = other.finish(Duration::from_secs(5));

    let _back = server_at(&sock, &as_strs(&args_right));
    vm.wait_for("link=3", Duration::from_secs(10));
    let out = vm.finish(BOOT);
    assert!(out.passed(), "{out:?}");
}

/// A restarted default server (memfd memory, as QEMU's server gives it):
/// its new memory is other memory, so the VM and `ivvmm client --rejoin`
/// stay away and keep running. Looking at a memfd's seals in the handshake
/// must be allowed to their rejoining threads too (it was not: both
/// stopped with exit 159).
#[test]
fn a_restarted_memfd_server_is_refused_and_the_vm_runs_on() {
    if !require_kvm() {
        return;
    }
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1"];
    let first = server_at(&sock, &args);
    let mut vm = start_guest(
        "presence until_link=3 timeout_ms=4000",
        &["--server", sock.to_str().unwrap()],
    );
    vm.wait_for("presence ready", BOOT);
    let mut client = Running::ivvmm(&["client", "-S", sock.to_str().unwrap(), "--rejoin"]);
    client.wait_for("id=", Duration::from_secs(10));
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    let second = server_at(&sock, &args);
    vm.wait_for("stays away", Duration::from_secs(10));
    client.wait_for("staying away", Duration::from_secs(10));
    let out = vm.finish(BOOT);
    assert_eq!(out.code(), 1, "the guest ran to its own end: {out:?}");
    assert!(out.stdout.contains("FAIL: link 2 with"), "{out:?}");
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
    // `ivvmm client --rejoin` the same way.
    client.signal(libc::SIGTERM);
    let out = client.finish(Duration::from_secs(5));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
    second.signal(libc::SIGTERM);
    let _ = second.finish(Duration::from_secs(5));
}

/// A device that asked for more vectors than the server gives (its `-n`
/// is smaller) holds what it got, and rejoins the same server restarted:
/// it must compare the new server with what it holds, not with what it
/// asked for (it did, and stayed away forever).
#[test]
fn a_device_with_fewer_vectors_than_asked_rejoins_the_same_server() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-rejoin-fewer");
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1", "-M", shm.0.as_str(), "--keep-shm"];
    let first = server_at(&sock, &args);
    let mut vm = start_guest(
        "presence until_link=3 timeout_ms=20000",
        &["--server", sock.to_str().unwrap(), "--vectors", "2"],
    );
    vm.wait_for("presence ready", BOOT);
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    let second = server_at(&sock, &args);
    let out = vm.finish(BOOT);
    assert!(out.passed(), "the VM rejoined (link 3): {out:?}");
    assert!(!out.stderr.contains("stays away"), "{}", out.stderr);
    second.signal(libc::SIGTERM);
    let _ = second.finish(Duration::from_secs(5));
}

/// `--no-rejoin`: QEMU's behaviour, the server is never contacted again.
#[test]
fn no_rejoin_keeps_away_from_a_restarted_server() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-norejoin");
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1", "-M", shm.0.as_str(), "--keep-shm"];
    let first = server_at(&sock, &args);
    let mut vm = start_guest(
        "presence until_link=3 timeout_ms=4000",
        &["--server", sock.to_str().unwrap(), "--no-rejoin"],
    );
    vm.wait_for("presence ready", BOOT);
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    let second = server_at(&sock, &args);
    let out = vm.finish(BOOT);
    assert!(!out.passed(), "the guest must not see a rejoin: {out:?}");
    assert!(out.stdout.contains("FAIL: link 2 with"), "{out:?}");
    assert!(out.stderr.contains("rejoining is off"), "{}", out.stderr);
    let srv = {
        second.signal(libc::SIGTERM);
        second.finish(Duration::from_secs(5))
    };
    assert!(
        !srv.stderr.contains("joined"),
        "no peer came: {}",
        srv.stderr
    );
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes a marker into the object and returns it.
fn write_u64_marker(path: &Path) -> u64 {
    let marker = 0x5245_4a4f_494e_0001u64;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    write_u64_at(&f, 0x8000, marker);
    marker
}

/// `ivvmm client --rejoin` follows a restarted server the same way.
#[test]
fn the_host_client_rejoins_with_rejoin() {
    let shm = ShmGuard::new("ivt-rejoin-client");
    let sock = socket_path();
    let args = ["-l", "1M", "-n", "1", "-M", shm.0.as_str(), "--keep-shm"];
    let first = server_at(&sock, &args);
    let mut client = Running::ivvmm(&["client", "-S", sock.to_str().unwrap(), "--rejoin"]);
    client.wait_for("id=", Duration::from_secs(10));
    kill9(&first);
    let _ = first.finish(Duration::from_secs(5));
    client.wait_for("server gone; rejoining", Duration::from_secs(10));
    let _second = server_at(&sock, &args);
    client.wait_for("rejoined id=", Duration::from_secs(10));
    client.signal(libc::SIGTERM);
    let out = client.finish(Duration::from_secs(5));
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
}

/// A join or leave is visible to the guest within 10 ms (the bound):
/// the guest publishes PR_GENERATION in shared memory the moment it moves;
/// the host connects to (and leaves) the server itself and times it.
#[test]
fn a_join_or_leave_shows_in_the_guest_within_10_ms() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-presence-latency");
    let server = Server::start(&["-l", "1M", "-n", "1", "-M", &shm.0]);
    let rounds = 5;
    let test = format!("presence-mirror changes={}", 2 * rounds);
    let mut vm = start_guest(&test, &["--server", server.path()]);
    vm.wait_for("presence-mirror gen=", BOOT);
    // Polled without sleeping (a sleep's own latency would be measured),
    // yielding the CPU between reads.
    let file = std::fs::File::open(shm.path()).unwrap();
    let shown = || {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, 0x300).unwrap();
        u32::from_le_bytes(b)
    };
    let wait_change = |from: u32| {
        let start = Instant::now();
        while shown() == from {
            assert!(start.elapsed() < Duration::from_secs(5), "no change seen");
            // Two cores, a busy vCPU: let the server and the event loop run.
            std::thread::yield_now();
        }
        start.elapsed()
    };
    let mut took = Vec::new();
    for _ in 0..rounds {
        let before = shown();
        let peer = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
        took.push(wait_change(before));
        std::thread::sleep(Duration::from_millis(50));
        let before = shown();
        drop(peer);
        took.push(wait_change(before));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = vm.finish(Duration::from_secs(10));
    assert!(out.passed(), "{out:?}");
    took.sort();
    let median = took[took.len() / 2];
    eprintln!(
        "presence: join/leave to guest, median {median:?}, max {:?}",
        took.last().unwrap()
    );
    assert!(median < Duration::from_millis(10), "{took:?}");
}
