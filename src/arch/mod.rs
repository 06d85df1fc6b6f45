// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Architecture-specific VM setup. Only x86_64 is supported.

pub mod x86_64;
