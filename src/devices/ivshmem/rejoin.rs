// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`Rejoiner`]: after the server connection ended, a thread of its own
//! tries the same socket path again (100 ms, then doubling up to one try a
//! second) and hands the event loop a new connection — but only one that
//! offers the same shared memory (docs/ivshmem-presence.md). The thread
//! exists from the start (no thread may be created once the VM runs under
//! its seccomp filter) and sleeps until the server is lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::protocol::rejoin::{refusal, Backoff, Refusal};
use crate::protocol::{self, PeerConnection};
use crate::sandbox::{self, SeccompMode, ThreadKind};
use crate::shm::ShmIdentity;

/// A new connection, ready for the device.
pub struct Rejoined {
    pub conn: PeerConnection,
    pub id: u16,
    pub own: Vec<EventFd>,
    /// Duplicates of `own`: our doorbells to ourselves. Made here, so the
    /// event loop's thread need not be allowed to duplicate fds.
    pub own_rings: Vec<EventFd>,
    pub peers: BTreeMap<u16, Vec<EventFd>>,
}

#[derive(Default)]
struct State {
    trying: bool,
    result: Option<Rejoined>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where to rejoin and what to accept.
pub struct RejoinTarget {
    pub index: usize,
    pub socket: PathBuf,
    /// The same options as the first connection (handshake deadline, the
    /// server uids we accept): a server we would not have joined at start
    /// is not rejoined either. Its vectors are those the device got (what
    /// a rejoined server must give again), not those it asked for.
    pub options: protocol::ConnectOptions,
    pub memory: ShmIdentity,
}

/// The event loop's handle on one device's rejoin thread.
pub struct Rejoiner {
    shared: Arc<Shared>,
    /// Readable when [`take`](Self::take) has a connection.
    pub ready: EventFd,
}

impl Rejoiner {
    /// Starts the (sleeping) thread; it confines itself with `seccomp`
    /// before the first guest instruction (sandbox::helpers_confined).
    pub fn spawn(target: RejoinTarget, seccomp: SeccompMode) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let ready = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?;
        let (thread_shared, thread_ready) = (shared.clone(), ready.try_clone()?);
        let name = format!("ivshmem{}-rejoin", target.index);
        sandbox::spawn_confined(ThreadKind::Rejoin, seccomp, &name, move || {
            rejoin_loop(&thread_shared, &thread_ready, &target)
        })?;
        Ok(Rejoiner { shared, ready })
    }

    /// The server is gone: start trying.
    pub fn start(&self) {
        self.shared.lock().trying = true;
        self.shared.wake.notify_all();
    }

    /// The connection the thread made, if any (it stops trying then).
    pub fn take(&self) -> Option<Rejoined> {
        let _ = self.ready.read();
        self.shared.lock().result.take()
    }
}

fn rejoin_loop(shared: &Shared, ready: &EventFd, target: &RejoinTarget) {
    loop {
        let mut st = shared.lock();
        while !st.trying {
            st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        drop(st);
        if let Some(rejoined) = try_until_joined(shared, target) {
            let mut st = shared.lock();
            st.result = Some(rejoined);
            st.trying = false;
            drop(st);
            let _ = ready.write(1);
        }
    }
}

fn try_until_joined(shared: &Shared, target: &RejoinTarget) -> Option<Rejoined> {
    let mut backoff = Backoff::default();
    let mut said: Option<Refusal> = None;
    loop {
        // A condition-variable wait as the sleep: nothing wakes it early,
        // but it needs no syscall beyond what every thread has (futex).
        let st = shared.lock();
        let (st, _) = shared
            .wake
            .wait_timeout(st, backoff.next_wait())
            .unwrap_or_else(|e| e.into_inner());
        drop(st);
        let (conn, hs) = match protocol::connect_with(&target.socket, &target.options) {
            Ok(joined) => joined,
            Err(e) => {
                log::debug!("ivshmem{}: rejoin: {e}", target.index);
                continue;
            }
        };
        let vectors = usize::from(target.options.vectors);
        match refusal(Some(target.memory), vectors, &hs) {
            None => {
                let own_rings: Result<Vec<EventFd>, _> =
                    hs.own.iter().map(EventFd::try_clone).collect();
                match own_rings {
                    Ok(own_rings) => {
                        return Some(Rejoined {
                            conn,
                            id: hs.id,
                            own: hs.own,
                            own_rings,
                            peers: hs.peers,
                        })
                    }
                    Err(e) => log::warn!("ivshmem{}: rejoin: {e}", target.index),
                }
            }
            Some(why) => {
                if !why.said_before(&mut said) {
                    log::warn!(
                        "ivshmem{}: a server is back at {} but this VM stays away: {why}; mapping other memory under a running guest would corrupt its data. Still trying, in case the right server comes back",
                        target.index,
                        target.socket.display()
                    );
                }
            }
        }
    }
}
