// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`DeviceWatch`]: everything the event loop watches for one doorbell
//! device — the server connection (peers joining and leaving, the server
//! going away) and the eventfds of its masked vectors (they become PBA bits).
//!
//! Unmasked vectors are *not* watched here — their eventfds are KVM irqfds
//! and the loop never wakes for them.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::device::IvshmemDevice;
use super::rejoin::{Rejoined, Rejoiner};
use crate::protocol::{PeerConnection, PeerEvent};

/// What a [`DeviceWatch`] is made of before its device exists.
pub struct WatchParts {
    pub conn: PeerConnection,
    pub server: PathBuf,
    /// Written when the set of masked vectors to watch changes.
    pub watch_changed: EventFd,
    /// None: rejoining is off (QEMU's behaviour).
    pub rejoiner: Option<Rejoiner>,
}

impl WatchParts {
    pub fn attach(self, dev: Arc<Mutex<IvshmemDevice>>) -> DeviceWatch {
        let retry = TimerFd::new()
            .map_err(|e| log::warn!("ivshmem: no retry timer ({e}): a busy device is waited for"))
            .ok();
        DeviceWatch {
            dev,
            conn: self.conn,
            server: self.server,
            watch_changed: self.watch_changed,
            rejoiner: self.rejoiner,
            watched: BTreeMap::new(),
            server_gone: false,
            retry,
            paused: false,
        }
    }
}

/// The event-loop subscriber of one doorbell device.
pub struct DeviceWatch {
    dev: Arc<Mutex<IvshmemDevice>>,
    conn: PeerConnection,
    server: PathBuf,
    watch_changed: EventFd,
    rejoiner: Option<Rejoiner>,
    /// Vector → fd currently in the epoll set.
    watched: BTreeMap<u16, RawFd>,
    server_gone: bool,
    /// While a vCPU holds the device (a guest-triggered operation can be
    /// many KVM calls), the loop does not wait for it: it takes the
    /// device's fds out of the epoll set and looks again when this fires.
    retry: Option<TimerFd>,
    paused: bool,
}

/// `dev`, unless it stays held for [`BUSY_SPIN`] and `can_wait_later`
/// (then None). A vCPU holds it for microseconds to serve a register
/// access — a guest polling its registers holds it most of the time — so
/// the short spin keeps those from costing a 1 ms retry; only long work
/// (a BAR0 move's re-registrations) outlasts it.
fn try_lock(
    dev: &Mutex<IvshmemDevice>,
    can_wait_later: bool,
) -> Option<std::sync::MutexGuard<'_, IvshmemDevice>> {
    if !can_wait_later {
        return Some(dev.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let deadline = Instant::now() + BUSY_SPIN;
    loop {
        match dev.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() >= deadline => return None,
            Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
        }
    }
}

/// How long to try for a device a vCPU holds before pausing (see `try_lock`).
const BUSY_SPIN: Duration = Duration::from_micros(100);

/// How long to leave a busy device alone before looking again.
const BUSY_RETRY: Duration = Duration::from_millis(1);

