// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line parsing (by hand: the binary goes into a tiny initramfs).

use crate::Error;

pub const USAGE: &str = "\
usage: ivshm [--dev /dev/ivshmemN] COMMAND [OPTIONS]
  info                       size, position, vectors, memory type
  check [--host]             self check of all of BAR2 (destroys its contents);
                             --host: verify the host's pattern, write ours
  bw [--size BYTES] [--ms N] copy bandwidth into and out of BAR2
  ping [--peer N] [--count K] [--vector V] [--epoll|--poll] [--timeout S]
                             doorbell round trips; prints p50/p90/p99/max ns
  pong [--vector V] [--epoll|--poll] [--timeout S]
                             answer pings until the pinger says stop
                             (waits: wait ioctl by default, --epoll: epoll +
                             read, --poll: spin on shared memory, no doorbell)
  peers [--watch [--vector V | --interval MS] [--count N] [--timeout S]]
                             ivvmm's peer presence: peers (id vectors), link,
                             generation, own id; `unsupported` on QEMU.
                             --watch: a line per change until SIGINT/SIGTERM
                             (or N changes, or S seconds: then it fails);
                             change events on vector V (default: the
                             driver's, the last), or --interval: sample
                             every MS ms with no notification interrupt
  hold [--secs S]            map BAR2 and read it every 100 ms for S seconds
                             (for tests of unbind/rmmod under a live mapping)
  mmio FILE OFFSET [WIDTH [VALUE]]
                             busybox devmem on a PCI resource file (e.g.
                             /sys/bus/pci/devices/0000:00:04.0/resource0),
                             no driver needed: WIDTH 8/16/32/64 (default 32);
                             reads print the value as devmem does (0x%0*X)

ping and pong pair up as docs/pingpong.md says, so the partner may be the
ivvmm test guest or a host client as well as ivshm in another VM.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub dev: String,
    pub cmd: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Info,
    Check { host: bool },
    Bw { size: Option<u64>, ms: u64 },
    Ping(PingOpts),
    Pong(PingOpts),
    Hold { secs: u64 },
    Peers(PeersOpts),
    Mmio(MmioOpts),
    Help,
}

/// `peers [--watch ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeersOpts {
    pub watch: bool,
    /// The notify vector to ask for (None: the driver's choice).
    pub vector: Option<u16>,
    /// Sample sysfs this often instead of asking for notifications.
    pub interval_ms: Option<u64>,
    /// Stop after this many changes.
    pub count: Option<u64>,
    /// Fail after this many seconds.
    pub timeout_s: Option<u64>,
}

/// `mmio FILE OFFSET [WIDTH [VALUE]]`: one access to a PCI resource file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioOpts {
    pub file: String,
    pub offset: u64,
    /// Bits: 8, 16, 32 or 64.
    pub width: u32,
    pub value: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingOpts {
    pub peer: Option<u16>,
    pub count: u64,
    pub vector: u16,
    pub mode: Mode,
    pub timeout_s: u64,
}

/// How ping and pong wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Doorbell, then IVSHMEM_IOC_WAIT.
    Irq,
    /// Doorbell, then epoll_wait + read of the event counts.
    Epoll,
    /// No doorbell: spin on sequence numbers in shared memory.
    Poll,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Irq => "irq",
            Mode::Epoll => "epoll",
            Mode::Poll => "poll",
        })
    }
}

impl Default for PingOpts {
    fn default() -> Self {
        PingOpts {
            peer: None,
            count: 100,
            vector: 0,
            mode: Mode::Irq,
            timeout_s: 60,
        }
    }
}

fn value<T: std::str::FromStr>(
    flag: &str,
    it: &mut impl Iterator<Item = String>,
) -> Result<T, Error> {
    let v = it
        .next()
        .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
    parse_num(&v).ok_or_else(|| Error::Usage(format!("{flag} {v}: not a valid number")))
}

