// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Linux guest checks shared by tests/linux_tcg.rs (QEMU TCG) and
//! tests/linux_ivvmm.rs (ivvmm on hardware KVM): the same guest scripts
//! (guest/initramfs/tests/*.sh, `ivshm`) judged the same way, whatever VMM
//! ran them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::boot::Image;
use super::{kv, val, Images, Output, TempDir, Vm};

pub const MIB4: u64 = 4 << 20;
pub const HOST_PATTERN: u64 = 0x1111_2222_3333_4444;
pub const GUEST_PATTERN: u64 = 0x5555_6666_7777_8888;
/// Where `ivshm check --host` expects the host's words and writes its own
/// in 4 MiB (guest/tool/src/check.rs): clear of the ping-pong rendezvous
/// at 0..0x200 (docs/pingpong.md).
pub const HOST_OFFSETS: [u64; 3] = [0x200, 0x1000, MIB4 - 8];
pub const GUEST_OFFSETS: [u64; 3] = [0x240, 0x1040, MIB4 - 64];

pub fn read_u64(f: &File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off)
        .expect("read the shared memory file");
    u64::from_le_bytes(b)
}

pub fn write_u64(f: &File, off: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), off)
        .expect("write the shared memory file");
}

/// A zeroed file of `size` bytes to back a plain device.
pub fn shm_file(path: &Path, size: u64) -> File {
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

/// The host's words for `check --host` in a 4 MiB file.
pub fn write_host_pattern(f: &File) {
    for off in HOST_OFFSETS {
        write_u64(f, off, HOST_PATTERN ^ off);
    }
}

/// After `check --host`: the guest's words arrived, the host's are intact.
pub fn assert_guest_pattern(f: &File) {
    for off in GUEST_OFFSETS {
        assert_eq!(
            read_u64(f, off),
            GUEST_PATTERN ^ off,
            "guest pattern at {off:#x}"
        );
    }
    for off in HOST_OFFSETS {
        assert_eq!(
            read_u64(f, off),
            HOST_PATTERN ^ off,
            "host word {off:#x} kept"
        );
    }
}

/// What /tests/sysfs.sh printed, for plain devices given as (name, size in
/// bytes, PCI address) in PCI order.
pub fn assert_sysfs(out: &Output, want: &[(&str, &str, &str)]) {
    out.assert_ok();
    let devs = out.lines("SYSFS ivshmem");
    assert_eq!(
        devs.len(),
        want.len(),
        "one char device per device\n{}",
        out.tail()
    );
    for (line, (name, size, pci)) in devs.iter().zip(want) {
        assert!(line.starts_with(&format!("SYSFS {name} ")), "{line}");
        assert_eq!(val(line, "size"), *size, "{line}");
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
        assert_eq!(val(line, "pci"), *pci, "{line}");
    }
    let infos = out.lines("info: ok");
    assert_eq!(infos.len(), want.len(), "{}", out.tail());
    for (info, (name, size, _)) in infos.iter().zip(want) {
        assert_eq!(val(info, "dev"), format!("/dev/{name}"), "{info}");
        assert_eq!(val(info, "size"), *size, "{info}");
    }
    assert_eq!(
        out.lines("check: ok self").len(),
        want.len(),
        "{}",
        out.tail()
    );
    for bw in out.lines("bw: ok") {
        let w: f64 = val(bw, "write_mbps").parse().expect("a number");
        assert!(w > 0.0, "{bw}");
    }
}

/// What /tests/rmmod-live.sh printed.
pub fn assert_rmmod_live(out: &Output) {
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

/// The PAT memtype entry covering [start, end], e.g. "write-back", from
/// what /tests/pat.sh printed in `mode` (wb or uc).
pub fn pat_type(out: &Output, mode: &str, start: u64, end: u64) -> String {
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

/// A hex address as the guest scripts print it (with or without 0x).
fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a hex address: {s:?}"))
}

/// BAR2's first and last address and the driver's `cache`, from pat.sh.
pub fn bar2(out: &Output, mode: &str, dev: &str) -> (u64, u64, String) {
    let line = out.line(&format!("BAR2 {mode} {dev} "));
    let w: Vec<&str> = line.split_whitespace().collect();
    (hex(w[3]), hex(w[4]), val(line, "cache").to_string())
}

/// What /tests/realloc.sh printed: Linux assigned BAR0 and BAR2 of every
/// device in `devs` itself (the kernel's `: assigned` lines, after the
/// script cleared them and rescanned), each inside one of the host
/// bridge's windows (/proc/iomem, from the firmware's _CRS) and at its old
/// size, and every device works where it is (`check: ok`). Returns the
/// windows and the BAR2s that moved (`dev old -> new`).
pub fn linux_placed_the_bars(out: &Output, devs: &[&str]) -> (Vec<(u64, u64)>, Vec<String>) {
    out.assert_ok();
    let windows: Vec<(u64, u64)> = out
        .lines("REALLOC window ")
        .iter()
        .map(|l| {
            let range = l.split_whitespace().nth(2).unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or_else(|| panic!("{l}"));
            (hex(lo), hex(hi))
        })
        .collect();
    assert!(!windows.is_empty(), "no host bridge window\n{}", out.tail());
    let bar = |when: &str, dev: &str, n: u32| {
        let line = out.line(&format!("REALLOC {when} {dev} bar{n} "));
        (hex(val(line, "start")), hex(val(line, "end")))
    };
    let mut moved = Vec::new();
    for dev in devs {
        for n in [0, 2] {
            let said = out.lines(&format!("REALLOC kernel pci {dev}: BAR {n} "));
            assert!(
                said.iter().any(|l| l.ends_with(": assigned")),
                "Linux assigned {dev} BAR {n}\n{}",
                out.tail()
            );
            let (start, end) = bar("after", dev, n);
            assert!(
                windows.iter().any(|&(lo, hi)| lo <= start && end <= hi),
                "{dev} BAR {n} at {start:#x}-{end:#x}, outside the windows {windows:x?}"
            );
            let (was, was_end) = bar("before", dev, n);
            assert_eq!(end - start, was_end - was, "{dev} BAR {n} keeps its size");
            if n == 2 && start != was {
                moved.push(format!("{dev} {was:#x} -> {start:#x}"));
            }
        }
    }
    eprintln!("realloc: BAR2 moved by Linux: {moved:?}");
    assert_eq!(out.lines("check: ok").len(), devs.len(), "{}", out.tail());
    (windows, moved)
}

/// [`linux_placed_the_bars`] in ivvmm, with its two devices: the DSDT
/// gives exactly the two windows of `layout`, and Linux, assigning the
/// larger BAR2 first, moves at least one of them (else the check would
/// prove nothing).
pub fn assert_linux_placed_the_bars_in_ivvmm(out: &Output) {
    let (windows, moved) = linux_placed_the_bars(out, &["0000:00:01.0", "0000:00:02.0"]);
    assert_eq!(
        windows.len(),
        2,
        "a 32-bit and a 64-bit window: {windows:x?}"
    );
    assert!(!moved.is_empty(), "no BAR2 moved\n{}", out.tail());
}

/// Runs /tests/realloc.sh in the VM `vm` makes (from its `ivvmm.run` and
/// our ACPI kernel's images) with two plain devices: a 4M one the host
/// filled with its pattern first (`hostdev`, where the script runs
/// `check --host`; the host reads the guest's words back afterwards) and a
/// 16M one. The caller judges the BARs ([`linux_placed_the_bars`]).
pub fn run_realloc(hostdev: &str, vm: impl FnOnce(&str, &Images) -> Vm) -> Output {
    let acpi = Image::OursAcpi.images();
    let dir = TempDir::new("realloc");
    let path = dir.path().join("a");
    let f = shm_file(&path, MIB4);
    write_host_pattern(&f);
    let out = vm(&format!("sh /tests/realloc.sh {hostdev}"), &acpi)
        .plain(&path, "4M")
        .plain(&dir.path().join("b"), "16M")
        .run();
    out.line("check: ok host");
    assert_guest_pattern(&f);
    out
}

/// The pat.sh control: reloaded with cache=uc, the same BAR is uncached,
/// so a write-back result is the driver's doing.
pub fn assert_uc_control(out: &Output) {
    let (start, end, cache) = bar2(out, "uc", "ivshmem0");
    assert_eq!(pat_type(out, "uc", start, end), "uncached");
    assert_eq!(cache, "uncached");
}

/// What /tests/pat.sh printed in ivvmm with one 4 MiB plain device:
/// ivvmm puts BAR2 above RAM and 4 GiB and enables the MTRRs with a
/// write-back default, so even a small BAR is mapped write-back, and the
/// `cache=uc` control shows the type is the driver's choice.
pub fn assert_ivvmm_bar2_write_back(out: &Output) {
    out.assert_ok();
    let (start, end, cache) = bar2(out, "wb", "ivshmem0");
    assert!(start >= 1 << 32, "BAR2 is above 4 GiB: {start:#x}");
    assert_eq!(end - start + 1, MIB4);
    assert_eq!(pat_type(out, "wb", start, end), "write-back");
    assert_eq!(cache, "write-back", "the driver reports the real type");
    assert_uc_control(out);
}

/// The commands of a ping and a pong VM that play 100 rounds in each wait
/// mode: irq (wait ioctl), epoll + read on vector 1, poll (no doorbell).
pub const PONG_PHASES: &str = "cat /sys/class/ivshmem/ivshmem0/vectors && ivshm pong && \
     ivshm pong --epoll --vector 1 && ivshm pong --poll";
pub const PING_PHASES: &str = "ivshm info && ivshm ping --count 100 && \
     ivshm ping --epoll --vector 1 --count 100 && ivshm ping --poll --count 100";

/// What the two VMs running [`PING_PHASES`] / [`PONG_PHASES`] printed, on
/// 4 MiB doorbell devices with 2 vectors.
pub fn assert_ping_pong_phases(ping: &Output, pong: &Output) {
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
        assert_eq!(
            val(po, "peer"),
            val(info, "position"),
            "pong paired with ping"
        );
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

/// `ivvmm server` on `sock` (4 MiB, 2 vectors); killed when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_server(sock: &Path) -> Server {
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
                "ivvmm server exited ({st}) before listening on {}: {err}",
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

/// What /tests/presence-none.sh printed for `devs` (ivshmemN names) that
/// have no peer-presence extension: every attribute `unsupported`, `ivshm
/// peers` says so (rc 0), `--watch` refuses (rc 1), `info` still works,
/// and the driver never claimed the extension.
pub fn assert_presence_unsupported(out: &Output, devs: &[&str]) {
    out.assert_ok();
    assert_eq!(out.lines("PRESENCE ").len(), devs.len(), "{}", out.tail());
    for dev in devs {
        let line = out.line(&format!("PRESENCE {dev} "));
        for attr in ["peers", "link", "generation", "own_id", "rejoins", "notify"] {
            assert_eq!(val(line, attr), "unsupported", "{attr}: {line}");
        }
        assert_eq!(val(out.line(&format!("STEP peers-{dev} ")), "rc"), "0");
        assert_eq!(
            val(out.line(&format!("STEP watch-{dev} ")), "rc"),
            "1",
            "nothing to watch"
        );
    }
    let said = out.lines("peers: unsupported");
    assert_eq!(said.len(), 2 * devs.len(), "{}", out.tail());
    for (line, dev) in said.iter().step_by(2).zip(devs) {
        assert_eq!(val(line, "dev"), format!("/dev/{dev}"), "{line}");
    }
    assert!(
        out.lines("peers: ok").is_empty(),
        "no presence without the extension"
    );
    assert_eq!(out.lines("info: ok").len(), devs.len(), "{}", out.tail());
    assert_eq!(
        val(out.line("STEP dmesg-presence"), "n"),
        "0",
        "the driver did not claim the extension"
    );
}
