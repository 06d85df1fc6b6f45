// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The VM's flags (`ivvmm --kernel ...`) and their conversion into a [`VmConfig`].

use std::path::PathBuf;

use clap::Args;
use thiserror::Error;

use crate::config::size::{parse_pow2_size, parse_size, SizeError};
use crate::config::{
    IvshmemBacking, SeccompMode, SerialChoice, ShmSource, Trust, VmConfig, DEFAULT_SHM_SIZE,
    MIN_SHM_SIZE,
};
use crate::devices::ivshmem::MAX_VECTORS;

/// What every guest gets on its command line unless `--no-default-cmdline`:
/// the console on COM1, `reboot=k` so a guest reboot resets through the
/// i8042 (which ends the VM), `panic=1` so a panic becomes a reboot, and
/// `pci=conf1` (configuration mechanism #1, there is no MCFG). ACPI stays on:
/// ivvmm gives both ACPI tables and an MP table, and `acpi=off` in
/// `--cmdline` selects the MP table.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=conf1";

#[derive(Args, Debug, Clone, Default)]
pub struct VmArgs {
    /// Guest kernel: a bzImage, an ELF vmlinux, or a PVH ELF.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Extra kernel command-line words, appended to the default
    /// ("console=ttyS0 reboot=k panic=1 pci=conf1"); later words win.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// Use --cmdline alone, without the default words.
    #[arg(long)]
    pub no_default_cmdline: bool,

    /// Guest RAM (K/M/G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub mem: String,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,

    /// Guest serial console: stdio, none, or a file to write it to.
    #[arg(long, value_name = "stdio|none|PATH", default_value = "stdio")]
    pub serial: String,

    /// ivshmem backed by the POSIX shared-memory object NAME (/dev/shm/NAME):
    /// created (0600) if absent; if present, used only if it is ours and not
    /// writable by others, grown if empty, never shrunk.
    #[arg(long, value_name = "NAME", conflicts_with = "shm_path")]
    pub shm: Option<String>,

    /// ivshmem backed by a file (tmpfs, or hugetlbfs such as /dev/hugepages/x);
    /// never followed through a symlink.
    #[arg(long, value_name = "PATH")]
    pub shm_path: Option<PathBuf>,

    /// The existing --shm/--shm-path object is shared on purpose: use it even
    /// if another user owns it or others may write it.
    #[arg(long)]
    pub shm_shared: bool,

    /// Size of the --shm/--shm-path region: a power of two, at least 4K
    /// [default: 4M]. With --server alone: the BAR size, which the server's
    /// memory must cover (default: the server's size).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,

    /// ivshmem-doorbell: join the ivshmem server listening on PATH.
    #[arg(long, value_name = "PATH")]
    pub server: Option<PathBuf>,

    /// The --server may run as (and its socket belong to) this user, besides
    /// us and root: a uid or a user name.
    #[arg(long, value_name = "UID", value_parser = super::parse_uid)]
    pub server_uid: Option<u32>,

    /// MSI-X vectors of the --server device.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vectors: u32,

    /// Never contact the --server again once it is lost (QEMU's behaviour);
    /// by default ivvmm rejoins it when it comes back with the same memory.
    #[arg(long, requires = "server")]
    pub no_rejoin: bool,

    /// Another ivshmem device (repeatable): shm=NAME[,size=S][,shared=on] |
    /// path=FILE[,size=S][,shared=on] |
    /// server=SOCK[,vectors=N][,size=S][,server-uid=UID][,rejoin=on|off].
    /// Each is its own PCI function.
    #[arg(long = "ivshmem", value_name = "SPEC")]
    pub ivshmem: Vec<String>,

    /// Print exit and event counters when the VM stops (also on SIGUSR1).
    #[arg(long)]
    pub stats: bool,

    /// Seccomp sandbox: on (a syscall outside the filters stops the VM,
    /// exit 159), log (allowed, logged by the kernel), off.
    #[arg(long, value_enum, value_name = "on|log|off", default_value = "on")]
    pub seccomp: SeccompMode,
}

/// A flag that can't be turned into a configuration (exit status 2).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no kernel given: pass --kernel PATH (a bzImage, vmlinux or PVH ELF)")]
    NoKernel,
    #[error("--mem: {0}")]
    Mem(SizeError),
    #[error("--mem {0} is too small: give the guest at least 16M")]
    MemTooSmall(String),
    #[error("--size: {0}")]
    ShmSize(SizeError),
    #[error("--cpus 0: a VM needs at least one vCPU; use --cpus 1 or more")]
    NoCpus,
    #[error("--vectors {0}: use 1..={MAX_VECTORS}")]
    Vectors(u32),
    #[error("--ivshmem '{spec}': {why}")]
    Spec { spec: String, why: String },
    #[error("--serial '': give stdio, none, or a file path")]
    EmptySerial,
    #[error("--shm-shared goes with --shm or --shm-path (for --ivshmem use shared=on)")]
    SharedAlone,
    #[error("--server-uid goes with --server (for --ivshmem use server-uid=UID)")]
    ServerUidAlone,
}