impl DeviceWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, IvshmemDevice> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A vCPU is busy with the device: stop watching its fds (they stay
    /// readable, so level-triggered epoll would spin) until `retry` fires.
    fn pause(&mut self, ops: &mut EventOps) {
        let Some(retry) = &mut self.retry else {
            return;
        };
        if self.paused {
            return;
        }
        if retry.reset(BUSY_RETRY, None).is_err() {
            return;
        }
        self.paused = true;
        if !self.server_gone {
            let _ = ops.remove(Events::new(&self.conn, EventSet::IN));
        }
        let _ = ops.remove(Events::new(&self.watch_changed, EventSet::IN));
        for (_, fd) in std::mem::take(&mut self.watched) {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
        }
    }

    /// The retry timer fired: watch everything again.
    fn resume(&mut self, ops: &mut EventOps) {
        if let Some(retry) = &mut self.retry {
            let _ = retry.wait();
        }
        if !self.paused {
            return;
        }
        self.paused = false;
        if !self.server_gone {
            let _ = ops.add(Events::new(&self.conn, EventSet::IN));
        }
        let _ = ops.add(Events::new(&self.watch_changed, EventSet::IN));
        self.reconcile(ops);
    }

    /// Makes the epoll set hold exactly the unattached vectors' eventfds.
    fn reconcile(&mut self, ops: &mut EventOps) {
        let device = self.dev.clone();
        let Some(dev) = try_lock(&device, self.retry.is_some()) else {
            return self.pause(ops);
        };
        let want: BTreeMap<u16, RawFd> = match &dev.interrupts {
            Some(db) => db.watched_fds().into_iter().collect(),
            None => BTreeMap::new(),
        };
        drop(dev);
        let stale: Vec<(u16, RawFd)> = self
            .watched
            .iter()
            .filter(|(v, fd)| want.get(v) != Some(fd))
            .map(|(v, fd)| (*v, *fd))
            .collect();
        for (v, fd) in stale {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            self.watched.remove(&v);
        }
        for (v, fd) in want {
            if self.watched.contains_key(&v) {
                continue;
            }
            match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => {
                    self.watched.insert(v, fd);
                }
                Err(e) => log::warn!("ivshmem: can't watch vector {v}: {e:?}"),
            }
        }
    }

    /// Applies what the server sent, a bounded slice per loop turn: at most
    /// [`SERVER_MESSAGES_PER_TURN`] messages and about [`SERVER_TURN_BUDGET`]
    /// of work (a join or leave may cost KVM ioctls). The socket stays
    /// readable if more wait, so the loop comes back after its other events:
    /// a flooding server costs CPU, never the signals or the stop event.
    fn server_messages(&mut self, ops: &mut EventOps) {
        let start = Instant::now();
        let mut read = 0;
        let mut gone = false;
        while read < SERVER_MESSAGES_PER_TURN && !gone {
            // The device first, then the message: a busy device leaves the
            // message in the socket for later.
            // A clone, so the guard borrows it and not `self`.
            let device = self.dev.clone();
            let Some(mut dev) = try_lock(&device, self.retry.is_some()) else {
                return self.pause(ops);
            };
            let events = self.conn.read_events_max(SERVER_MESSAGES_PER_BATCH);
            read += SERVER_MESSAGES_PER_BATCH;
            if events.is_empty() {
                break;
            }
            for event in events {
                // One device lock per event, so a vCPU waits for one at most.
                let changed = match (event, &mut dev.interrupts) {
                    (PeerEvent::ServerGone, _) => {
                        gone = true;
                        false
                    }
                    (PeerEvent::PeerJoined { id, vector, fd }, Some(db)) => {
                        db.peer_joined(id, vector, fd)
                    }
                    (PeerEvent::PeerLeft { id }, Some(db)) => db.peer_left(id),
                    (_, None) => false,
                };
                if changed {
                    dev.presence_changed();
                }
            }
            if start.elapsed() >= SERVER_TURN_BUDGET {
                break;
            }
        }
        if gone {
            self.server_lost(ops);
        }
    }

    fn server_lost(&mut self, ops: &mut EventOps) {
        self.server_gone = true;
        let _ = ops.remove(Events::new(&self.conn, EventSet::IN));
        self.lock().server_lost();
        match &self.rejoiner {
            Some(rejoiner) => {
                log::warn!(
                    "ivshmem server {} went away: the VM keeps running with the peers it has, and rejoins when a server with the same memory is back",
                    self.server.display()
                );
                rejoiner.start();
            }
            None => log::warn!(
                "ivshmem server {} went away: the VM keeps running with the peers it has; new peers can't join until the VM restarts (rejoining is off)",
                self.server.display()
            ),
        }
    }

    /// The rejoin thread has a new connection: the device takes its id,
    /// eventfds and peers; the loop watches the new connection and the
    /// new eventfds of masked vectors.
    fn rejoined(&mut self, ops: &mut EventOps) {
        let Some(new) = self.rejoiner.as_ref().and_then(Rejoiner::take) else {
            return;
        };
        // The old eventfds close below, and their numbers may come back
        // for the new ones: leave nothing of them in the epoll set.
        for (_, fd) in std::mem::take(&mut self.watched) {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
        }
        let Rejoined {
            conn,
            id,
            own,
            own_rings,
            peers,
        } = new;
        let count = peers.len();
        self.lock().rejoined(id, own, own_rings, peers);
        self.conn = conn;
        self.server_gone = false;
        if let Err(e) = ops.add(Events::new(&self.conn, EventSet::IN)) {
            log::error!("ivshmem: can't watch the rejoined server connection: {e:?}");
        }
        self.reconcile(ops);
        log::warn!(
            "ivshmem server {} is back: rejoined as id {id} with {count} peers",
            self.server.display()
        );
    }
}

/// Server messages one loop turn reads at most (see `server_messages`).
pub const SERVER_MESSAGES_PER_TURN: usize = 256;
/// One message at a time: a join or leave may cost a KVM ioeventfd change,
/// ~5 ms on PVM (an SRCU grace period), so the budget is checked after each.
const SERVER_MESSAGES_PER_BATCH: usize = 1;
/// Work one loop turn spends on server messages, checked between batches.
pub const SERVER_TURN_BUDGET: Duration = Duration::from_millis(5);

impl MutEventSubscriber for DeviceWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.conn, EventSet::IN)) {
            log::error!("ivshmem: can't watch the server connection: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.watch_changed, EventSet::IN)) {
            log::error!("ivshmem: can't watch vector mask changes: {e:?}");
        }
        if let Some(rejoiner) = &self.rejoiner {
            if let Err(e) = ops.add(Events::new(&rejoiner.ready, EventSet::IN)) {
                log::error!("ivshmem: can't watch for a rejoined server: {e:?}");
            }
        }
        if let Some(retry) = &self.retry {
            if let Err(e) = ops.add(Events::new(retry, EventSet::IN)) {
                log::error!("ivshmem: can't watch the busy-device timer: {e:?}");
            }
        }
        self.reconcile(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if self.retry.as_ref().is_some_and(|r| r.as_raw_fd() == fd) {
            self.resume(ops);
        } else if fd == self.conn.as_raw_fd() {
            if !self.server_gone {
                self.server_messages(ops);
            }
        } else if self
            .rejoiner
            .as_ref()
            .is_some_and(|r| r.ready.as_raw_fd() == fd)
        {
            self.rejoined(ops);
        } else if fd == self.watch_changed.as_raw_fd() {
            let _ = self.watch_changed.read();
            self.reconcile(ops);
        } else if let Some(v) = self
            .watched
            .iter()
            .find(|(_, f)| **f == fd)
            .map(|(v, _)| *v)
        {
            let device = self.dev.clone();
            let guard = try_lock(&device, self.retry.is_some());
            match guard {
                Some(mut dev) => dev.vector_event(v),
                None => self.pause(ops),
            }
        }
    }
}
