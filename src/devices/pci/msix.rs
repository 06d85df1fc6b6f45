// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! MSI-X: the capability, the vector table and the pending-bit array, with the mask and enable rules.