/// The smallest guest RAM we accept: room for the boot structures, a small
/// kernel and its page tables.
pub const MIN_MEM: u64 = 16 << 20;

impl VmArgs {
    /// Validates the flags and builds the configuration. Files are not
    /// touched here: that happens when the VM is built.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.clone().ok_or(ConfigError::NoKernel)?;
        let mem_size = parse_size(&self.mem).map_err(ConfigError::Mem)?;
        if mem_size < MIN_MEM {
            return Err(ConfigError::MemTooSmall(self.mem.clone()));
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        let serial = match self.serial.as_str() {
            "stdio" => SerialChoice::Stdio,
            "none" => SerialChoice::None,
            "" => return Err(ConfigError::EmptySerial),
            path => SerialChoice::File(PathBuf::from(path)),
        };
        let mut ivshmem = Vec::new();
        let shorthand_size = || match &self.size {
            Some(text) => shm_size(text),
            None => Ok(DEFAULT_SHM_SIZE),
        };
        if self.shm_shared && self.shm.is_none() && self.shm_path.is_none() {
            return Err(ConfigError::SharedAlone);
        }
        if self.server_uid.is_some() && self.server.is_none() {
            return Err(ConfigError::ServerUidAlone);
        }
        let sources = [
            self.shm.clone().map(ShmSource::Name),
            self.shm_path.clone().map(ShmSource::Path),
        ];
        for source in sources.into_iter().flatten() {
            ivshmem.push(IvshmemBacking::Memory {
                source,
                size: shorthand_size()?,
                trust: Trust::shared_if(self.shm_shared),
            });
        }
        if let Some(socket) = &self.server {
            // --size goes with the shorthand device; with --server alone it
            // is the BAR size the server's memory must cover.
            let size = match &self.size {
                Some(text) if self.shm.is_none() && self.shm_path.is_none() => {
                    Some(shm_size(text)?)
                }
                _ => None,
            };
            ivshmem.push(IvshmemBacking::Server {
                socket: socket.clone(),
                vectors: check_vectors(self.vectors)?,
                size,
                rejoin: !self.no_rejoin,
                server_uid: self.server_uid,
            });
        }
        for spec in &self.ivshmem {
            ivshmem.push(parse_ivshmem_spec(spec)?);
        }
        let cmdline = match (&self.cmdline, self.no_default_cmdline) {
            (Some(extra), false) => format!("{DEFAULT_CMDLINE} {extra}"),
            (Some(only), true) => only.clone(),
            (None, false) => DEFAULT_CMDLINE.to_string(),
            (None, true) => String::new(),
        };
        Ok(VmConfig {
            kernel,
            initrd: self.initrd.clone(),
            cmdline,
            mem_size,
            cpus: self.cpus,
            serial,
            ivshmem,
            stats: self.stats,
            seccomp: self.seccomp,
        })
    }
}

fn shm_size(text: &str) -> Result<u64, ConfigError> {
    parse_pow2_size(text, MIN_SHM_SIZE).map_err(ConfigError::ShmSize)
}

/// `key=on` or `key=off` of an `--ivshmem` spec.
fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: use {key}=on or {key}=off")),
    }
}

fn check_vectors(n: u32) -> Result<u16, ConfigError> {
    match u16::try_from(n) {
        Ok(v) if (1..=MAX_VECTORS).contains(&v) => Ok(v),
        _ => Err(ConfigError::Vectors(n)),
    }
}

