// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm server`: flags compatible with QEMU's ivshmem-server, and the glue
//! around [`crate::server::Server`]: signals, pidfile, daemon mode.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::size::parse_pow2_size;
use crate::protocol::MAX_SERVER_VECTORS;
use crate::sandbox::{self, SandboxError, SeccompMode, ThreadKind};
use crate::server::{Pidfile, Server, ServerConfig, ServerError};
use crate::shm::{ShmSource, Trust};
use crate::stop::signals_as_events;

/// What differs from QEMU's contrib/ivshmem-server (also in docs/server.md).
const DIFFERENCES: &str = "\
Differences from QEMU's ivshmem-server (details: docs/server.md):
  - Foreground by default (QEMU daemonizes unless -F); -F is accepted, -D
    daemonizes; -v is allowed with -D.
  - Without -M or -m the memory is a memfd sealed against shrinking (QEMU uses
    the POSIX shm object 'ivshmem').
  - An existing -M object is never shrunk: it must be exactly -l bytes, or
    empty (then it is grown to -l; QEMU truncates any size). It must be ours
    and not writable by others, unless --shm-shared. A -M object the server
    created is removed when it exits, unless --keep-shm; one that existed
    before is never removed.
  - Only peers running as our uid or root join, unless --peer-uid.
  - -l must be a power of two (QEMU rounds up); -M and -m conflict.
  - -p has no default, works in the foreground too, and the pidfile is removed
    on exit.
  - SIGINT stops the server like SIGTERM; remaining peers are not told that the
    others left, so they can keep talking without the server.
  - A live socket at -S is an error; a stale one is replaced.
  - A peer that stops reading is dropped instead of silently missing notices.";

/// `ivvmm server`: an ivshmem server, wire-compatible with QEMU's.
// The subcommand's arguments are deferred (cli::Command), so what is set
// here, not the variant's doc comment, heads `ivvmm server --help`.
#[derive(Debug, clap::Args)]
#[command(
    about = "An ivshmem server, wire-compatible with QEMU's ivshmem-server",
    after_long_help = DIFFERENCES
)]
pub struct ServerArgs {
    /// UNIX socket to listen on
    #[arg(short = 'S', long = "socket", default_value = "/tmp/ivshmem_socket")]
    pub socket: PathBuf,
    /// Shared memory size, a power of two (K, M, G suffixes; e.g. 4M, 8G)
    #[arg(short = 'l', long = "size", default_value = "4M", value_parser = parse_shm_size)]
    pub size: u64,
    /// Interrupt vectors per peer (0 to 64)
    #[arg(short = 'n', long = "vectors", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_SERVER_VECTORS)))]
    pub vectors: u16,
    /// POSIX shared memory object to use (/dev/shm/NAME); default: a memfd
    #[arg(short = 'M', long = "shm", conflicts_with = "shm_dir")]
    pub shm: Option<String>,
    /// Directory to create the memory in, as an unlinked file (e.g. hugetlbfs)
    #[arg(short = 'm', long = "shm-dir")]
    pub shm_dir: Option<PathBuf>,
    /// Keep a -M object the server created when it exits
    #[arg(long = "keep-shm")]
    pub keep_shm: bool,
    /// The existing -M object is shared on purpose: use it even if another
    /// user owns it or others may write it
    #[arg(long = "shm-shared", requires = "shm")]
    pub shm_shared: bool,
    /// Also let peers running as this user join (a uid or a user name;
    /// repeatable). Ours and root's always may. They also need access to
    /// the 0600 socket (e.g. setfacl -m u:UID:rw SOCKET)
    #[arg(long = "peer-uid", value_name = "UID", value_parser = super::parse_uid)]
    pub peer_uids: Vec<u32>,
    /// Stay in the foreground (the default; accepted for QEMU compatibility)
    #[arg(short = 'F', long = "foreground")]
    pub foreground: bool,
    /// Detach and run in the background once listening
    #[arg(short = 'D', long = "daemon", conflicts_with = "foreground")]
    pub daemon: bool,
    /// Write our pid to this file (removed on exit)
    #[arg(short = 'p', long = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// Log debug details too (fds, greeting sizes, full sockets)
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Seccomp sandbox once listening: on (a syscall outside the filter
    /// stops the server, exit 159), log (allowed, logged by the kernel), off
    #[arg(long, value_enum, value_name = "on|log|off", default_value = "on")]
    pub seccomp: SeccompMode,
}

/// Why `ivvmm server` failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot resolve {0}: {1}; give an absolute path")]
    Path(String, std::io::Error),
    #[error("cannot set up SIGINT/SIGTERM handling: {0}")]
    Signals(nix::Error),
    #[error("cannot run in the background: {0}; run in the foreground instead (drop -D)")]
    Daemon(nix::Error),
    #[error("the background server failed to start; run it without -D to see why")]
    DaemonStart,
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

fn parse_shm_size(text: &str) -> Result<u64, String> {
    parse_pow2_size(text, 4096).map_err(|e| e.to_string())
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|e| Error::Path(path.display().to_string(), e))
}

