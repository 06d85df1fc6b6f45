// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Helpers for booting the ivvmm Linux guest under `qemu-system-x86_64
//! -accel tcg` or under ivvmm itself (on hardware KVM): where the kernel
//! and initramfs are, building the command line, running it with a time
//! limit, and reading the serial output. `checks` holds the assertions the
//! QEMU and ivvmm tests share.
//!
//! The guest is found by asking the build scripts (`guest/kernel/build.sh
//! --print-path`, `guest/initramfs/build.sh --print-path`), which print the
//! cached image for the current sources or fail; `IVVMM_KERNEL` and
//! `IVVMM_INITRAMFS` override them.

#![allow(dead_code)] // not every test file uses every helper

pub mod boot;
pub mod checks;
pub mod nested;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a single VM may run; TCG boots this guest in about a second.
pub const VM_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Images {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn print_path(script: &str) -> PathBuf {
    let out = Command::new(repo().join(script))
        .arg("--print-path")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        panic!(
            "the Linux guest is not built: run scripts/setup (or guest/kernel/build.sh \
             && guest/initramfs/build.sh)\n{script} said: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    PathBuf::from(path)
}

fn from_env_or(var: &str, script: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => print_path(script),
    };
    assert!(
        path.is_file(),
        "{} does not exist: run scripts/setup",
        path.display()
    );
    path
}

/// The kernel and initramfs; panics with what to run when they are missing.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| Images {
        kernel: from_env_or("IVVMM_KERNEL", "guest/kernel/build.sh"),
        initramfs: from_env_or("IVVMM_INITRAMFS", "guest/initramfs/build.sh"),
    })
}

/// Panics (naming the fix) unless qemu-system-x86_64 runs.
fn require_qemu() {
    static OK: OnceLock<()> = OnceLock::new();
    OK.get_or_init(|| {
        let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
        assert!(
            qemu.is_ok_and(|o| o.status.success()),
            "qemu-system-x86_64 is missing: install qemu-system-x86 (scripts/setup)"
        );
    });
}

use crate::common::skipped;

/// Whether a test that boots Linux in ivvmm must skip: on PVM (no
/// VMX/SVM, `/sys/module/kvm_pvm`) no Linux boots, so it prints
/// `SKIPPED (PVM: no hardware virtualization)` and returns true. Without a
/// usable /dev/kvm it fails, unless IVVMM_SKIP_KVM_TESTS is set (then it
/// skips, saying so).
pub fn skip_linux_in_ivvmm() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        skipped("PVM: no hardware virtualization");
        return true;
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    match kvm {
        Ok(_) => false,
        Err(e) if std::env::var_os("IVVMM_SKIP_KVM_TESTS").is_some() => {
            skipped(&format!("/dev/kvm is not usable: {e}"));
            true
        }
        Err(e) => panic!(
            "this test boots Linux in ivvmm and /dev/kvm is not usable ({e}); \
             run on a KVM host, or set IVVMM_SKIP_KVM_TESTS=1 to skip VM tests"
        ),
    }
}

/// The host's TSC frequency in kHz, measured once against the monotonic
/// clock. Under TCG the guest's TSC is the host's, and the guest kernel
/// (no ACPI, so no HPET or PM timer) can only calibrate it against the PIT,
/// which fails when the host is busy (two VMs on two cores): the kernel then
/// falls back to a jiffies clock and every latency reads 0 or 4 ms. Telling
/// it the frequency (`tsc_early_khz`, `tsc=reliable`) avoids that.
fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let rdtsc = || {
            // SAFETY: rdtsc reads a counter; it has no memory effects.
            unsafe { core::arch::x86_64::_rdtsc() }
        };
        let (t0, c0) = (Instant::now(), rdtsc());
        std::thread::sleep(Duration::from_millis(200));
        let (c1, dt) = (rdtsc(), t0.elapsed());
        let khz = (c1.wrapping_sub(c0) as f64 / dt.as_secs_f64() / 1000.0) as u64;
        assert!(
            (100_000..20_000_000).contains(&khz),
            "implausible host TSC frequency {khz} kHz"
        );
        khz
    })
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ivvmm-tcg-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which VMM runs the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    /// qemu-system-x86_64 -accel tcg, QEMU's ivshmem devices.
    QemuTcg,
    /// ivvmm on /dev/kvm, its own ivshmem devices.
    Ivvmm,
}

