// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Boot-time vCPU state: GDT, identity page tables, segment registers, CPUID, MSRs, FPU, LAPIC.
