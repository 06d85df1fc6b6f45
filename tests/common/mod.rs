// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared helpers for integration tests: find the binaries and guests, run
//! VMs with a deadline, and insist loudly on /dev/kvm.

#![allow(dead_code)]

pub mod skip;
#[allow(unused_imports)] // each test binary uses its own subset
pub use skip::{missing, noted, skipped};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn ivvmm() -> &'static str {
    env!("CARGO_BIN_EXE_ivvmm")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test guest as a bzImage (the Linux boot path) or a PVH ELF.
pub fn testguest(pvh: bool) -> PathBuf {
    testguest_file(if pvh {
        "testguest.pvh.elf"
    } else {
        "testguest.bzImage"
    })
}

/// One of the test guest's builds by file name (see its Makefile).
pub fn testguest_file(name: &str) -> PathBuf {
    let path = repo().join("guest/testguest/build").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (or make -C guest/testguest)",
        path.display()
    );
    path
}

/// Fails the test unless /dev/kvm can be opened. Set IVVMM_SKIP_KVM_TESTS=1
/// to skip (loudly) on a machine without KVM.
pub fn require_kvm() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) if std::env::var_os("IVVMM_SKIP_KVM_TESTS").is_some() => {
            skipped(&format!(
                "this test boots a VM and /dev/kvm is not usable: {e}"
            ));
            false
        }
        Err(e) => panic!(
            "this test boots a VM and /dev/kvm is not usable ({e}); \
             run on a KVM host, or set IVVMM_SKIP_KVM_TESTS=1 to skip VM tests"
        ),
    }
}

/// True when KVM is the PVM software implementation (no VMX/SVM): Linux
/// can't boot there.
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// What a finished process left.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// The value of `key=` on the first stdout line that starts with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        let line = self.stdout.lines().find(|l| l.starts_with(prefix))?;
        field_of(line, key)
    }

    pub fn passed(&self) -> bool {
        self.stdout.lines().any(|l| l.trim_end() == "PASS") && self.code() == 0
    }
}

/// `key=value` out of a space-separated line.
pub fn field_of(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Waits for `child` (stdout and stderr piped) up to `timeout`; kills it
/// if it runs over.
pub fn wait_with_deadline(child: Child, timeout: Duration) -> Outcome {
    Running::from_child(child).finish(timeout)
}

/// Runs ivvmm to completion within `timeout`.
pub fn run_ivvmm(args: &[&str], timeout: Duration) -> Outcome {
    Running::ivvmm(args).finish(timeout)
}

/// Boots the test guest (bzImage) with `test` on its command line.
pub fn boot_test(test: &str, extra: &[&str]) -> Outcome {
    let kernel = testguest(false);
    let kernel = kernel.to_str().expect("utf-8 path");
    let cmdline = format!("test={test}");
    let mut args = vec!["--kernel", kernel, "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    run_ivvmm(&args, Duration::from_secs(60))
}

/// A name unique to this test process, for shm objects and sockets.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes /dev/shm/NAME when dropped.
pub struct ShmGuard(pub String);

impl ShmGuard {
    pub fn new(prefix: &str) -> Self {
        ShmGuard(unique(prefix))
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/dev/shm").join(&self.0)
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

/// The u64 the host writes at `off` before boot (`test=ivshmem-data` etc.).
pub fn host_pattern(off: u64) -> u64 {
    0x1111_2222_3333_4444 ^ off
}

/// The u64 the guest writes at `off` (four times, with 8/16/32/64-bit stores).
pub fn guest_pattern(off: u64) -> u64 {
    0x5555_6666_7777_8888 ^ off
}

/// Creates `path` with `size` bytes and the host patterns at 0, 4096, size-8.
pub fn write_host_patterns(path: &Path, size: u64) {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    for off in [0, 4096, size - 8] {
        write_u64_at(&f, off, host_pattern(off));
    }
}

pub fn write_u64_at(f: &std::fs::File, off: u64, value: u64) {
    use std::os::unix::fs::FileExt;
    f.write_all_at(&value.to_le_bytes(), off).unwrap();
}

pub fn read_u64_at(path: &Path, off: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_le_bytes(b)
}

/// Checks what `test=ivshmem-data` wrote: four copies of the guest pattern
/// at 64, 4096+64 and size-64.
pub fn check_guest_patterns(path: &Path, size: u64) {
    for off in [64, 4096 + 64, size - 64] {
        for k in 0..4 {
            let got = read_u64_at(path, off + 8 * k);
            assert_eq!(
                got,
                guest_pattern(off),
                "{}: guest pattern at {off:#x}+{} (store width {})",
                path.display(),
                8 * k,
                [8, 16, 32, 64][k as usize]
            );
        }
    }
}

/// Every line of stdout that starts with `prefix`.
pub fn lines_with<'a>(out: &'a Outcome, prefix: &str) -> Vec<&'a str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// Lines of the form `check NAME bad ...`.
pub fn bad_checks(out: &Outcome) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("check ") && l.split_whitespace().nth(2) == Some("bad"))
        .collect()
}

/// A process whose output is collected in the background, so a test can
/// wait for a line while it keeps running.
pub struct Running {
    pub child: Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    err: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    start: Instant,
}

fn collect<R: Read + Send + 'static>(
    mut r: R,
    into: std::sync::Arc<std::sync::Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Running {
    pub fn spawn(program: &str, args: &[&str]) -> Running {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Running::from_child(child)
    }

    /// Takes over a child whose stdout and stderr are piped.
    pub fn from_child(mut child: Child) -> Running {
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone()),
            collect(child.stderr.take().unwrap(), err.clone()),
        ];
        Running {
            child,
            out,
            err,
            readers,
            start: Instant::now(),
        }
    }

    pub fn ivvmm(args: &[&str]) -> Running {
        Running::spawn(ivvmm(), args)
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits until stdout or stderr contains `needle`; panics after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "exited ({status}) before printing '{needle}'\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "no '{needle}' within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. libc::SIGTERM).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit (killing it after `timeout`) and returns everything.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let s = self.child.wait().unwrap();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "ran over {timeout:?} and was killed ({s})\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Outcome {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: self.start.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ivvmm server` on a private socket; stopped (SIGTERM) when dropped.
pub struct Server {
    pub socket: PathBuf,
    pub proc: Option<Running>,
}