/// Decimal or 0x-hex, with an optional K/M/G (binary) suffix.
fn parse_num<T: std::str::FromStr>(s: &str) -> Option<T> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    n.checked_mul(mult)?.to_string().parse().ok()
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, Error> {
    let mut it = args.into_iter();
    let mut dev = "/dev/ivshmem0".to_string();
    let cmd_name = loop {
        match it.next() {
            Some(a) if a == "--dev" => {
                dev = it
                    .next()
                    .ok_or_else(|| Error::Usage("--dev needs a path".into()))?
            }
            Some(a) => break a,
            None => return Err(Error::Usage("no command given".into())),
        }
    };
    if cmd_name == "mmio" {
        return Ok(Args {
            dev,
            cmd: Command::Mmio(parse_mmio(it)?),
        });
    }
    let mut host = false;
    let (mut size, mut ms) = (None, 500);
    let mut po = PingOpts::default();
    let mut secs = 5;
    let mut pe = PeersOpts::default();
    let peers = cmd_name == "peers";
    while let Some(a) = it.next() {
        match a.as_str() {
            "--watch" if peers => pe.watch = true,
            "--vector" if peers => pe.vector = Some(value(&a, &mut it)?),
            "--interval" if peers => pe.interval_ms = Some(value(&a, &mut it)?),
            "--count" if peers => pe.count = Some(value(&a, &mut it)?),
            "--timeout" if peers => pe.timeout_s = Some(value(&a, &mut it)?),
            "--dev" => {
                dev = it
                    .next()
                    .ok_or_else(|| Error::Usage("--dev needs a path".into()))?
            }
            "--host" if cmd_name == "check" => host = true,
            "--size" if cmd_name == "bw" => size = Some(value(&a, &mut it)?),
            "--ms" if cmd_name == "bw" => ms = value(&a, &mut it)?,
            "--peer" if cmd_name == "ping" => po.peer = Some(value(&a, &mut it)?),
            "--count" if cmd_name == "ping" => po.count = value(&a, &mut it)?,
            "--secs" if cmd_name == "hold" => secs = value(&a, &mut it)?,
            "--vector" => po.vector = value(&a, &mut it)?,
            "--poll" => po.mode = Mode::Poll,
            "--epoll" => po.mode = Mode::Epoll,
            "--timeout" => po.timeout_s = value(&a, &mut it)?,
            _ => return Err(Error::Usage(format!("{cmd_name}: unknown option '{a}'"))),
        }
    }
    let cmd = match cmd_name.as_str() {
        "info" => Command::Info,
        "check" => Command::Check { host },
        "bw" => Command::Bw { size, ms },
        "ping" => Command::Ping(po),
        "pong" => Command::Pong(po),
        "hold" => Command::Hold { secs },
        "peers" => {
            if !pe.watch && pe != PeersOpts::default() {
                return Err(Error::Usage(
                    "peers: --vector, --interval, --count and --timeout go with --watch".into(),
                ));
            }
            if pe.vector.is_some() && pe.interval_ms.is_some() {
                return Err(Error::Usage(
                    "peers: --vector asks for notifications, --interval for none: pick one".into(),
                ));
            }
            if pe.interval_ms == Some(0) {
                return Err(Error::Usage(
                    "peers: --interval must be at least 1 ms".into(),
                ));
            }
            Command::Peers(pe)
        }
        "help" | "--help" | "-h" => Command::Help,
        other => return Err(Error::Usage(format!("unknown command '{other}'"))),
    };
    Ok(Args { dev, cmd })
}

