// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Bus 0: the host bridge at 00:00.0 and CONFIG_ADDRESS/CONFIG_DATA at 0xcf8/0xcfc.
