// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Linux guest side (kernel, initramfs, ivshmem driver, guest tool)
//! under `qemu-system-x86_64 -accel tcg` against QEMU's own ivshmem device,
//! the reference for what a guest sees. Linux cannot boot on this host's
//! KVM, so ivvmm itself is not involved here except as the server.
//!
//! Needs qemu-system-x86_64 and the guest images: run `scripts/setup` (or
//! guest/kernel/build.sh and guest/initramfs/build.sh). Without them every
//! test fails and says so. See tests/linux/mod.rs for how images are found.

mod linux;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use linux::{kv, val, TempDir, Vm};

const MIB4: u64 = 4 << 20;
const HOST_PATTERN: u64 = 0x1111_2222_3333_4444;
const GUEST_PATTERN: u64 = 0x5555_6666_7777_8888;
/// Where `ivshm check --host` expects the host's words and writes its own
/// (guest/tool/src/check.rs): clear of the ping-pong rendezvous at 0..0x200.
const HOST_OFFSETS: [u64; 3] = [0x200, 0x1000, MIB4 - 8];
const GUEST_OFFSETS: [u64; 3] = [0x240, 0x1040, MIB4 - 64];

fn read_u64(f: &File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off)
        .expect("read the shared memory file");
    u64::from_le_bytes(b)
}

fn write_u64(f: &File, off: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), off)
        .expect("write the shared memory file");
}

fn shm_file(path: &Path, size: u64) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create the shared memory file");
    f.set_len(size).expect("size the shared memory file");
    f
}

#[test]
fn driver_binds_every_plain_device_with_its_sysfs_attributes() {
    let dir = TempDir::new("sysfs");
    let out = Vm::new("sysfs", "sh /tests/sysfs.sh")
        .plain(&dir.path().join("a"), "4M")
        .plain(&dir.path().join("b"), "1M")
        .run();
    out.assert_ok();

    let devs = out.lines("SYSFS ivshmem");
    assert_eq!(
        devs.len(),
        2,
        "two devices, two char devices\n{}",
        out.tail()
    );
    // PCI slot order is command-line order: the 4M device comes first.
    for (line, name, size, pci) in [
        (devs[0], "ivshmem0", "4194304", "0000:00:04.0"),
        (devs[1], "ivshmem1", "1048576", "0000:00:05.0"),
    ] {
        assert!(line.starts_with(&format!("SYSFS {name} ")), "{line}");
        assert_eq!(val(line, "size"), size, "{line}");
        assert_eq!(
            val(line, "position"),
            "0",
            "plain devices have no id: {line}"
        );
        assert_eq!(
            val(line, "vectors"),
            "0",
            "plain devices have no MSI-X: {line}"
        );
        assert_eq!(val(line, "node"), "yes", "/dev/{name} exists: {line}");
        assert_eq!(val(line, "mode"), "600", "/dev/{name} is 0600: {line}");
        assert_eq!(val(line, "pci"), pci, "{line}");
    }
    let infos = out.lines("info: ok");
    assert_eq!(infos.len(), 2, "{}", out.tail());
    assert_eq!(val(infos[0], "size"), "4194304");
    assert_eq!(val(infos[1], "dev"), "/dev/ivshmem1");
    assert_eq!(out.lines("check: ok self").len(), 2, "{}", out.tail());
    for bw in out.lines("bw: ok") {
        let w: f64 = val(bw, "write_mbps").parse().expect("a number");
        assert!(w > 0.0, "{bw}");
    }
}

#[test]
fn guest_verifies_the_host_pattern_and_the_host_sees_the_guest_pattern() {
    let dir = TempDir::new("host");
    let path = dir.path().join("shm");
    let f = shm_file(&path, MIB4);
    for off in HOST_OFFSETS {
        write_u64(&f, off, HOST_PATTERN ^ off);
    }

    let out = Vm::new("check-host", "check --host")
        .plain(&path, "4M")
        .run();
    out.assert_ok();
    out.line("check: ok host");

    for off in GUEST_OFFSETS {
        assert_eq!(
            read_u64(&f, off),
            GUEST_PATTERN ^ off,
            "guest pattern at {off}"
        );
    }
    for off in HOST_OFFSETS {
        assert_eq!(
            read_u64(&f, off),
            HOST_PATTERN ^ off,
            "host word {off} kept"
        );
    }
}

#[test]
fn guest_check_fails_when_the_host_pattern_is_missing() {
    let dir = TempDir::new("nohost");
    let path = dir.path().join("shm");
    let f = shm_file(&path, MIB4);
    write_u64(&f, 0x200, HOST_PATTERN ^ 0x200); // right at 0x200, missing at 0x1000

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
        read_u64(&f, GUEST_OFFSETS[0]),
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
    out.assert_ok();
    let step = |name: &str| out.line(&format!("STEP {name}")).to_string();

    assert_ne!(
        val(&step("rmmod-while-mapped"), "rc"),
        "0",
        "a live mapping pins the module"
    );
    assert_eq!(val(&step("holder-after-rmmod"), "alive"), "yes");
    out.line("hold: mapped");
    assert_eq!(val(&step("unbind"), "rc"), "0");
    assert_eq!(
        val(&step("holder-exit"), "rc"),
        "135",
        "the holder's next access after unbind gets SIGBUS (128+7)"
    );
    assert!(out.lines("hold: ok").is_empty(), "the mapping was revoked");
    assert_eq!(val(&step("rmmod-after-unbind"), "rc"), "0");
    assert_eq!(val(&step("loaded"), "loaded"), "no");
    let re = step("reinsmod");
    assert_eq!((val(&re, "rc"), val(&re, "node")), ("0", "yes"), "{re}");
    out.line("info: ok");
    assert_eq!(
        val(&step("dmesg-bad"), "dmesg-bad"),
        "0",
        "no oops or warning"
    );
}

