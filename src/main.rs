// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `ivvmm` executable: parse, run, map the outcome to an exit status.
//!
//! TEMPORARY (server branch): only the `server` and `client` subcommands, and
//! a minimal stderr logger, until the lead's CLI replaces this file.

use clap::{Parser, Subcommand};
use ivvmm::cli;

#[derive(Debug, Parser)]
#[command(name = "ivvmm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// An ivshmem server, wire-compatible with QEMU's ivshmem-server
    Server(cli::server::ServerArgs),
    /// A host process that joins an ivshmem server as a peer
    Client(cli::client::ClientArgs),
}

/// Writes `ivvmm: LEVEL: message` lines to stderr.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().to_string().to_lowercase();
            eprintln!("ivvmm: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn main() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Server(args) => cli::server::run(args).map_err(Into::into),
        Command::Client(args) => cli::client::run(args).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("ivvmm: error: {e}");
        std::process::exit(1);
    }
}
