// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ivvmm: a minimal KVM virtual machine monitor whose device is ivshmem.
//!
//! The binary (`src/main.rs`) is a thin shell around this library so that
//! tests and benchmarks drive exactly the code users run.

pub mod arch;
pub mod bus;
pub mod cli;
pub mod client;
pub mod devices;
pub mod fdlimit;
pub mod irq;
pub mod logger;
pub mod protocol;
pub mod server;
pub mod vcpu;
pub mod vmm;
