// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Builds a VM from a VmConfig and runs its event loop to the end.
