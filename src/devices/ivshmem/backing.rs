// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`BackingWatch`]: notices when the object behind BAR2 shrinks under us
//! (a peer, or anyone who may write it, truncated it: QEMU's server does
//! not seal its memory) and has the device stop mapping what no longer
//! exists. Needed because KVM may never say so itself: on PVM a guest access
//! to host memory that is gone is retried by KVM forever; on hardware KVM
//! KVM_RUN fails with EFAULT (the vCPU waits for this watch then, see
//! vcpu.rs).
//!
//! An inotify watch on the object's inode (through /proc/self/fd, which
//! works for memfds and hugetlbfs files too): a truncation is IN_MODIFY.
//! Writes through our shared mapping raise no events; a peer that write()s
//! the file costs one fstat per loop turn, and the device (which a vCPU may
//! hold) is locked only when the object is smaller than what it maps.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::device::IvshmemDevice;
use crate::config::size::format_size;
use crate::shm::ShmBackend;

/// The event-loop subscriber that follows one device's backing object.
pub struct BackingWatch {
    dev: Arc<Mutex<IvshmemDevice>>,
    inotify: Inotify,
    /// Our own descriptor of the object, for fstat.
    file: File,
    what: String,
    index: usize,
    /// What the device maps of the object (its `bar2_backed`, which only
    /// shrinks, and only here): a size at or above it needs no device.
    backed: u64,
}

impl BackingWatch {
    /// Watches `backend`'s object; None (said at -v) where inotify can't.
    pub fn new(
        index: usize,
        backend: &ShmBackend,
        backed: u64,
        dev: Arc<Mutex<IvshmemDevice>>,
    ) -> Option<BackingWatch> {
        let build = || -> Result<BackingWatch, String> {
            let file = backend.file().try_clone().map_err(|e| e.to_string())?;
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| e.to_string())?;
            let path = format!("/proc/self/fd/{}", file.as_raw_fd());
            inotify
                .add_watch(
                    path.as_str(),
                    AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB,
                )
                .map_err(|e| e.to_string())?;
            Ok(BackingWatch {
                dev,
                inotify,
                file,
                what: backend.describe().to_string(),
                index,
                backed,
            })
        };
        match build() {
            Ok(watch) => Some(watch),
            Err(e) => {
                log::info!("ivshmem{index}: can't watch the shared memory for truncation: {e}");
                None
            }
        }
    }

    fn check(&mut self) {
        // Drain what is there (one read: the loop comes back if more wait).
        let _ = self.inotify.read_events();
        let Ok(st) = nix::sys::stat::fstat(self.file.as_fd()) else {
            return;
        };
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size >= self.backed {
            return;
        }
        let shrunk = self
            .dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backing_shrank(size);
        if let Some((was, now)) = shrunk {
            self.backed = now;
            log::error!(
                "ivshmem{}: shared memory {} shrank to {} (someone truncated it); the guest's BAR2 keeps its size but reads all-ones from {} on and its writes there are dropped ({} were mapped); restore the object and restart the VM to use all of it again",
                self.index,
                self.what,
                format_size(size),
                format_size(now),
                format_size(was)
            );
        }
    }
}

impl MutEventSubscriber for BackingWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.inotify.as_fd().as_raw_fd();
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            log::warn!(
                "ivshmem{}: can't watch the shared memory: {e:?}",
                self.index
            );
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.check();
    }
}
