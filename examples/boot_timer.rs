// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Times one VM run for `scripts/bench boot`: process start → the first
//! stdout line containing a pattern, and → process exit, plus the peak RSS
//! the kernel recorded for the process (wait4's ru_maxrss).
//!
//!     boot_timer --pattern "Hello from testguest" -- ivvmm --kernel ...
//!
//! prints one line:
//!
//!     boot first_line_us=N exit_us=N status=S maxrss_kib=N
//!
//! With `--guest-mem BYTES` the process is stopped (SIGSTOP) when the line
//! appears, the resident size of its guest-memory mappings (those between
//! BYTES and BYTES + 4 MiB long, from /proc/PID/smaps) is summed, and it is
//! continued: `guest_rss_kib=N` is added. Stopping it disturbs the timing, so
//! use that flag on a separate run.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Time a VM from start to its first matching output line and to its exit, with peak RSS"
)]
struct Args {
    /// The text the first timed line contains.
    #[arg(long)]
    pattern: String,
    /// Guest memory size in bytes: report the RSS of the guest-memory mappings.
    #[arg(long)]
    guest_mem: Option<u64>,
    /// Kill the process if it has not exited after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum TimerError {
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("wait4 failed: {0}")]
    Wait(std::io::Error),
    #[error("the process printed no line containing {0:?}")]
    NoLine(String),
}

/// Sums the Rss of every mapping whose size is guest-memory sized.
fn guest_rss_kib(pid: u32, guest_mem: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (lo, hi) = (guest_mem / 1024, (guest_mem + (4 << 20)) / 1024);
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(kib)) => {
                let kib: u64 = kib.parse().ok()?;
                in_guest = (lo..=hi).contains(&kib);
            }
            (Some("Rss:"), Some(kib)) if in_guest => total += kib.parse::<u64>().ok()?,
            _ => {}
        }
    }
    Some(total)
}

/// Reads the child's stdout to the end; sends the time of the first line
/// holding `pattern` (and the guest RSS then, when asked).
fn watch_output(
    mut out: impl Read,
    pattern: String,
    t0: Instant,
    pid: u32,
    guest_mem: Option<u64>,
    found: mpsc::Sender<(Duration, Option<u64>)>,
) {
    let mut seen = Vec::new();
    let mut matched = false;
    let mut buf = [0u8; 4096];
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        if matched {
            continue;
        }
        let at = t0.elapsed();
        seen.extend_from_slice(&buf[..n]);
        if !String::from_utf8_lossy(&seen).contains(&pattern) {
            continue;
        }
        matched = true;
        let rss = guest_mem.and_then(|mem| {
            // SAFETY: plain signals to our own child, which is alive (its
            // stdout is still open) or a zombie we have not reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            let rss = guest_rss_kib(pid, mem);
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
            rss
        });
        let _ = found.send((at, rss));
    }
}

fn run(args: Args) -> Result<(), TimerError> {
    let t0 = Instant::now();
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| TimerError::Spawn(args.command[0].clone(), e))?;
    let pid = child.id();
    let out = child.stdout.take();
    let (tx, rx) = mpsc::channel();
    let pattern = args.pattern.clone();
    let guest_mem = args.guest_mem;
    let reader = std::thread::spawn(move || {
        if let Some(out) = out {
            watch_output(out, pattern, t0, pid, guest_mem, tx);
        }
    });
    let timeout = args.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(timeout));
        // SAFETY: kills our child if still running; once reaped the pid could
        // be reused, but this program exits right after reaping it.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });

    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ret = loop {
        // SAFETY: waits for our own child; status and usage are valid pointers.
        let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break r;
        }
    };
    let exit = t0.elapsed();
    if ret < 0 {
        return Err(TimerError::Wait(std::io::Error::last_os_error()));
    }
    let _ = reader.join();
    let (first, rss) = rx
        .try_recv()
        .map_err(|_| TimerError::NoLine(args.pattern))?;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let mut line = format!(
        "boot first_line_us={} exit_us={} status={code} maxrss_kib={}",
        first.as_micros(),
        exit.as_micros(),
        usage.ru_maxrss
    );
    if let Some(kib) = rss {
        line.push_str(&format!(" guest_rss_kib={kib}"));
    }
    println!("{line}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot_timer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
