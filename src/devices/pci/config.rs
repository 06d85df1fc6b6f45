// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Type-0 configuration space: registers with read-only masks, BAR sizing and moves, the capability list.
