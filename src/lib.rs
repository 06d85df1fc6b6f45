// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ivvmm: a minimal KVM virtual machine monitor whose device is ivshmem.
//!
//! The binary (`src/main.rs`) is a thin shell around this library so that
//! tests and benchmarks drive exactly the code users run.

// From the top (the command line) down; a module imports only from
// modules below it. At the bottom, used by all: config, shm, stop, logger,
// placement.
pub mod arch;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod devices;
pub mod fdlimit;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod irq;
pub mod logger;
pub mod placement;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod shm;
pub mod stop;
pub mod vcpu;
pub mod vm_ops;
pub mod vmm;
