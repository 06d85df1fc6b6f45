// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Start-up threads run beside the thread that builds the VM, not behind it.
//!
//! A thread the builder starts is often queued on the builder's own CPU and
//! then runs only once the builder sleeps: its work (installing a seccomp
//! filter, asking KVM for CPUID) lands on the path to the first guest
//! instruction instead of running in parallel with the build. And waking a
//! thread on an idle CPU later costs 0.1–0.7 ms where the host is itself a
//! virtual machine. [`spawn_beside`] therefore starts a thread on the
//! *other* CPUs the process may use; the thread gives itself back all of
//! them before it runs its work, so the placement lasts only for its start.
//! With one usable CPU nothing changes. For the same reason the waits
//! between start-up threads poll before they sleep ([`poll_briefly`],
//! [`recv_soon`]). `scripts/bench boot` measures the effect (the boot
//! floor).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{Receiver, RecvError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a start-up wait between threads polls before it sleeps.
///
/// Waking a thread that sleeps on an idle CPU takes 0.1–0.7 ms where the
/// host is itself a virtual machine (the hypervisor must run that CPU
/// again), more than the waits of start-up last: a vCPU for the event
/// loop's filter, the event loop for a helper's answer. Polling, with the
/// CPU yielded between polls to any thread that shares it, spares that; a
/// wait that outlasts this sleeps.
pub const POLL_BEFORE_SLEEP: Duration = Duration::from_millis(2);

/// Polls `ready` for up to [`POLL_BEFORE_SLEEP`]; whether it became true.
pub fn poll_briefly(mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + POLL_BEFORE_SLEEP;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

/// `rx.recv()`, polled for up to [`POLL_BEFORE_SLEEP`] first.
pub fn recv_soon<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let mut got = None;
    poll_briefly(|| match rx.try_recv() {
        Ok(v) => {
            got = Some(Ok(v));
            true
        }
        Err(TryRecvError::Empty) => false,
        Err(TryRecvError::Disconnected) => {
            got = Some(Err(RecvError));
            true
        }
    });
    got.unwrap_or_else(|| rx.recv())
}

/// Starts `f` on a new thread named `name`, placed off the caller's CPU
/// until it starts (best effort: where affinity can't be read or set, the
/// thread stays where the scheduler puts it).
pub fn spawn_beside<F, T>(name: &str, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let all = allowed_cpus();
    // Held until the thread is placed, so that it cannot give itself its
    // CPUs back before we take them away.
    let placed = Arc::new(Mutex::new(()));
    let held = placed.lock().unwrap_or_else(|e| e.into_inner());
    let thread = std::thread::Builder::new().name(name.into()).spawn({
        let placed = placed.clone();
        move || {
            drop(placed.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(all) = &all {
                set_own_cpus(all);
            }
            f()
        }
    })?;
    if let Some(others) = all.as_ref().and_then(others_than_current) {
        // SAFETY: the handle is not joined, so its pthread_t names a valid
        // thread (it is waiting for `held`); `others` is a valid cpu_set_t
        // of the size given.
        unsafe {
            libc::pthread_setaffinity_np(
                thread.as_pthread_t(),
                size_of::<libc::cpu_set_t>(),
                &others,
            )
        };
    }
    drop(held);
    Ok(thread)
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size given; 0 is
    // the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    (r == 0).then_some(set)
}

/// `all` without the CPU the caller runs on now; `None` if nothing is left.
fn others_than_current(all: &libc::cpu_set_t) -> Option<libc::cpu_set_t> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return None;
    }
    let mut others = *all;
    // SAFETY: `cpu` is within the set (checked above); both calls only
    // index the set's bit array.
    let left = unsafe {
        libc::CPU_CLR(cpu, &mut others);
        libc::CPU_COUNT(&others)
    };
    (left > 0).then_some(others)
}

/// How many CPUs `set` holds.
#[cfg(test)]
fn count(set: &libc::cpu_set_t) -> i32 {
    // SAFETY: only reads the set's bit array.
    unsafe { libc::CPU_COUNT(set) }
}

fn set_own_cpus(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is the
    // calling thread.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cpus() -> libc::cpu_set_t {
        allowed_cpus().expect("sched_getaffinity")
    }

    fn same(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
        // SAFETY: only reads the sets' bit arrays, within CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize)
            .all(|c| unsafe { libc::CPU_ISSET(c, a) == libc::CPU_ISSET(c, b) })
    }

    #[test]
    fn the_thread_gets_every_cpu_back_and_its_result_through() {
        let before = own_cpus();
        let t = spawn_beside("beside-test", move || same(&own_cpus(), &before)).unwrap();
        assert!(t.join().unwrap(), "the thread kept a narrowed CPU set");
        assert!(same(&own_cpus(), &before), "the caller's CPU set changed");
    }

    #[test]
    fn with_more_than_one_cpu_the_thread_starts_on_another() {
        if count(&own_cpus()) < 2 {
            eprintln!("SKIPPED: one usable CPU, nothing to place");
            return;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = || unsafe { libc::sched_getcpu() };
        // A try where this thread moved meanwhile says nothing; retry.
        for _ in 0..20 {
            let before = cpu();
            let t = spawn_beside("beside-test", cpu).unwrap();
            let after = cpu();
            let started_on = t.join().unwrap();
            if before == after {
                assert_ne!(
                    started_on, before,
                    "the helper started on the builder's CPU"
                );
                return;
            }
        }
        panic!("this thread changed CPU in each of 20 tries");
    }
}