/// A QEMU or ivvmm command line for the guest.
pub struct Vm {
    name: String,
    vmm: Vmm,
    args: Vec<OsString>,
    cmdline: String,
    devices: usize,
}

impl Vm {
    /// The guest under QEMU TCG. `run` becomes `ivvmm.run="run"` (so it
    /// must not contain `"`).
    pub fn new(name: &str, run: &str) -> Self {
        Self::new_with(name, run, images())
    }

    /// [`Vm::new`] with another kernel and initramfs.
    pub fn new_with(name: &str, run: &str, img: &Images) -> Self {
        assert!(!run.contains('"'), "ivvmm.run cannot contain double quotes");
        require_qemu();
        let args = [
            "-accel",
            "tcg",
            "-M",
            "pc",
            "-cpu",
            "max",
            "-m",
            "256M",
            "-nographic",
            "-no-reboot",
        ]
        .iter()
        .map(OsString::from)
        .chain([
            "-kernel".into(),
            img.kernel.clone().into(),
            "-initrd".into(),
            img.initramfs.clone().into(),
        ])
        .collect();
        Vm {
            name: name.to_string(),
            vmm: Vmm::QemuTcg,
            args,
            cmdline: format!(
                "console=ttyS0 panic=-1 quiet tsc_early_khz={} tsc=reliable ivvmm.run=\"{run}\"",
                host_tsc_khz()
            ),
            devices: 0,
        }
    }

    /// The guest under ivvmm (hardware KVM only: see
    /// [`skip_linux_in_ivvmm`]). ivvmm's default command line already has
    /// `console=ttyS0 reboot=k panic=1 pci=conf1`; `reboot -f`
    /// at the end makes ivvmm exit with status 0.
    pub fn ivvmm(name: &str, run: &str) -> Self {
        Self::ivvmm_with(name, run, images())
    }

    /// [`Vm::ivvmm`] with another kernel and initramfs.
    pub fn ivvmm_with(name: &str, run: &str, img: &Images) -> Self {
        assert!(!run.contains('"'), "ivvmm.run cannot contain double quotes");
        let args = vec![
            "--kernel".into(),
            img.kernel.clone().into(),
            "--initrd".into(),
            img.initramfs.clone().into(),
            "--mem".into(),
            "256M".into(),
        ];
        Vm {
            name: name.to_string(),
            vmm: Vmm::Ivvmm,
            args,
            cmdline: format!("panic=-1 quiet ivvmm.run=\"{run}\""),
            devices: 0,
        }
    }

    fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// An `ivshmem-plain` device backed by the file at `path` (created by
    /// the VMM if missing), shared with the host.
    pub fn plain(mut self, path: &Path, size: &str) -> Self {
        self.devices += 1;
        if self.vmm == Vmm::Ivvmm {
            let spec = format!("path={},size={size}", utf8(path));
            return self.arg("--ivshmem").arg(spec);
        }
        let id = format!("hostmem{}", self.devices);
        let mut obj = OsString::from(format!(
            "memory-backend-file,id={id},size={size},share=on,mem-path="
        ));
        obj.push(path);
        self.arg("-object")
            .arg(obj)
            .arg("-device")
            .arg(format!("ivshmem-plain,memdev={id}"))
    }

    /// An `ivshmem-doorbell` device on the server at `socket`.
    pub fn doorbell(mut self, socket: &Path, vectors: u32) -> Self {
        self.devices += 1;
        if self.vmm == Vmm::Ivvmm {
            let spec = format!("server={},vectors={vectors}", utf8(socket));
            return self.arg("--ivshmem").arg(spec);
        }
        let id = format!("ivsh{}", self.devices);
        let mut chardev = OsString::from(format!("socket,id={id},path="));
        chardev.push(socket);
        self.arg("-chardev")
            .arg(chardev)
            .arg("-device")
            .arg(format!("ivshmem-doorbell,chardev={id},vectors={vectors}"))
    }

