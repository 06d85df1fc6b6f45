// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `ivvmm` executable: parse, run, map the outcome to an exit status.

fn main() {
    println!("ivvmm {}", env!("CARGO_PKG_VERSION"));
}
