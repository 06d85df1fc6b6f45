// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The two VMs: KVM objects, the doorbell wiring, and the vCPU run loop
//! (which can describe its vCPU when the watchdog in main.rs sees a stall).

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{
    doorbell_value, setup_vcpu, write_tables, GuestRam, Loop, DOORBELL, EXIT_PORT, GSI, SAMPLES,
    VECTOR,
};
use crate::{ioctl, FloorError};

/// One VM: memory, irqchip, the MSI route bound to `incoming`, the doorbell
/// ioeventfd signalling `outgoing`, and its vCPU in long mode.
pub fn build_vm(
    kvm: &Kvm,
    kind: Loop,
    ping: bool,
    rounds: u32,
    incoming: &EventFd,
    outgoing: &EventFd,
) -> Result<(VmFd, VcpuFd, GuestRam), FloorError> {
    let mem_len = (SAMPLES as usize + 4 * rounds as usize).next_multiple_of(2 << 20);
    let mut ram =
        GuestRam::new(mem_len, libc::MAP_POPULATE).map_err(|e| FloorError::Memory(mem_len, e))?;
    write_tables(&mut ram);
    let vm = kvm.create_vm().map_err(ioctl("create a VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_len as u64,
        userspace_addr: ram.host_addr(),
    };
    // SAFETY: the region is our live mapping of mem_len bytes; it outlives
    // the VM (GuestRam is returned with it and dropped after the VM fd).
    unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("add guest memory"))?;
    vm.create_irq_chip().map_err(ioctl("create the irqchip"))?;
    let mut route = kvm_irq_routing_entry {
        gsi: GSI,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    route.u.msi.address_lo = 0xfee0_0000; // APIC id 0, physical
    route.u.msi.data = VECTOR; // fixed, edge
    let routing = KvmIrqRouting::from_entries(&[route]).map_err(|_| FloorError::Ioctl {
        what: "build the routing table",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vm.set_gsi_routing(&routing)
        .map_err(ioctl("set the MSI route"))?;
    vm.register_irqfd(incoming, GSI)
        .map_err(ioctl("attach the irqfd"))?;
    vm.register_ioevent(
        outgoing,
        &IoEventAddress::Mmio(DOORBELL),
        doorbell_value(ping) as u32,
    )
    .map_err(ioctl("register the doorbell ioeventfd"))?;
    let vcpu = vm.create_vcpu(0).map_err(ioctl("create a vCPU"))?;
    setup_vcpu(&vcpu, kind, ping, rounds)?;
    Ok((vm, vcpu, ram))
}

/// Exits to this process, by kind; a floor run should show only the final `io`.
#[derive(Default, Debug)]
pub struct Exits {
    pub io: u64,
    pub mmio: u64,
    pub other: u64,
    /// KVM_RUN interrupted by the watchdog's signal.
    pub interrupted: u64,
}

/// What the watchdog asks of a vCPU thread, which it then kicks out of
/// KVM_RUN with a signal.
#[derive(Default)]
pub struct Control {
    /// Print the vCPU's state, then run on.
    pub describe: AtomicBool,
    /// Stop with an error.
    pub abort: AtomicBool,
}

fn stopped(vm: &'static str, what: String) -> FloorError {
    FloorError::Vcpu { vm, what }
}

pub fn run_vcpu(name: &'static str, mut vcpu: VcpuFd, ctl: &Control) -> Result<Exits, FloorError> {
    let mut exits = Exits::default();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(EXIT_PORT, _)) => {
                exits.io += 1;
                return Ok(exits);
            }
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => exits.io += 1,
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                exits.mmio += 1;
            }
            Ok(VcpuExit::MmioWrite(..)) => exits.mmio += 1,
            Ok(VcpuExit::Shutdown) => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(stopped(name, format!("triple fault near rip={rip:#x}")));
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return Err(stopped(name, format!("entry failed, reason {reason:#x}")))
            }
            Ok(VcpuExit::InternalError) => return Err(stopped(name, "KVM internal error".into())),
            Ok(_) => exits.other += 1,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exits.interrupted += 1;
                if ctl.describe.swap(false, Ordering::SeqCst) {
                    eprintln!("floor: {name}: {}", describe(&vcpu));
                }
                if ctl.abort.load(Ordering::SeqCst) {
                    return Err(stopped(
                        name,
                        "no progress: gave up (see the state above)".into(),
                    ));
                }
            }
            Err(e) => return Err(stopped(name, format!("KVM_RUN: {e}"))),
        }
    }
}

/// One line: where the vCPU is and what the LAPIC holds, to tell a lost
/// doorbell from an interrupt that is pending but not delivered.
fn describe(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    if let Ok(r) = vcpu.get_regs() {
        s += &format!("rip={:#x} rflags={:#x} ", r.rip, r.rflags);
    }
    if let Ok(m) = vcpu.get_mp_state() {
        s += &format!("mp_state={} ", m.mp_state);
    }
    if let Ok(e) = vcpu.get_vcpu_events() {
        let i = e.interrupt;
        s += &format!(
            "interrupt(injected={} nr={:#x} shadow={}) ",
            i.injected, i.nr, i.shadow
        );
    }
    if let Ok(l) = vcpu.get_lapic() {
        let reg = |off: usize| {
            let b = |i: usize| l.regs[off + i] as u8;
            u32::from_le_bytes([b(0), b(1), b(2), b(3)])
        };
        // IRR and ISR: eight 32-bit words each, 16 bytes apart.
        let bits = |base: usize| -> String {
            let v: Vec<String> = (0..8)
                .filter_map(|w| {
                    let x = reg(base + 16 * w);
                    (x != 0).then(|| format!("{:#x}", x as u64) + &format!("@{}", 32 * w))
                })
                .collect();
            if v.is_empty() {
                "0".into()
            } else {
                v.join(",")
            }
        };
        s += &format!(
            "lapic(svr={:#x} tpr={:#x} ppr={:#x} irr={} isr={})",
            reg(0xf0),
            reg(0x80),
            reg(0xa0),
            bits(0x200),
            bits(0x100)
        );
    }
    s
}
