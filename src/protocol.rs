// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem-server wire format: 8-byte little-endian signed integers, each with an optional SCM_RIGHTS fd.
