// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line definitions (clap) and their conversion into configurations.

pub mod client;
pub mod server;
pub mod size;
