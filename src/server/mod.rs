// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm server`: an ivshmem-server, wire-compatible with QEMU's.
