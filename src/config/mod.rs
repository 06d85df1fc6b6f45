// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What a VM is built from, as plain data: produced by `cli` from flags (or
//! by tests directly), consumed by `vmm` and the devices. Nothing here knows
//! about flags, KVM or files.

pub mod size;

use std::path::PathBuf;

pub use crate::sandbox::SeccompMode;
pub use crate::shm::{ShmSource, Trust};

/// Smallest ivshmem region (one page), as QEMU.
pub const MIN_SHM_SIZE: u64 = 4096;
/// Default ivshmem size, as QEMU's ivshmem-server.
pub const DEFAULT_SHM_SIZE: u64 = 4 << 20;

/// Where the guest's serial output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialChoice {
    Stdio,
    None,
    File(PathBuf),
}

/// The host side of one ivshmem device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvshmemBacking {
    /// Shared memory we open or create: a POSIX shm object
    /// (`ShmSource::Name`) or a file on tmpfs or hugetlbfs
    /// (`ShmSource::Path`). `trust`: whether an existing object may belong
    /// to another user or be writable by others (shared on purpose).
    Memory {
        source: ShmSource,
        size: u64,
        trust: Trust,
    },
    /// Shared memory and doorbells from an ivshmem server. With `size`, BAR2
    /// is that size and the server's memory must be at least as large;
    /// without, BAR2 is the server's size rounded up to a power of two.
    /// `server_uid`: a uid besides ours and root's the server may run as.
    Server {
        socket: PathBuf,
        vectors: u16,
        size: Option<u64>,
        server_uid: Option<u32>,
        /// Rejoin the server at `socket` when it comes back with the same
        /// memory (docs/ivshmem-presence.md); false: QEMU's behaviour.
        rejoin: bool,
    },
}

/// Everything needed to build a VM; produced from flags, or by tests directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_size: u64,
    pub cpus: u32,
    pub serial: SerialChoice,
    pub ivshmem: Vec<IvshmemBacking>,
    pub stats: bool,
    pub seccomp: SeccompMode,
}
