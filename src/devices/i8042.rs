// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The i8042 keyboard controller, just enough for its reset line (and the debug exit port).
