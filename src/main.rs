// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `ivvmm` executable: parse, run, map the outcome to an exit status.

use std::process::ExitCode;

use clap::Parser;

use ivvmm::cli::{self, Cli, Command};
use ivvmm::stop::StopReason;
use ivvmm::vmm::{terminal, BesideBuild, Vmm};

fn main() -> ExitCode {
    // vCPU 0's thread asks KVM for CPUID (~0.3 ms) while the command line
    // is parsed and the VM built — unless a subcommand is run (a VM flag
    // whose value is "server" or "client" only costs this head start).
    let subcommand = std::env::args_os()
        .skip(1)
        .any(|a| a == "server" || a == "client");
    let beside = (!subcommand).then(BesideBuild::start);
    let cli = Cli::parse();
    // Every peer costs one fd per vector: take all the fds we may have.
    ivvmm::fdlimit::raise_to_hard();
    let code = match cli.command {
        Some(Command::Server(args)) => {
            // The server reports joins and leaves by default; -v adds debug.
            ivvmm::logger::init(1);
            match cli::server::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ivvmm: {e}");
                    1
                }
            }
        }
        Some(Command::Client(args)) => {
            ivvmm::logger::init(cli.verbose);
            match cli::client::run(args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ivvmm: {e}");
                    1
                }
            }
        }
        None => {
            ivvmm::logger::init(cli.verbose);
            run_vm(&cli, beside.unwrap_or_else(BesideBuild::start))
        }
    };
    terminal::restore_now();
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn run_vm(cli: &Cli, beside: BesideBuild) -> i32 {
    let config = match cli.vm.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ivvmm: {e}");
            return 2;
        }
    };
    let vmm = match Vmm::new_beside(&config, beside) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ivvmm: {e}");
            return e.exit_code();
        }
    };
    match vmm.run() {
        Ok(reason) => {
            match &reason {
                StopReason::Fatal(msg) => eprintln!("ivvmm: {msg}"),
                other => log::info!("VM stopped: {}", other.describe()),
            }
            reason.exit_code()
        }
        Err(e) => {
            eprintln!("ivvmm: {e}");
            e.exit_code()
        }
    }
}
