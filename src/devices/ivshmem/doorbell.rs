// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Peers, outgoing doorbell ioeventfds, incoming irqfds and masked-vector handling.
