// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! GSI allocation, the KVM routing table (MSI routes), irqfd/ioeventfd helpers.