impl Server {
    /// Starts a server with `args` (e.g. ["-l", "4M", "-n", "2"]).
    pub fn start(args: &[&str]) -> Server {
        let socket = std::env::temp_dir().join(unique("ivvmm-test.sock"));
        let s = socket.to_str().unwrap().to_string();
        let mut all = vec!["server", "-S", s.as_str()];
        all.extend_from_slice(args);
        let proc = Running::ivvmm(&all);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "server socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            socket,
            proc: Some(proc),
        }
    }

    pub fn path(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// Stops the server (SIGTERM) and returns its output.
    pub fn stop(mut self) -> Outcome {
        let p = self.proc.take().unwrap();
        p.signal(libc::SIGTERM);
        p.finish(Duration::from_secs(10))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            let _ = p.finish(Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts the test guest (bzImage) under ivvmm with `test` and `extra` flags.
/// The test guest's `test=hello` against the server at `socket`, then
/// `extra`: the command line of the tests that judge only what ivvmm says
/// about a server (hostile, broken or fake ones).
pub fn hello_against_server(socket: &Path, extra: &[&str]) -> Vec<String> {
    let kernel = testguest(false);
    let mut args: Vec<String> = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=hello",
        "--server",
        socket.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn start_guest(test: &str, extra: &[&str]) -> Running {
    let kernel = testguest(false);
    let cmdline = format!("test={test}");
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--cmdline", &cmdline];
    args.extend_from_slice(extra);
    Running::ivvmm(&args)
}

/// The `key=value` counters of the `ivvmm stats: <section>` line on stderr.
pub fn stats(out: &Outcome, section: &str) -> std::collections::BTreeMap<String, u64> {
    let prefix = format!("ivvmm stats: {section} ");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in {out:?}"));
    line[prefix.len()..]
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Runs `script` with `sh -c` in a private mount namespace (so it may mount
/// over /dev or a directory without touching the host), collecting output.
pub fn run_in_private_mounts(script: &str, timeout: Duration) -> Outcome {
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    wait_with_deadline(child, timeout)
}

/// 64-bit FNV-1a, as the test guest's `initrd` case computes it.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