fn parse_mmio(it: impl Iterator<Item = String>) -> Result<MmioOpts, Error> {
    let words: Vec<String> = it.collect();
    let num = |what: &str, w: &String| {
        parse_num::<u64>(w).ok_or_else(|| Error::Usage(format!("mmio: {what} {w}: not a number")))
    };
    let (file, offset) = match words.as_slice() {
        [file, offset, ..] => (file.clone(), num("OFFSET", offset)?),
        _ => return Err(Error::Usage("mmio needs FILE and OFFSET".into())),
    };
    let width = match words.get(2) {
        None => 32,
        Some(w) => match num("WIDTH", w)? {
            w @ (8 | 16 | 32 | 64) => w as u32,
            _ => {
                return Err(Error::Usage(format!(
                    "mmio: WIDTH {w}: use 8, 16, 32 or 64"
                )))
            }
        },
    };
    let value = words.get(3).map(|v| num("VALUE", v)).transpose()?;
    if value.is_some_and(|v| width < 64 && v >> width != 0) {
        return Err(Error::Usage(format!(
            "mmio: the value does not fit in {width} bits"
        )));
    }
    if words.len() > 4 {
        return Err(Error::Usage("mmio: too many arguments".into()));
    }
    Ok(MmioOpts {
        file,
        offset,
        width,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, Error> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn dev_defaults_to_the_first_device() {
        assert_eq!(p("info").unwrap().dev, "/dev/ivshmem0");
        assert_eq!(p("--dev /dev/ivshmem1 info").unwrap().dev, "/dev/ivshmem1");
        assert_eq!(p("info --dev /dev/ivshmem2").unwrap().dev, "/dev/ivshmem2");
    }

    #[test]
    fn ping_options() {
        let a = p("ping --peer 3 --count 1K --vector 1 --poll").unwrap();
        assert_eq!(
            a.cmd,
            Command::Ping(PingOpts {
                peer: Some(3),
                count: 1024,
                vector: 1,
                mode: Mode::Poll,
                timeout_s: 60
            })
        );
    }

    #[test]
    fn wait_modes() {
        let mode = |s| match p(s).unwrap().cmd {
            Command::Ping(o) | Command::Pong(o) => o.mode,
            _ => unreachable!(),
        };
        assert_eq!(mode("ping"), Mode::Irq);
        assert_eq!(mode("pong --epoll"), Mode::Epoll);
        assert_eq!(mode("ping --poll"), Mode::Poll);
        assert_eq!(Mode::Epoll.to_string(), "epoll");
    }

    #[test]
    fn sizes_take_suffixes_and_hex() {
        assert_eq!(
            p("bw --size 4M").unwrap().cmd,
            Command::Bw {
                size: Some(4 << 20),
                ms: 500
            }
        );
        assert_eq!(
            p("bw --size 0x1000").unwrap().cmd,
            Command::Bw {
                size: Some(4096),
                ms: 500
            }
        );
    }

    #[test]
    fn mmio_takes_devmem_arguments() {
        let m = |s| match p(s).unwrap().cmd {
            Command::Mmio(o) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            m("mmio /sys/x/resource0 8"),
            MmioOpts {
                file: "/sys/x/resource0".into(),
                offset: 8,
                width: 32,
                value: None
            }
        );
        let w = m("mmio r2 0x40 64 0xffffffffffffffff");
        assert_eq!((w.offset, w.width, w.value), (0x40, 64, Some(u64::MAX)));
        assert_eq!(m("mmio r 0 8 255").value, Some(255));
        assert!(matches!(p("mmio r 0 8 256"), Err(Error::Usage(_))));
        assert!(matches!(p("mmio r 0 24"), Err(Error::Usage(_))));
        assert!(matches!(p("mmio r"), Err(Error::Usage(_))));
        assert!(matches!(p("mmio r 0 32 1 2"), Err(Error::Usage(_))));
    }

    #[test]
    fn peers_options() {
        let o = |s| match p(s).unwrap().cmd {
            Command::Peers(o) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(o("peers"), PeersOpts::default());
        assert_eq!(
            o("peers --watch --vector 1 --count 2 --timeout 60"),
            PeersOpts {
                watch: true,
                vector: Some(1),
                interval_ms: None,
                count: Some(2),
                timeout_s: Some(60)
            }
        );
        assert_eq!(o("peers --watch --interval 50").interval_ms, Some(50));
        for bad in [
            "peers --count 2",
            "peers --watch --vector 1 --interval 50",
            "peers --watch --interval 0",
            "peers --watch --vector",
            "peers --watch --vector 70000",
            "peers --host",
            "info --watch",
        ] {
            assert!(matches!(p(bad), Err(Error::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        assert!(matches!(p(""), Err(Error::Usage(_))));
        assert!(matches!(p("frobnicate"), Err(Error::Usage(_))));
        assert!(matches!(p("ping --peer"), Err(Error::Usage(_))));
        assert!(matches!(p("ping --peer 70000"), Err(Error::Usage(_))));
        assert!(matches!(p("info --host"), Err(Error::Usage(_))));
        assert!(matches!(p("bw --size 99999999999G"), Err(Error::Usage(_))));
    }
}