/// `shm=NAME[,size=S][,shared=on]`, `path=FILE[,size=S][,shared=on]` or
/// `server=SOCK[,vectors=N][,size=S][,server-uid=UID][,rejoin=on|off]`.
pub fn parse_ivshmem_spec(spec: &str) -> Result<IvshmemBacking, ConfigError> {
    let bad = |why: String| ConfigError::Spec {
        spec: spec.to_string(),
        why,
    };
    let mut kind: Option<(&str, &str)> = None;
    let mut size: Option<u64> = None;
    let mut vectors: Option<u16> = None;
    let mut rejoin: Option<bool> = None;
    let mut shared: Option<bool> = None;
    let mut server_uid: Option<u32> = None;
    for part in spec.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("'{part}' is not key=value")))?;
        match key {
            "shm" | "path" | "server" => {
                if kind.is_some() {
                    return Err(bad("give exactly one of shm=, path=, server=".into()));
                }
                if value.is_empty() {
                    return Err(bad(format!("{key}= needs a value")));
                }
                kind = Some((key, value));
            }
            "size" => {
                let s = parse_pow2_size(value, MIN_SHM_SIZE).map_err(|e| bad(e.to_string()))?;
                size = Some(s);
            }
            "vectors" => {
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad(format!("vectors={value} is not a number")))?;
                vectors = Some(check_vectors(n).map_err(|e| bad(e.to_string()))?);
            }
            "rejoin" => rejoin = Some(on_off(key, value).map_err(bad)?),
            "shared" => shared = Some(on_off(key, value).map_err(bad)?),
            "server-uid" => server_uid = Some(super::parse_uid(value).map_err(bad)?),
            _ => {
                return Err(bad(format!(
                "unknown key '{key}' (known: shm, path, server, size, vectors, shared, server-uid, rejoin)"
            )))
            }
        }
    }
    let memory_only = vectors.is_none() && server_uid.is_none();
    match kind {
        Some(("shm" | "path", _)) if rejoin.is_some() => {
            Err(bad("rejoin= applies to server= only".into()))
        }
        Some((key @ ("shm" | "path"), value)) if memory_only => Ok(IvshmemBacking::Memory {
            source: if key == "shm" {
                ShmSource::Name(value.to_string())
            } else {
                ShmSource::Path(PathBuf::from(value))
            },
            size: size.unwrap_or(DEFAULT_SHM_SIZE),
            trust: Trust::shared_if(shared.unwrap_or(false)),
        }),
        Some(("server", _)) if shared.is_some() => Err(bad(
            "shared= applies to shm= and path= (a server's memory is the server's)".into(),
        )),
        Some(("server", socket)) => Ok(IvshmemBacking::Server {
            socket: PathBuf::from(socket),
            vectors: vectors.unwrap_or(1),
            size,
            rejoin: rejoin.unwrap_or(true),
            server_uid,
        }),
        Some(_) => Err(bad("vectors= and server-uid= apply to server= only".into())),
        None => Err(bad("give one of shm=NAME, path=FILE, server=SOCK".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        vm: VmArgs,
    }

    fn config(args: &[&str]) -> Result<VmConfig, ConfigError> {
        let mut argv = vec!["ivvmm"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).expect("clap parse").vm.to_config()
    }

    #[test]
    fn defaults() {
        let c = config(&["--kernel", "k"]).unwrap();
        assert_eq!(c.mem_size, 256 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.serial, SerialChoice::Stdio);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert!(c.ivshmem.is_empty());
    }

    #[test]
    fn cmdline_appends_to_the_default_unless_told_not_to() {
        let c = config(&["--kernel", "k", "--cmdline", "test=pci quiet"]).unwrap();
        assert_eq!(c.cmdline, format!("{DEFAULT_CMDLINE} test=pci quiet"));
        let c = config(&["--kernel", "k", "--cmdline", "x", "--no-default-cmdline"]).unwrap();
        assert_eq!(c.cmdline, "x");
    }

    #[test]
    fn shm_shorthand_and_sizes() {
        let c = config(&["--kernel", "k", "--shm", "demo", "--size", "64M"]).unwrap();
        assert_eq!(
            c.ivshmem,
            vec![IvshmemBacking::Memory {
                source: ShmSource::Name("demo".into()),
                size: 64 << 20,
                trust: Trust::Ours
            }]
        );
        let c = config(&["--kernel", "k", "--shm", "demo"]).unwrap();
        assert_eq!(
            c.ivshmem,
            vec![IvshmemBacking::Memory {
                source: ShmSource::Name("demo".into()),
                size: 4 << 20,
                trust: Trust::Ours
            }]
        );
        let c = config(&["--kernel", "k", "--shm-path", "/dev/shm/f", "--size", "8G"]).unwrap();
        assert!(
            matches!(&c.ivshmem[0], IvshmemBacking::Memory { source: ShmSource::Path(_), size, .. } if *size == 8 << 30)
        );
    }

    #[test]
    fn bad_sizes_are_usage_errors() {
        for bad in ["3M", "0", "1K", "99999999999999G", "4Q", ""] {
            let e = config(&["--kernel", "k", "--shm", "d", "--size", bad]).unwrap_err();
            assert!(matches!(e, ConfigError::ShmSize(_)), "{bad}: {e}");
        }
        assert!(matches!(
            config(&["--kernel", "k", "--mem", "1M"]),
            Err(ConfigError::MemTooSmall(_))
        ));
        assert!(matches!(
            config(&["--kernel", "k", "--mem", "lots"]),
            Err(ConfigError::Mem(_))
        ));
    }

    #[test]
    fn cpus_zero_and_missing_kernel_are_refused() {
        assert_eq!(
            config(&["--kernel", "k", "--cpus", "0"]),
            Err(ConfigError::NoCpus)
        );
        assert_eq!(config(&[]), Err(ConfigError::NoKernel));
    }

    #[test]
    fn serial_choices() {
        let c = config(&["--kernel", "k", "--serial", "none"]).unwrap();
        assert_eq!(c.serial, SerialChoice::None);
        let c = config(&["--kernel", "k", "--serial", "/tmp/out.log"]).unwrap();
        assert_eq!(c.serial, SerialChoice::File("/tmp/out.log".into()));
    }

    #[test]
    fn server_device_and_its_rules() {
        let c = config(&["--kernel", "k", "--server", "/tmp/s", "--vectors", "4"]).unwrap();
        assert_eq!(
            c.ivshmem,
            vec![IvshmemBacking::Server {
                socket: "/tmp/s".into(),
                vectors: 4,
                size: None,
                server_uid: None,
                rejoin: true,
            }]
        );
        let c = config(&["--kernel", "k", "--server", "/tmp/s", "--size", "8M"]).unwrap();
        assert!(
            matches!(c.ivshmem[0], IvshmemBacking::Server { size: Some(s), .. } if s == 8 << 20)
        );
        assert_eq!(
            config(&["--kernel", "k", "--server", "/tmp/s", "--vectors", "0"]),
            Err(ConfigError::Vectors(0))
        );
    }

    #[test]
    fn repeatable_ivshmem_specs() {
        let c = config(&[
            "--kernel",
            "k",
            "--ivshmem",
            "shm=a,size=1M",
            "--ivshmem",
            "path=/dev/shm/b",
            "--ivshmem",
            "server=/tmp/s,vectors=2",
        ])
        .unwrap();
        assert_eq!(c.ivshmem.len(), 3);
        assert_eq!(
            c.ivshmem[0],
            IvshmemBacking::Memory {
                source: ShmSource::Name("a".into()),
                size: 1 << 20,
                trust: Trust::Ours
            }
        );
        assert!(
            matches!(&c.ivshmem[1], IvshmemBacking::Memory { source: ShmSource::Path(_), size, .. } if *size == 4 << 20)
        );
        assert!(matches!(
            &c.ivshmem[2],
            IvshmemBacking::Server { vectors: 2, .. }
        ));
    }

    #[test]
    fn shared_on_purpose_and_server_uid_are_per_device() {
        let c = config(&["--kernel", "k", "--shm", "lg", "--shm-shared"]).unwrap();
        assert!(matches!(
            &c.ivshmem[0],
            IvshmemBacking::Memory {
                source: ShmSource::Name(_),
                trust: Trust::Shared,
                ..
            }
        ));
        let c = config(&["--kernel", "k", "--shm-path", "/dev/shm/x"]).unwrap();
        assert!(matches!(
            &c.ivshmem[0],
            IvshmemBacking::Memory {
                source: ShmSource::Path(_),
                trust: Trust::Ours,
                ..
            }
        ));
        let c = config(&["--kernel", "k", "--server", "/s", "--server-uid", "65534"]).unwrap();
        assert!(matches!(
            &c.ivshmem[0],
            IvshmemBacking::Server {
                server_uid: Some(65534),
                ..
            }
        ));
        let c = config(&["--kernel", "k", "--server", "/s", "--server-uid", "root"]).unwrap();
        assert!(matches!(
            &c.ivshmem[0],
            IvshmemBacking::Server {
                server_uid: Some(0),
                ..
            }
        ));
        assert_eq!(
            config(&["--kernel", "k", "--shm-shared"]),
            Err(ConfigError::SharedAlone)
        );
        assert_eq!(
            config(&["--kernel", "k", "--server-uid", "1"]),
            Err(ConfigError::ServerUidAlone)
        );
        assert!(matches!(
            parse_ivshmem_spec("path=/dev/shm/lg,shared=on"),
            Ok(IvshmemBacking::Memory {
                source: ShmSource::Path(_),
                trust: Trust::Shared,
                ..
            })
        ));
        assert!(matches!(
            parse_ivshmem_spec("server=/s,server-uid=7,vectors=2"),
            Ok(IvshmemBacking::Server {
                server_uid: Some(7),
                vectors: 2,
                ..
            })
        ));
    }

    #[test]
    fn malformed_specs_name_the_problem() {
        for (spec, needle) in [
            ("shm=a,path=b", "exactly one"),
            ("size=4M", "give one of"),
            ("shm=a,size=3M", "power of two"),
            ("shm=a,vectors=2", "server= only"),
            ("path=a,server-uid=0", "server= only"),
            ("server=s,shared=on", "applies to shm= and path="),
            ("shm=a,shared=yes", "shared=on or shared=off"),
            ("server=s,server-uid=no-such-user-ivvmm", "uid"),
            ("shm=a,colour=red", "unknown key"),
            ("shm", "key=value"),
            ("shm=", "needs a value"),
            ("server=s,vectors=x", "not a number"),
        ] {
            let e = parse_ivshmem_spec(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
