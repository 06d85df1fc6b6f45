// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Event-loop plumbing: signals, the stop event, and per-subscriber wakeup
//! counters (the proof that doorbells never wake the VMM).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::timerfd::TimerFd;

use super::VmmError;
use crate::devices::serial::UartEvents;
use crate::stop::{signals_as_events, StopReason, VmStop};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The event loop being assembled: every subscriber is counted under a
/// name, so `--stats` can show who woke the loop (and that doorbells don't).
pub struct EventLoop {
    pub manager: EventManager<Subscriber>,
    pub counters: Arc<LoopCounters>,
}

impl EventLoop {
    pub fn new() -> Result<Self, VmmError> {
        let manager = EventManager::new().map_err(|e| VmmError::Io {
            what: "the event loop",
            err: std::io::Error::other(format!("{e:?}")),
        })?;
        Ok(EventLoop {
            manager,
            counters: Arc::new(LoopCounters::default()),
        })
    }

    pub fn add(&mut self, name: impl Into<String>, subscriber: Subscriber) {
        let counted = Counted::wrap(name, subscriber, self.counters.clone());
        self.manager.add_subscriber(counted);
    }
}

/// How often each event-loop subscriber woke the loop.
#[derive(Default)]
pub struct LoopCounters {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl LoopCounters {
    pub fn bump(&self, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(name.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Wraps a subscriber so each of its events is counted under `name`.
pub struct Counted {
    name: String,
    inner: Arc<Mutex<dyn MutEventSubscriber + Send>>,
    counters: Arc<LoopCounters>,
}

impl Counted {
    pub fn wrap(
        name: impl Into<String>,
        inner: Arc<Mutex<dyn MutEventSubscriber + Send>>,
        counters: Arc<LoopCounters>,
    ) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        let name = name.into();
        counters
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default();
        Arc::new(Mutex::new(Counted {
            name,
            inner,
            counters,
        }))
    }
}

impl MutEventSubscriber for Counted {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.counters.bump(&self.name);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .process(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .init(ops);
    }
}

/// Wakes the loop when a stop is requested (from a vCPU or a device).
pub struct StopWatcher {
    stop: Arc<VmStop>,
}

impl StopWatcher {
    pub fn new(stop: Arc<VmStop>) -> Self {
        StopWatcher { stop }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.stop.event.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.stop.event, EventSet::IN)) {
            log::error!("can't watch the stop event: {e:?}");
        }
    }
}

/// SIGINT/SIGTERM → orderly stop; SIGUSR1 → print statistics.
///
/// The signals are blocked in every thread and read from a signalfd by the
/// event loop: the mask is set here, on the main thread, before the vCPU
/// threads it starts inherit it; the threads started during the build
/// (vCPU 0's, the helpers) block them themselves (stop::spawn_without_signals).
pub struct SignalHandler {
    fd: SignalFd,
    stop: Arc<VmStop>,
    stats: Arc<AtomicBool>,
}

impl SignalHandler {
    pub fn new(stop: Arc<VmStop>) -> std::io::Result<Self> {
        let fd = signals_as_events(&[Signal::SIGUSR1]).map_err(std::io::Error::from)?;
        Ok(SignalHandler {
            fd,
            stop,
            stats: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set when SIGUSR1 arrived; the run loop prints and clears it.
    pub fn stats_requested(&self) -> Arc<AtomicBool> {
        self.stats.clone()
    }
}

impl MutEventSubscriber for SignalHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGUSR1 {
                self.stats.store(true, Ordering::SeqCst);
            } else {
                self.stop.request(StopReason::Signal(signo));
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("can't watch signals: {e:?}");
        }
    }
}

/// How long a silent guest on PVM runs before the hint.
pub const PVM_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// On PVM, one warning if the guest has printed nothing after
/// [`PVM_HINT_AFTER`]: a real Linux kernel there crawls (its kernel code is
/// emulated) or stops at an instruction PVM lacks, silently; the user should
/// know why instead of staring at an empty terminal.
pub struct PvmHint {
    timer: TimerFd,
    uart: Arc<UartEvents>,
}

impl PvmHint {
    pub fn new(uart: Arc<UartEvents>) -> std::io::Result<Self> {
        let mut timer = TimerFd::new().map_err(std::io::Error::other)?;
        timer
            .reset(PVM_HINT_AFTER, None)
            .map_err(std::io::Error::other)?;
        Ok(PvmHint { timer, uart })
    }
}

impl MutEventSubscriber for PvmHint {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let _ = ops.remove(Events::new(&self.timer, EventSet::IN));
        if self.uart.bytes_out() == 0 {
            log::warn!(
                "no guest output after {}s, and /dev/kvm here is PVM (software virtualization: guest kernel code runs emulated at ~1.7M instructions/s and ordinary Linux kernels don't boot on it); use a host with hardware KVM (VMX/SVM)",
                PVM_HINT_AFTER.as_secs()
            );
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::debug!("can't watch the PVM hint timer: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_at_zero_for_registered_names_and_count() {
        let c = Arc::new(LoopCounters::default());
        let stop = Arc::new(VmStop::new().unwrap());
        let _w = Counted::wrap(
            "stop",
            Arc::new(Mutex::new(StopWatcher::new(stop))),
            c.clone(),
        );
        assert_eq!(c.snapshot(), vec![("stop".to_string(), 0)]);
        c.bump("stop");
        c.bump("stdin");
        assert_eq!(
            c.snapshot(),
            vec![("stdin".to_string(), 1), ("stop".to_string(), 1)]
        );
    }
}
