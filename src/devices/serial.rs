// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! COM1: a vm-superio 16550 at 0x3f8, IRQ 4 through irqfd, stdin as an event source.
//!
//! Output goes to the chosen sink (stdout, a file, or nowhere) through a
//! bounded buffer and a writer thread: a sink that takes nothing slows the
//! guest briefly, then its output is dropped (see [`SerialOutput`]); it never
//! blocks a vCPU, the event loop or a stop.
//! Input is read from stdin only as fast as the guest drains the UART's
//! FIFO: when the FIFO is full, stdin is dropped from the event loop until
//! the guest empties it, so a paste is delayed rather than lost.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::serial_output::SerialOutput;
use crate::bus::BusDevice;
use crate::sandbox::SeccompMode;
use crate::stop::{StopReason, VmStop};

/// COM1's port and its ISA interrupt.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Ctrl-A, the escape prefix (as in QEMU's -nographic): Ctrl-A x quits,
/// Ctrl-A Ctrl-A sends one Ctrl-A to the guest.
const ESCAPE: u8 = 0x01;

/// Raises the UART's interrupt by writing its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the UART reports back: the guest drained the input FIFO (wakes the
/// stdin reader), and how many bytes the guest has written.
pub struct UartEvents {
    drained: EventFd,
    bytes_out: AtomicU64,
}

impl UartEvents {
    pub fn new(drained: EventFd) -> Self {
        UartEvents {
            drained,
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Bytes the guest has sent through COM1 so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {
        self.bytes_out.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A full counter still signals; nothing to do on error.
        let _ = self.drained.write(1);
    }
}

/// Where guest output goes.
pub enum SerialSink {
    Stdout,
    Null,
    File(File),
}

/// Guest output: through a bounded buffer and a writer thread (see
/// [`SerialOutput`]), or nowhere.
struct Sink(Option<SerialOutput>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(out) => out.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Uart = Serial<IrqTrigger, Arc<UartEvents>, Sink>;

/// The UART as the PIO bus sees it.
pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// `irq` is the eventfd registered as irqfd on [`COM1_IRQ`].
    pub fn new(
        irq: EventFd,
        events: Arc<UartEvents>,
        sink: SerialSink,
        seccomp: SeccompMode,
    ) -> io::Result<Self> {
        let out = match sink {
            SerialSink::Null => None,
            SerialSink::File(f) => Some(SerialOutput::spawn(f, "the --serial file", seccomp)?),
            SerialSink::Stdout => {
                // Our own (close-on-exec) duplicate of stdout.
                let file = File::from(io::stdout().as_fd().try_clone_to_owned()?);
                Some(SerialOutput::spawn(file, "stdout", seccomp)?)
            }
        };
        Ok(SerialDevice {
            uart: Serial::with_events(IrqTrigger(irq), events, Sink(out)),
        })
    }

    /// Queues input for the guest; returns how many bytes fit.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

/// Feeds stdin into the UART from the event loop.
pub struct SerialInput {
    device: Arc<Mutex<SerialDevice>>,
    stdin: File,
    drained: EventFd,
    stop: Arc<VmStop>,
    /// Whether stdin is in the epoll set right now.
    watching: bool,
    eof: bool,
    escape_pending: bool,
    /// Bytes read but not yet accepted by a full FIFO.
    pending: Vec<u8>,
}

impl SerialInput {
    pub fn new(
        device: Arc<Mutex<SerialDevice>>,
        drained: EventFd,
        stop: Arc<VmStop>,
    ) -> io::Result<Self> {
        Ok(SerialInput {
            device,
            // Our own (close-on-exec) duplicate of stdin.
            stdin: File::from(io::stdin().as_fd().try_clone_to_owned()?),
            drained,
            stop,
            watching: false,
            eof: false,
            escape_pending: false,
            pending: Vec::new(),
        })
    }

    /// Applies the Ctrl-A escape, returning the bytes meant for the guest.
    fn filter_escape(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.escape_pending {
                self.escape_pending = false;
                match b {
                    b'x' | b'X' => self.stop.request(StopReason::UserQuit),
                    ESCAPE => out.push(ESCAPE),
                    _ => {}
                }
            } else if b == ESCAPE {
                self.escape_pending = true;
            } else {
                out.push(b);
            }
        }
        out
    }

    /// Moves pending bytes into the FIFO; true when all of them fit.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let taken = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue(&self.pending);
        self.pending.drain(..taken);
        self.pending.is_empty()
    }

    fn set_watching(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching || (on && self.eof) {
            return;
        }
        let ev = Events::new(&self.stdin, EventSet::IN);
        let res = if on { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.watching = on,
            Err(e) => {
                // stdin that epoll can't watch (a regular file, /dev/null): no input.
                log::debug!("stdin not watchable: {e:?}");
                self.eof = true;
                self.watching = false;
            }
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match self.stdin.read(&mut buf) {
            Ok(0) => {
                self.set_watching(ops, false);
                self.eof = true;
            }
            Ok(n) => {
                let bytes = self.filter_escape(&buf[..n]);
                self.pending.extend_from_slice(&bytes);
                if !self.flush_pending() {
                    // FIFO full: wait for the guest to drain it.
                    self.set_watching(ops, false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("reading stdin failed ({e}); guest input stops");
                self.set_watching(ops, false);
                self.eof = true;
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial input disabled: {e:?}");
            return;
        }
        self.set_watching(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if self.flush_pending() {
                self.set_watching(ops, true);
            }
            return;
        }
        if events
            .event_set()
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.read_stdin(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (SerialDevice, EventFd, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            Arc::new(UartEvents::new(drained.try_clone().unwrap())),
            SerialSink::Null,
            SeccompMode::Off,
        )
        .unwrap();
        (dev, irq, drained)
    }

    #[test]
    fn input_raises_the_interrupt_once_enabled_and_reads_back() {
        let (mut dev, irq, drained) = device();
        dev.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(dev.enqueue(b"hi"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'h');
        dev.read(0, &mut b);
        assert_eq!(b[0], b'i');
        assert!(drained.read().is_ok(), "drained FIFO is signalled");
    }

    #[test]
    fn a_full_fifo_takes_nothing_more() {
        let (mut dev, _irq, _d) = device();
        let cap = dev.fifo_capacity();
        assert_eq!(dev.enqueue(&vec![b'a'; cap + 10]), cap);
        assert_eq!(dev.enqueue(b"b"), 0);
    }

    #[test]
    fn wide_reads_fill_every_byte() {
        let (mut dev, _irq, _d) = device();
        let mut data = [0xaau8; 4];
        dev.read(5, &mut data); // LSR
        assert_eq!(&data[1..], &[0, 0, 0]);
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_is_a_literal() {
        let (dev, _irq, drained) = device();
        let stop = Arc::new(VmStop::new().unwrap());
        let mut input = SerialInput::new(Arc::new(Mutex::new(dev)), drained, stop.clone()).unwrap();
        assert_eq!(input.filter_escape(b"a\x01\x01b"), b"a\x01b");
        assert!(!stop.is_stopping());
        assert_eq!(input.filter_escape(b"c\x01"), b"c");
        assert_eq!(input.filter_escape(b"x"), b"");
        assert_eq!(stop.reason(), Some(StopReason::UserQuit));
    }
}
