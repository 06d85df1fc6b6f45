// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The i8042 keyboard controller, just enough for its reset line, and the
//! debug exit port that lets a guest end the VM with a status.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

/// The controller's data and command/status ports.
pub const I8042_DATA_PORT: u64 = 0x60;
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// "Pulse output line 0 low": the CPU reset line (`reboot=k`).
const CMD_RESET_CPU: u8 = 0xfe;

/// Port 0x60..=0x64 as one range; only the command port does anything.
/// Reads return 0: output buffer empty, input buffer empty — what Linux's
/// `kb_wait()` polls for before sending the reset command.
pub struct I8042 {
    stop: Arc<VmStop>,
}

impl I8042 {
    pub const BASE: u64 = I8042_DATA_PORT;
    pub const LEN: u64 = I8042_COMMAND_PORT - I8042_DATA_PORT + 1;

    pub fn new(stop: Arc<VmStop>) -> Self {
        I8042 { stop }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_PORT - I8042_DATA_PORT && data.first() == Some(&CMD_RESET_CPU) {
            self.stop.request(StopReason::Reset);
        }
    }
}

/// The debug exit port: a byte written here ends the VM and becomes
/// ivvmm's exit status (QEMU's isa-debug-exit at the same port exits with
/// `(byte << 1) | 1` instead).
pub const EXIT_PORT: u64 = 0xf4;

pub struct ExitPort {
    stop: Arc<VmStop>,
}

impl ExitPort {
    pub fn new(stop: Arc<VmStop>) -> Self {
        ExitPort { stop }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.stop.request(StopReason::ExitPort(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm_and_other_writes_do_not() {
        let stop = Arc::new(VmStop::new().unwrap());
        let mut kbd = I8042::new(stop.clone());
        kbd.write(0, &[0xfe]); // data port: not a command
        kbd.write(4, &[0xd1]);
        assert!(!stop.is_stopping());
        let mut status = [0xffu8];
        kbd.read(4, &mut status);
        assert_eq!(status, [0], "input buffer empty, so kb_wait() ends");
        kbd.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }

    #[test]
    fn exit_port_byte_becomes_the_status() {
        let stop = Arc::new(VmStop::new().unwrap());
        ExitPort::new(stop.clone()).write(0, &[7, 1, 2, 3]);
        assert_eq!(stop.reason().map(|r| r.exit_code()), Some(7));
    }
}