/// The PAT memtype entry covering [start, end], e.g. "write-back".
fn pat_type(out: &linux::Output, mode: &str, start: u64, end: u64) -> String {
    let begin = format!("PAT-BEGIN {mode}");
    let finish = format!("PAT-END {mode}");
    let list: Vec<&str> = out
        .text
        .lines()
        .skip_while(|l| !l.contains(&begin))
        .take_while(|l| !l.contains(&finish))
        .collect();
    for l in &list {
        // PAT: [mem 0x0000000100000000-0x0000000180000000] write-back
        let Some(rest) = l.strip_prefix("PAT: [mem ") else {
            continue;
        };
        let Some((range, ty)) = rest.split_once("] ") else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        if let (Some(a), Some(b)) = (hex(a), hex(b)) {
            if a <= start && end < b {
                return ty.trim().to_string();
            }
        }
    }
    panic!(
        "{mode}: no PAT entry covers {start:#x}-{end:#x}\n{}",
        list.join("\n")
    );
}

fn bar2(out: &linux::Output, mode: &str, dev: &str) -> (u64, u64, String) {
    let line = out.line(&format!("BAR2 {mode} {dev} "));
    let w: Vec<&str> = line.split_whitespace().collect();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex address");
    (hex(w[3]), hex(w[4]), val(line, "cache").to_string())
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

    let (start, end, cache) = bar2(&big, "wb", "ivshmem0");
    assert!(start >= 1 << 32, "the 2 GiB BAR is above 4 GiB: {start:#x}");
    assert_eq!(end - start + 1, 2 << 30);
    assert_eq!(pat_type(&big, "wb", start, end), "write-back");
    assert_eq!(cache, "write-back", "the driver reports the real type");

    // Control: reloaded with cache=uc the same BAR is uncached, so the
    // write-back result above is the driver's doing.
    let (start, end, cache) = bar2(&big, "uc", "ivshmem0");
    assert_eq!(pat_type(&big, "uc", start, end), "uncached");
    assert_eq!(cache, "uncached");

    let (start, end, cache) = bar2(&small, "wb", "ivshmem0");
    assert!(
        end < 1 << 32,
        "the 4 MiB BAR is in the 32-bit hole: {end:#x}"
    );
    let pat = pat_type(&small, "wb", start, end);
    assert_eq!(pat, "uncached-minus", "firmware MTRR UC demotes WB");
    assert_eq!(
        cache, pat,
        "the driver does not claim write-back it did not get"
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(sock: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ivvmm"))
        .arg("server")
        .arg("-S")
        .arg(sock)
        .args(["-l", "4M", "-n", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ivvmm server");
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "ivvmm server exited ({st}) before listening on {}: {err} \
                 (does this build have the `server` subcommand?)",
                sock.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ivvmm server is not listening on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server(child)
}

#[test]
fn two_vms_ping_pong_through_the_driver_over_ivvmm_server() {
    let dir = TempDir::new("doorbell");
    let sock = dir.path().join("sock");
    let _server = start_server(&sock);

    // Each phase: 100 round trips. irq = wait ioctl, epoll = epoll + read
    // (on vector 1), poll = spinning on shared memory (no doorbell).
    let pong = Vm::new(
        "pong",
        "cat /sys/class/ivshmem/ivshmem0/vectors && ivshm pong && \
         ivshm pong --epoll --vector 1 && ivshm pong --poll",
    )
    .doorbell(&sock, 2)
    .spawn();
    let ping = Vm::new(
        "ping",
        "ivshm info && ivshm ping --count 100 && \
         ivshm ping --epoll --vector 1 --count 100 && ivshm ping --poll --count 100",
    )
    .doorbell(&sock, 2)
    .spawn();
    let ping = ping.finish();
    let pong = pong.finish();
    ping.assert_ok();
    pong.assert_ok();

    let info = ping.line("info: ok");
    assert_eq!(val(info, "vectors"), "2", "{info}");
    assert_eq!(val(info, "size"), "4194304", "{info}");
    let pongs = pong.lines("pong: ok");
    let pings = ping.lines("ping: ok");
    assert_eq!(pongs.len(), 3, "{}", pong.tail());
    assert_eq!(pings.len(), 3, "{}", ping.tail());
    for (mode, (pi, po)) in ["irq", "epoll", "poll"]
        .iter()
        .zip(pings.iter().zip(&pongs))
    {
        eprintln!("{pi}");
        assert_eq!(val(pi, "mode"), *mode, "{pi}");
        assert_eq!(val(pi, "rounds"), "100", "{pi}");
        assert_eq!(val(po, "rounds"), "100", "pong answered every ping: {po}");
        assert_eq!(val(pi, "peer"), val(po, "position"), "ping rang pong's id");
        let p = |k| val(pi, k).parse::<u64>().expect("ns");
        assert!(
            p("p50") > 0 && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
            "{pi}"
        );
        assert!(kv(pi, "unit") == Some("ns"), "{pi}");
    }
    assert_ne!(
        val(info, "position"),
        val(pongs[0], "position"),
        "the server gave the VMs different ids"
    );
}
