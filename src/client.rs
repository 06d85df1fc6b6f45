// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm client`: a host process that joins an ivshmem server as a peer.
