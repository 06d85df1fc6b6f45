// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ACPI power-management registers of a hardware-reduced platform: the
//! FADT's sleep control and sleep status registers and its reset register,
//! three byte-wide I/O ports (see `layout::ACPI_SLEEP_CONTROL_PORT`).
//!
//! A guest powers off by writing SLP_EN with the `_S5` sleep type to the
//! sleep control register (Linux `poweroff`): the VM stops with status 0. It
//! reboots by writing [`RESET_VALUE`] to the reset register (Linux `reboot`
//! without `reboot=k`): the VM stops with status 0 too, as after an i8042
//! reset. Other sleep states are not offered (the DSDT names only `_S5`);
//! asking for one is logged and ignored.

use std::sync::Arc;

use crate::arch::x86_64::layout::{
    ACPI_RESET_PORT, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};
use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

/// The SLP_TYP value the DSDT's `_S5` package gives for soft-off.
pub const SLP_TYP_S5: u8 = 5;
/// Sleep control register: SLP_TYP in bits 4:2, SLP_EN in bit 5 (ACPI 6.5
/// §4.8.3.7).
pub const SLP_TYP_SHIFT: u8 = 2;
pub const SLP_TYP_MASK: u8 = 0x7 << SLP_TYP_SHIFT;
pub const SLP_EN: u8 = 1 << 5;
/// Sleep status register: WAK_STS (bit 7), write 1 to clear. Nothing here
/// ever wakes, so it always reads 0.
pub const WAK_STS: u8 = 1 << 7;
/// What the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 0x01;

/// Register offsets from the first port.
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = (ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT) as u64;

/// The three registers, inserted on the port bus at
/// `ACPI_SLEEP_CONTROL_PORT` for `ACPI_PM_PORTS_LEN` ports.
pub struct AcpiPm {
    stop: Arc<VmStop>,
    /// Ignored writes so far (logged sparsely: a guest may hammer the ports).
    ignored: u64,
}

impl AcpiPm {
    pub fn new(stop: Arc<VmStop>) -> Self {
        AcpiPm { stop, ignored: 0 }
    }

    fn ignore(&mut self, what: std::fmt::Arguments) {
        self.ignored += 1;
        if crate::logger::worth_logging(self.ignored) {
            log::info!(
                "ACPI power device: {what}; ignored ({} so far)",
                self.ignored
            );
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            SLEEP_CONTROL => {
                if value & SLP_EN == 0 {
                    return; // SLP_TYP without SLP_EN does nothing
                }
                let slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if slp_typ == SLP_TYP_S5 {
                    self.stop.request(StopReason::PowerOff);
                } else {
                    self.ignore(format_args!(
                        "guest asked for sleep type {slp_typ}, but only S5 (type {SLP_TYP_S5}) is offered"
                    ));
                }
            }
            // WAK_STS is write-1-to-clear and never set: nothing to do.
            SLEEP_STATUS => {}
            RESET => {
                if value == RESET_VALUE {
                    self.stop.request(StopReason::Reset);
                } else {
                    self.ignore(format_args!(
                        "reset register written with {value:#x}, not {RESET_VALUE:#x}"
                    ));
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for AcpiPm {
    /// Sleep control reads 0 (SLP_EN is write-only), sleep status reads 0
    /// (no wake event), the reset register reads 0.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Byte registers: a wider access is taken as consecutive byte writes.
    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write_byte(offset + i as u64, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Arc<VmStop>, AcpiPm) {
        let stop = Arc::new(VmStop::new().unwrap());
        (stop.clone(), AcpiPm::new(stop))
    }

    #[test]
    fn slp_en_with_s5_powers_off_with_status_0() {
        let (stop, mut pm) = device();
        // What Linux's acpi_hw_extended_sleep() writes: clear WAK_STS, then
        // SLP_TYP | SLP_EN.
        pm.write(SLEEP_STATUS, &[WAK_STS]);
        assert!(!stop.is_stopping());
        pm.write(SLEEP_CONTROL, &[(SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
        assert_eq!(stop.reason().unwrap().exit_code(), 0);
        assert_eq!((SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN, 0x34);
    }

    #[test]
    fn other_sleep_types_and_missing_slp_en_do_nothing() {
        let (stop, mut pm) = device();
        pm.write(SLEEP_CONTROL, &[SLP_TYP_S5 << SLP_TYP_SHIFT]); // no SLP_EN
        for typ in [0u8, 1, 3, 4, 6, 7] {
            pm.write(SLEEP_CONTROL, &[(typ << SLP_TYP_SHIFT) | SLP_EN]);
        }
        for _ in 0..100 {
            pm.write(SLEEP_CONTROL, &[SLP_EN]); // rate-limited log, no panic
        }
        assert!(!stop.is_stopping());
    }

    #[test]
    fn reset_register_value_resets_and_others_do_not() {
        let (stop, mut pm) = device();
        pm.write(RESET, &[0x06]);
        pm.write(RESET, &[0]);
        assert!(!stop.is_stopping());
        pm.write(RESET, &[RESET_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
        assert_eq!(stop.reason().unwrap().exit_code(), 0);
    }

    #[test]
    fn registers_read_zero_at_any_width() {
        let (stop, mut pm) = device();
        for off in [SLEEP_CONTROL, SLEEP_STATUS, RESET] {
            let mut b = [0xffu8];
            pm.read(off, &mut b);
            assert_eq!(b, [0]);
        }
        let mut w = [0xffu8; 2];
        pm.read(SLEEP_CONTROL, &mut w);
        assert_eq!(w, [0, 0]);
        assert!(!stop.is_stopping());
    }

    #[test]
    fn a_wide_write_is_consecutive_bytes() {
        let (stop, mut pm) = device();
        // 16-bit write at the status register: byte 0 -> status, byte 1 -> reset.
        pm.write(SLEEP_STATUS, &[WAK_STS, RESET_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
    }
}
