// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! BAR0: the four 32-bit ivshmem registers (QEMU's ivshmem-spec.rst).
//!
//! | offset | register    | behaviour                                   |
//! |--------|-------------|---------------------------------------------|
//! | 0      | INTRMASK    | read/write                                  |
//! | 4      | INTRSTATUS  | read/write; a read returns it and clears it |
//! | 8      | IVPOSITION  | read-only: our peer id (0 in plain mode)    |
//! | 12     | DOORBELL    | write-only: `(peer << 16) \| vector`        |
//!
//! Only aligned 4-byte accesses reach a register. Other widths, unaligned
//! offsets and the reserved 16..256 read 0 and ignore writes. (QEMU widens
//! a narrow access to the whole register — a 1-byte write at offset 1 sets
//! INTRMASK — which no guest relies on; we keep reserved bytes reserved.)

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 256;
pub const INTRMASK: u64 = 0;
pub const INTRSTATUS: u64 = 4;
pub const IVPOSITION: u64 = 8;
pub const DOORBELL: u64 = 12;

/// The register file; its reset state is all zero. IVPOSITION is not kept
/// here: it is our peer id, which the device's interrupts own (0 in plain
/// mode), handed to [`Registers::read`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registers {
    intrmask: u32,
    intrstatus: u32,
}

impl Registers {
    /// A guest read of `data.len()` bytes at `offset`; IVPOSITION reads
    /// `ivposition`.
    pub fn read(&mut self, offset: u64, data: &mut [u8], ivposition: u16) {
        let value = match (offset, data.len()) {
            (INTRMASK, 4) => self.intrmask,
            (INTRSTATUS, 4) => std::mem::take(&mut self.intrstatus),
            (IVPOSITION, 4) => u32::from(ivposition),
            _ => 0,
        };
        answer(data, value);
    }

    /// A guest write. Returns the value of a doorbell write, which the
    /// caller handles (in plain mode: ignores).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u32> {
        let value = u32::from_le_bytes(data.try_into().ok()?);
        match offset {
            INTRMASK => self.intrmask = value,
            INTRSTATUS => self.intrstatus = value,
            DOORBELL => return Some(value),
            _ => {}
        }
        None
    }
}

/// What a BAR0 read returns: `value` to an aligned 4-byte read (the
/// callers' `value` is 0 for any other), zeros beyond its four bytes.
pub fn answer(data: &mut [u8], value: u32) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

/// Splits a doorbell value into (peer, vector): the spec's 16-bit fields.
/// (QEMU keeps only 8 bits of the vector, so vector 0x100 rings vector 0
/// there; here it rings vector 0x100, which doesn't exist, and is dropped.)
pub fn doorbell_target(value: u32) -> (u16, u16) {
    ((value >> 16) as u16, value as u16)
}

/// The doorbell value that rings `vector` of `peer`: the inverse of
/// [`doorbell_target`].
pub fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (u32::from(peer) << 16) | u32::from(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(r: &mut Registers, off: u64) -> u32 {
        let mut d = [0u8; 4];
        r.read(off, &mut d, 7);
        u32::from_le_bytes(d)
    }

    #[test]
    fn intrmask_reads_back_what_was_written() {
        let mut r = Registers::default();
        assert_eq!(r.write(INTRMASK, &0xdead_beefu32.to_le_bytes()), None);
        assert_eq!(read32(&mut r, INTRMASK), 0xdead_beef);
        assert_eq!(
            read32(&mut r, INTRMASK),
            0xdead_beef,
            "not cleared by reading"
        );
    }

    #[test]
    fn intrstatus_is_cleared_by_a_read() {
        let mut r = Registers::default();
        r.write(INTRSTATUS, &5u32.to_le_bytes());
        assert_eq!(read32(&mut r, INTRSTATUS), 5);
        assert_eq!(read32(&mut r, INTRSTATUS), 0);
    }

    #[test]
    fn ivposition_reads_our_id_and_is_read_only() {
        let mut r = Registers::default();
        assert_eq!(read32(&mut r, IVPOSITION), 7);
        assert_eq!(r.write(IVPOSITION, &99u32.to_le_bytes()), None);
        assert_eq!(r, Registers::default(), "a write changes nothing");
        assert_eq!(read32(&mut r, IVPOSITION), 7);
    }

    #[test]
    fn doorbell_is_write_only_and_returned_to_the_caller() {
        let mut r = Registers::default();
        assert_eq!(
            r.write(DOORBELL, &0x0003_0001u32.to_le_bytes()),
            Some(0x0003_0001)
        );
        assert_eq!(read32(&mut r, DOORBELL), 0);
        assert_eq!(doorbell_target(0x0003_0001), (3, 1));
        assert_eq!(
            doorbell_target(0xffff_0100),
            (0xffff, 0x100),
            "16-bit vector field"
        );
        assert_eq!(doorbell_value(3, 1), 0x0003_0001);
        assert_eq!(doorbell_value(0xffff, 0x100), 0xffff_0100);
    }

    #[test]
    fn narrow_unaligned_and_reserved_accesses_are_inert() {
        let mut r = Registers::default();
        r.write(INTRMASK, &0x1234_5678u32.to_le_bytes());
        r.write(INTRSTATUS, &1u32.to_le_bytes());
        for (off, len) in [
            (0, 1),
            (0, 2),
            (1, 1),
            (2, 2),
            (4, 1),
            (4, 2),
            (8, 8),
            (0x10, 4),
            (0xfc, 4),
            (6, 4),
        ] {
            let mut d = vec![0xaau8; len];
            r.read(off, &mut d, 3);
            assert!(d.iter().all(|&b| b == 0), "read {off:#x}/{len}");
            assert_eq!(
                r.write(off, &vec![0xffu8; len]),
                None,
                "write {off:#x}/{len}"
            );
        }
        assert_eq!(read32(&mut r, INTRMASK), 0x1234_5678);
        assert_eq!(
            read32(&mut r, INTRSTATUS),
            1,
            "narrow reads must not clear it"
        );
        assert_eq!(read32(&mut r, IVPOSITION), 7);
        assert_eq!(r.write(DOORBELL, &[1, 0]), None, "2-byte doorbell ignored");
    }
}