    /// `--cpus n` (ivvmm) or `-smp n` (QEMU).
    pub fn cpus(self, n: u32) -> Self {
        match self.vmm {
            Vmm::Ivvmm => self.arg("--cpus").arg(n.to_string()),
            Vmm::QemuTcg => self.arg("-smp").arg(n.to_string()),
        }
    }

    /// Extra kernel command line words.
    pub fn cmdline(mut self, extra: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(extra);
        self
    }

    pub fn spawn(self) -> Running {
        let (program, cmdline_flag) = match self.vmm {
            Vmm::QemuTcg => ("qemu-system-x86_64", "-append"),
            Vmm::Ivvmm => (env!("CARGO_BIN_EXE_ivvmm"), "--cmdline"),
        };
        let mut child = Command::new(program)
            .args(&self.args)
            .arg(cmdline_flag)
            .arg(&self.cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            collect(
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                &output,
            ),
            collect(
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                &output,
            ),
        ];
        Running {
            name: self.name,
            child,
            output,
            readers,
            started: Instant::now(),
        }
    }

    /// Boot, run, and wait for the VM to end.
    pub fn run(self) -> Output {
        self.spawn().finish()
    }
}

/// A path as the UTF-8 an ivvmm `--ivshmem` spec needs (ours always are).
fn utf8(path: &Path) -> &str {
    let s = path.to_str().expect("a UTF-8 path");
    assert!(
        !s.contains(','),
        "{s}: a comma would split the --ivshmem spec"
    );
    s
}

fn collect(src: Option<Box<dyn Read + Send>>, out: &Arc<Mutex<Vec<u8>>>) -> Option<JoinHandle<()>> {
    let mut src = src?;
    let out = Arc::clone(out);
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    }))
}

pub struct Running {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: [Option<JoinHandle<()>>; 2],
    started: Instant,
}

/// A VM never outlives its test, even one that panicked.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Whether the VMM process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the VM to end (killing it after [`VM_TIMEOUT`]).
    pub fn finish(mut self) -> Output {
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for the VMM") {
                break Some(st);
            }
            if self.started.elapsed() > VM_TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.iter_mut().filter_map(Option::take) {
            let _ = r.join();
        }
        let raw = self
            .output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = String::from_utf8_lossy(&raw).replace('\r', "");
        let out = Output {
            name: self.name.clone(),
            text,
            secs: self.started.elapsed().as_secs_f64(),
        };
        match status {
            None => panic!(
                "{}: still running after {VM_TIMEOUT:?}, killed\n{}",
                out.name,
                out.tail()
            ),
            Some(st) if !st.success() => {
                panic!("{}: the VMM failed ({st})\n{}", out.name, out.tail())
            }
            Some(_) => out,
        }
    }
}

/// What a VM printed on its serial console.
pub struct Output {
    pub name: String,
    pub text: String,
    pub secs: f64,
}

impl Output {
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The exit status of `ivvmm.run`, from /init's `IVVMM-RESULT: rc=N`.
    pub fn result_rc(&self) -> i32 {
        self.text
            .lines()
            .rev()
            .find_map(|l| l.split("IVVMM-RESULT: rc=").nth(1))
            .and_then(|rc| rc.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no IVVMM-RESULT line\n{}", self.name, self.tail()))
    }

    /// Panics (with the console output) unless the command succeeded.
    pub fn assert_ok(&self) -> &Self {
        let rc = self.result_rc();
        assert_eq!(
            rc,
            0,
            "{}: guest command failed (rc={rc})\n{}",
            self.name,
            self.tail()
        );
        self
    }

    /// Every line that starts with `prefix` (after any console noise).
    pub fn lines(&self, prefix: &str) -> Vec<&str> {
        self.text
            .lines()
            .filter_map(|l| l.find(prefix).map(|i| &l[i..]))
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// The one line that starts with `prefix`.
    pub fn line(&self, prefix: &str) -> &str {
        match self.lines(prefix).as_slice() {
            [one] => one,
            many => panic!(
                "{}: expected one line starting with {prefix:?}, found {}\n{}",
                self.name,
                many.len(),
                self.tail()
            ),
        }
    }
}

/// The value of `key=` in a line of `key=value` words.
pub fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Like [`kv`] but panics with the line when the key is missing.
pub fn val<'a>(line: &'a str, key: &str) -> &'a str {
    kv(line, key).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}
