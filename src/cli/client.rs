// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm client`: join a server as a host peer, then watch, ring, wait, dump
//! or measure round trips. The first line of output is always our summary
//! (`id=N vectors=V shm=SIZE peers=a,b`), so scripts can find our id.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::client::pingpong::WaitMode;
use crate::client::{Client, ClientError};
use crate::config::size::parse_size;
use crate::sandbox::{self, SandboxError, SeccompMode, ThreadKind};
use crate::stop::signals_as_events;

/// `ivvmm client`: a host process that joins an ivshmem server as a peer.
// Deferred like `ivvmm server`'s arguments: this `about` heads the help.
#[derive(Debug, clap::Args)]
#[command(
    about = "A host process that joins an ivshmem server as a peer: ring, wait, dump, ping, pong"
)]
pub struct ClientArgs {
    /// The server's UNIX socket
    #[arg(short = 'S', long = "socket", default_value = "/tmp/ivshmem_socket")]
    pub socket: PathBuf,
    /// Vectors to use (default: as many as the server offers, up to 64)
    #[arg(short = 'n', long = "vectors")]
    pub vectors: Option<u16>,
    /// The server may run as (and its socket belong to) this user, besides
    /// us and root: a uid or a user name
    #[arg(long = "server-uid", value_name = "UID", value_parser = super::parse_uid)]
    pub server_uid: Option<u32>,
    /// How long joining the server may take
    #[arg(long = "connect-timeout", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Seccomp sandbox once joined: on (a syscall outside the filter stops
    /// the client, exit 159), log (allowed, logged by the kernel), off
    #[arg(long, value_enum, value_name = "on|log|off", default_value = "on")]
    pub seccomp: SeccompMode,
    /// Following (no command): when the server is lost, join it again once
    /// it is back with the same memory, instead of ending
    #[arg(long)]
    pub rejoin: bool,
    /// What to do; without one, print our id and peers and follow joins and
    /// leaves until interrupted
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Ring a peer's vector once
    Ring { peer: u16, vector: u16 },
    /// Wait until one of our vectors fires
    Wait {
        vector: u16,
        /// Give up after this long (e.g. 5s, 500ms); default: wait forever
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Hexdump part of the shared memory
    Dump {
        /// Start offset (bytes; K/M/G suffixes or 0x hex)
        #[arg(long, default_value = "0", value_parser = parse_offset)]
        offset: u64,
        /// Length in bytes
        #[arg(long, default_value = "256", value_parser = parse_offset)]
        len: u64,
    },
    /// Measure round trips to a pong (another client or the test guest)
    Ping {
        /// The pong's id, if you want it checked (the pong is found through
        /// shared memory, docs/pingpong.md)
        #[arg(long)]
        peer: Option<u16>,
        /// Rounds
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Vector used both ways
        #[arg(long, default_value_t = 0)]
        vector: u16,
        /// Longest wait for one answer
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// Spin on the eventfd instead of sleeping in poll
        #[arg(long)]
        spin: bool,
    },
    /// Answer pings on a vector until interrupted
    Pong {
        #[arg(long, default_value_t = 0)]
        vector: u16,
    },
}

/// Why `ivvmm client` failed.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot set up SIGINT/SIGTERM handling: {0}")]
    Signals(nix::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Parses `5s`, `500ms`, `250us`, `2m`, `1.5s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 5s, 500ms, 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" => 60.0,
        _ => return Err(format!("'{text}' has an unknown unit; use s, ms, us or m")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("'{text}' is out of range"))
}

/// Parses an offset or length: a size (`64`, `4K`) or hex (`0x40`).
pub fn parse_offset(text: &str) -> Result<u64, String> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => {
            u64::from_str_radix(hex, 16).map_err(|_| format!("'{text}' is not a hex number"))
        }
        None => parse_size(t).map_err(|e| e.to_string()),
    }
}

/// Runs `ivvmm client`.
pub fn run(args: ClientArgs) -> Result<(), Error> {
    let signals = signals_as_events(&[]).map_err(Error::Signals)?;
    let stop = Some(signals.as_fd());

    let mut client = Client::join(
        &args.socket,
        args.vectors,
        args.connect_timeout,
        args.server_uid,
    )?;
    // A peer that truncates the memory must not kill us with SIGBUS.
    crate::shm::survive_truncation().map_err(Error::Signals)?;
    // Joined: from here on, only the client's syscalls.
    let kind = if args.rejoin && args.command.is_none() {
        ThreadKind::ClientRejoin
    } else {
        ThreadKind::Client
    };
    sandbox::install(kind, args.seccomp)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", client.summary())?;
    out.flush()?;
    match args.command {
        None => client.follow(stop, args.rejoin, &mut out)?,
        Some(ClientCommand::Ring { peer, vector }) => {
            client.ring(peer, vector)?;
            writeln!(out, "rang peer={peer} vector={vector}")?;
        }
        Some(ClientCommand::Wait { vector, timeout }) => {
            let count = client.wait(vector, timeout, stop)?;
            writeln!(out, "vector {vector} fired count={count}")?;
        }
        Some(ClientCommand::Dump { offset, len }) => client.dump(offset, len, &mut out)?,
        Some(ClientCommand::Ping {
            peer,
            count,
            vector,
            timeout,
            spin,
        }) => {
            let mode = if spin { WaitMode::Spin } else { WaitMode::Poll };
            let stats = client.ping(peer, count, vector, timeout, mode, stop)?;
            writeln!(out, "{}", stats.summary())?;
        }
        Some(ClientCommand::Pong { vector }) => {
            let answered = client.pong(vector, stop, &mut out)?;
            writeln!(out, "pong answered={answered}")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "5h", "-1s", "1e9999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offsets_parse_as_sizes_or_hex() {
        assert_eq!(parse_offset("64"), Ok(64));
        assert_eq!(parse_offset("4K"), Ok(4096));
        assert_eq!(parse_offset("0x40"), Ok(64));
        assert!(parse_offset("0xzz").is_err());
    }
}
