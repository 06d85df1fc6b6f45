// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest serial output through a bounded buffer and a writer thread, so a
//! sink that does not take bytes (a pipe nobody reads, a stopped terminal, a
//! slow file) never blocks a vCPU, the event loop or a stop.
//!
//! The policy: output slows the guest to the sink's pace. A vCPU that finds
//! the buffer ([`BUFFER`] bytes) full waits for room, up to [`STALL`]; if the
//! sink took nothing in that time it is stalled, and further output is
//! dropped at once (no more waiting) until the sink takes bytes again. One
//! warning per stall says so, and at the end, what was dropped. When the VM
//! stops, what is still buffered gets [`DRAIN`] to go out.

use crate::sandbox::{self, SeccompMode, ThreadKind};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Guest output buffered at most.
pub const BUFFER: usize = 64 << 10;
/// How long a vCPU waits for a full buffer to get room before dropping.
pub const STALL: Duration = Duration::from_millis(20);
/// How long the rest may take to go out when the VM stops.
pub const DRAIN: Duration = Duration::from_millis(50);
/// Bytes handed to one write(2).
const CHUNK: usize = 4096;

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// The writer is in write(2) with this many bytes taken from `buf`.
    writing: usize,
    /// The sink took nothing for STALL with the buffer full: drop, don't wait.
    stalled: bool,
    dropped: u64,
    dropped_total: u64,
    /// The sink failed for good (EPIPE, EIO...): everything is discarded.
    broken: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes are queued or on close.
    data: Condvar,
    /// Signalled when the writer made room or finished a write.
    room: Condvar,
    what: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on `room` while `busy` holds, until `deadline`.
    fn wait_room<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        busy: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while busy(&st) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .room
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }
}

/// The vCPU side: [`Write`] never blocks for longer than [`STALL`].
pub struct SerialOutput {
    shared: Arc<Shared>,
}

impl SerialOutput {
    /// Starts the writer thread for `file`; `what` names it in messages.
    /// The thread confines itself (`seccomp`) in parallel with the rest of
    /// the VM's build; the VM waits for it before the first guest
    /// instruction (sandbox::helpers_confined).
    pub fn spawn(file: File, what: &str, seccomp: SeccompMode) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            data: Condvar::new(),
            room: Condvar::new(),
            what: what.to_string(),
        });
        let writer = shared.clone();
        sandbox::spawn_confined(ThreadKind::SerialOut, seccomp, "serial-out", move || {
            write_loop(&writer, file)
        })?;
        Ok(SerialOutput { shared })
    }

    /// Queues `bytes` (dropping what does not fit, see the module comment).
    fn push(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        if st.broken {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = BUFFER - st.buf.len();
            if room > 0 {
                let n = room.min(rest.len());
                st.buf.extend(&rest[..n]);
                rest = &rest[n..];
                self.shared.data.notify_one();
                continue;
            }
            if !st.stalled {
                st = self.shared.wait_room(st, Instant::now() + STALL, |st| {
                    st.buf.len() == BUFFER && !st.broken
                });
                if st.buf.len() < BUFFER || st.broken {
                    continue;
                }
                st.stalled = true;
                log::warn!(
                    "guest output dropped: {} has taken nothing for {}ms (is anyone reading it? a stopped terminal?); dropping guest output until it takes bytes again",
                    self.shared.what,
                    STALL.as_millis()
                );
            }
            st.dropped += rest.len() as u64;
            st.dropped_total += rest.len() as u64;
            return;
        }
    }

    /// Gives what is buffered up to [`DRAIN`] to go out; says what was lost.
    pub fn finish(&self) {
        let st = self.shared.lock();
        let mut st = self.shared.wait_room(st, Instant::now() + DRAIN, |st| {
            (!st.buf.is_empty() || st.writing > 0) && !st.broken && !st.stalled
        });
        let unwritten = (st.buf.len() + st.writing) as u64;
        if !st.broken && (unwritten > 0 || st.dropped_total > 0) {
            log::warn!(
                "guest output dropped: {} bytes in all that {} did not take",
                st.dropped_total + unwritten,
                self.shared.what
            );
        }
        st.closed = true;
        st.buf.clear();
        self.shared.data.notify_all();
    }
}

impl Drop for SerialOutput {
    fn drop(&mut self) {
        let closed = self.shared.lock().closed;
        if !closed {
            self.finish();
        }
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The writer thread: takes chunks out of the buffer and writes them with
/// the lock released, so only this thread ever blocks on the sink.
fn write_loop(shared: &Shared, mut file: File) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        {
            let mut st = shared.lock();
            st.writing = 0;
            shared.room.notify_all();
            while st.buf.is_empty() && !st.closed {
                st = shared.data.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.closed {
                return;
            }
            let n = st.buf.len().min(CHUNK);
            chunk.clear();
            chunk.extend(st.buf.drain(..n));
            st.writing = n;
        }
        let result = file.write_all(&chunk);
        let mut st = shared.lock();
        if st.stalled {
            st.stalled = false;
            log::warn!(
                "{} takes bytes again; {} bytes of guest output were dropped meanwhile",
                shared.what,
                st.dropped
            );
            st.dropped = 0;
        }
        if let Err(e) = result {
            // A reader that went away (EPIPE) must not stop the guest: its
            // output goes nowhere from now on.
            log::debug!("serial output to {} failed: {e}", shared.what);
            st.broken = true;
            st.buf.clear();
            shared.room.notify_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn bytes_go_out_in_order() {
        let (mut r, w) = pipe();
        let mut out = SerialOutput::spawn(w, "a pipe", SeccompMode::Off).unwrap();
        for i in 0..100u8 {
            out.write_all(&[i]).unwrap();
        }
        out.finish();
        let mut got = vec![0u8; 100];
        r.read_exact(&mut got).unwrap();
        assert_eq!(got, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn a_sink_nobody_reads_costs_one_stall_then_drops() {
        let (_r, w) = pipe();
        let mut out = SerialOutput::spawn(w, "a pipe", SeccompMode::Off).unwrap();
        // The pipe (64K) and the buffer fill; then one STALL, then nothing.
        let big = vec![b'x'; 256 << 10];
        let start = Instant::now();
        out.write_all(&big).unwrap();
        let first = start.elapsed();
        assert!(first >= STALL, "{first:?}");
        let start = Instant::now();
        for _ in 0..1000 {
            out.write_all(b"more").unwrap();
        }
        assert!(start.elapsed() < STALL, "no more waiting once stalled");
        assert!(out.shared.lock().dropped > 0);
        let start = Instant::now();
        out.finish();
        assert!(start.elapsed() <= DRAIN + Duration::from_millis(20));
    }

    #[test]
    fn a_closed_reader_drops_quietly() {
        let (r, w) = pipe();
        drop(r);
        let mut out = SerialOutput::spawn(w, "a pipe", SeccompMode::Off).unwrap();
        out.write_all(b"hello").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.shared.lock().broken {
            assert!(Instant::now() < deadline, "EPIPE noticed");
            std::thread::sleep(Duration::from_millis(1));
        }
        out.write_all(&vec![0u8; 1 << 20]).unwrap();
        assert!(out.shared.lock().buf.is_empty());
    }
}