impl ServerArgs {
    /// The server configuration these flags describe (paths made absolute so
    /// a daemon can leave the working directory).
    pub fn config(&self) -> Result<ServerConfig, Error> {
        let shm = match (&self.shm, &self.shm_dir) {
            (Some(name), _) => ShmSource::Name(name.clone()),
            (None, Some(dir)) => ShmSource::Dir(absolute(dir)?),
            (None, None) => ShmSource::Memfd,
        };
        Ok(ServerConfig {
            socket: absolute(&self.socket)?,
            size: self.size,
            vectors: self.vectors,
            shm,
            keep_shm: self.keep_shm,
            trust: Trust::shared_if(self.shm_shared),
            peer_uids: self.peer_uids.clone(),
        })
    }
}

/// Runs `ivvmm server` until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> Result<(), Error> {
    if args.verbose {
        log::set_max_level(log::LevelFilter::Debug);
    }
    let config = args.config()?;
    let pidfile_path = args.pidfile.as_deref().map(absolute).transpose()?;
    // Signals become events of the loop: block them before the socket
    // exists, so a SIGTERM right after start-up still stops us in order
    // (it waits, pending, until the signalfd reads it).
    let signals = signals_as_events(&[]).map_err(Error::Signals)?;
    let mut server = Server::new(&config)?;
    let ready = if args.daemon {
        Some(daemonize()?)
    } else {
        None
    };
    let pidfile = pidfile_path.as_deref().map(Pidfile::write).transpose()?;
    if ready.is_some() {
        detach_stdio();
    }
    // Set-up is done: from the first peer on, only the server's syscalls.
    // (A daemon that can't install it never reports ready: its parent
    // then says to run in the foreground to see why.)
    sandbox::install(ThreadKind::Server, args.seccomp)?;
    if let Some(ready) = ready {
        // The parent exits 0 once it reads this; if it cannot, it exits 1.
        let _ = (&ready).write_all(b"1");
    }
    server.run(signals.as_fd())?;
    if let Ok(Some(info)) = signals.read_signal() {
        log::info!("stopped by signal {}", info.ssi_signo);
    }
    drop(pidfile);
    drop(server);
    Ok(())
}

/// Forks; the parent waits until the child is ready and exits. Returns, in
/// the child, the pipe end to report readiness on.
fn daemonize() -> Result<std::fs::File, Error> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Daemon)?;
    // SAFETY: the process is single-threaded here (the CLI runs the server on
    // the main thread and has started no other), so fork is sound.
    match unsafe { nix::unistd::fork() }.map_err(Error::Daemon)? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut byte = [0u8; 1];
            let ok = std::fs::File::from(r).read(&mut byte).is_ok_and(|n| n == 1);
            // Exit without running destructors: the socket and the shared
            // memory belong to the child now.
            if ok {
                std::process::exit(0);
            }
            eprintln!("{}", Error::DaemonStart);
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid().map_err(Error::Daemon)?;
            nix::unistd::chdir("/").map_err(Error::Daemon)?;
            Ok(std::fs::File::from(w))
        }
    }
}

/// A daemon's stdio goes to /dev/null (it has no terminal any more).
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}
