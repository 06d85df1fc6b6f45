// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The guest physical memory map: every fixed address lives here and nowhere else.
