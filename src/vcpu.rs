// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vCPU threads: the KVM_RUN loop, exit dispatch to the buses, per-exit counters.
