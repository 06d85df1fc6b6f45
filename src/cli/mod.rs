// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line definitions (clap) and their conversion into configurations.

pub mod client;
pub mod server;
pub mod vm;

use clap::{ArgAction, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  Boot a kernel with 4 MiB of shared memory in /dev/shm/demo:
    ivvmm --kernel bzImage --shm demo --size 4M
  Two VMs that interrupt each other through an ivshmem server:
    ivvmm server -S /tmp/ivshmem.sock -l 4M -n 2 &
    ivvmm --kernel bzImage --initrd initramfs.cpio.gz --server /tmp/ivshmem.sock --vectors 2
  Several devices, one of them on hugetlbfs:
    ivvmm --kernel bzImage --ivshmem shm=a,size=1M --ivshmem path=/dev/hugepages/b,size=64M
  Ring peer 3's vector 0 from the host:
    ivvmm client -S /tmp/ivshmem.sock ring 3 0

Serial console: the guest's COM1 is on stdin/stdout; Ctrl-A x quits.
Exit status: the guest's exit-port byte (port 0xf4), 0 after a guest
reboot or shutdown, 128+N after signal N, 1 on a VMM failure, 2 on bad
usage.";

/// A minimal KVM VMM whose device is ivshmem (QEMU-compatible shared memory
/// and doorbells between VMs).
#[derive(Parser, Debug)]
#[command(
    name = "ivvmm",
    version,
    about,
    after_help = EXAMPLES,
    override_usage = "ivvmm --kernel PATH [OPTIONS]\n       ivvmm server [OPTIONS]\n       ivvmm client [OPTIONS] [COMMAND]",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub vm: vm::VmArgs,

    /// More log output (-v info, -vv debug); IVVMM_LOG=level overrides.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands' arguments are built only when one is used (`defer`):
/// the VM path, the one timed from process start, skips building them.
#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum Command {
    /// An ivshmem server, wire-compatible with QEMU's ivshmem-server.
    Server(server::ServerArgs),
    /// A host process that joins an ivshmem server as a peer: ring, wait,
    /// dump, ping, pong.
    Client(client::ClientArgs),
}

/// A uid given as a number or a user name (`--server-uid`, `--peer-uid`,
/// `server-uid=`).
pub fn parse_uid(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(format!(
            "'{text}' is neither a uid nor a known user name; give a number such as 1000"
        )),
    }
}
