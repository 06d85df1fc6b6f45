// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm`: the ivvmm guest tool. Talks to the ivshmem driver
//! (guest/driver) through /dev/ivshmemN. Every command ends with one
//! machine-parseable line on stdout: `<command>: ok key=value ...`
//! (except `mmio`, which prints what busybox devmem would).

mod args;
mod bw;
mod check;
mod dev;
mod mmio;
mod peers;
mod pingpong;
mod rendezvous;
mod stats;
mod waiter;

use std::io;
use std::process::ExitCode;

use args::{Command, USAGE};
use dev::Device;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot open {0}: {1} (is the ivshmem driver loaded? see /sys/class/ivshmem)")]
    Open(String, io::Error),
    #[error("{0} ioctl on {1} failed: {2}")]
    Ioctl(&'static str, String, io::Error),
    #[error("cannot read event counts from {0}: {1}")]
    Read(String, io::Error),
    #[error("epoll on {0} failed: {1}")]
    Epoll(String, io::Error),
    #[error("cannot mmap {0}: {1}")]
    Mmap(String, io::Error),
    #[error("a mapping of {0} bytes does not fit this machine")]
    TooBig(u64),
    #[error("offset {0:#x} is outside the shared memory")]
    OutOfRange(u64),
    #[error("the shared memory is {0} bytes; this needs at least {1}")]
    TooSmall(u64, u64),
    #[error("mismatch at offset {off:#x}: expected {want:#018x}, found {got:#018x}")]
    Mismatch { off: u64, want: u64, got: u64 },
    #[error("{0} has {1} interrupt vectors, so vector {2} cannot be used: pick --vector below {1}, use --poll, or give the device vectors=N")]
    NoVector(String, u32, u16),
    #[error("peer id {0} is not a 16-bit id: does the other side speak docs/pingpong.md?")]
    BadPeer(u64),
    #[error(
        "no reply to round {0}: is pong running in the peer VM and connected to the same server?"
    )]
    NoReply(u64),
    #[error("cannot map {0}: {1} (a PCI resource file, e.g. /sys/bus/pci/devices/0000:00:04.0/resource0?)")]
    Mmio(String, io::Error),
    #[error("timed out after {0} s waiting for {1}")]
    Timeout(u64, &'static str),
    #[error("cannot read {0}: {1}")]
    Sysfs(String, io::Error),
    #[error("{0} has no peer-presence extension (QEMU's ivshmem, a plain device, or an older driver): nothing to watch")]
    Unsupported(String),
}

fn run(a: args::Args) -> Result<(), Error> {
    if a.cmd == Command::Help {
        println!("{USAGE}");
        return Ok(());
    }
    if let Command::Mmio(ref o) = a.cmd {
        if let Some(v) = mmio::access(o)? {
            println!("{}", mmio::format(o.width, v));
        }
        return Ok(());
    }
    let dev = Device::open(&a.dev)?;
    let info = dev.info()?;
    match a.cmd {
        Command::Help | Command::Mmio(_) => {}
        Command::Info => println!(
            "info: ok dev={} size={} position={} vectors={} cache={}",
            a.dev, info.size, info.position, info.vectors, info.cache
        ),
        Command::Check { host: false } => {
            let shm = dev.map(info.size)?;
            let bytes = check::self_check(&shm)?;
            println!("check: ok self bytes={bytes}");
        }
        Command::Check { host: true } => {
            let shm = dev.map(info.size)?;
            check::host_check(&shm)?;
            let fmt = |offs: [u64; 3]| offs.map(|o| o.to_string()).join(",");
            println!(
                "check: ok host verified={} wrote={}",
                fmt(check::host_offsets(info.size)),
                fmt(check::guest_offsets(info.size))
            );
        }
        Command::Bw { size, ms } => {
            let shm = dev.map(info.size)?;
            let size = size.unwrap_or(info.size.min(16 << 20));
            let size = usize::try_from(size).map_err(|_| Error::TooBig(size))?;
            let b = bw::measure(&shm, size, ms);
            println!(
                "bw: ok bytes={} cache={} write_mbps={:.0} read_mbps={:.0}",
                b.bytes, info.cache, b.write_mbps, b.read_mbps
            );
        }
        Command::Ping(ref o) => {
            let r = pingpong::ping(&dev, o)?;
            println!(
                "ping: ok rounds={} mode={} peer={} {} unit=ns",
                o.count, o.mode, r.peer, r.stats
            );
        }
        Command::Hold { secs } => {
            let shm = dev.map(info.size)?;
            println!("hold: mapped bytes={}", info.size);
            // Touch the mapping regularly: once the device is unbound the
            // next access must raise SIGBUS (the driver zapped the mapping).
            let mut sum = 0u64;
            for _ in 0..secs * 10 {
                sum = sum.wrapping_add(shm.read(0)?);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            println!("hold: ok secs={secs} sum={sum:#x}");
        }
        Command::Peers(ref o) if o.watch => peers::watch(&dev, info.vectors, o)?,
        Command::Peers(_) => {
            peers::show(&dev)?;
        }
        Command::Pong(ref o) => {
            let r = pingpong::pong(&dev, o)?;
            println!(
                "pong: ok rounds={} mode={} position={} peer={}",
                r.rounds, o.mode, info.position, r.peer
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let parsed = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ivshm: {e}");
            return ExitCode::from(2);
        }
    };
    match run(parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("ivshm: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
