// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm peers [--watch]`: ivvmm's peer-presence extension
//! (docs/ivshmem-presence.md) as the driver exposes it in sysfs
//! (`peers`, `link`, `generation`, `own_id`, `rejoins`, `notify`), and its
//! change events (IVSHMEM_IOC_NOTIFY, then poll + read on the device).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::PeersOpts;
use crate::dev::Device;
use crate::Error;

/// One present peer, as the driver's `peers` file lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub id: u32,
    pub vectors: u32,
}

/// The server link (`PR_LINK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    Lost,
    Rejoined,
    /// A state this tool does not know, as the driver printed it.
    Other,
}

impl Link {
    pub fn parse(s: &str) -> Link {
        match s.trim() {
            "connected" => Link::Connected,
            "lost" => Link::Lost,
            "rejoined" => Link::Rejoined,
            _ => Link::Other,
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Connected => "connected",
            Link::Lost => "lost",
            Link::Rejoined => "rejoined",
            Link::Other => "unknown",
        })
    }
}

/// One consistent view of the extension's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub generation: u32,
    pub link: Link,
    pub own_id: u32,
    pub rejoins: u32,
    pub peers: Vec<Peer>,
}

/// The driver's `peers` file: one `id vectors` line per peer, ids rising.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, String> {
    let mut peers = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = line.split_whitespace();
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
        match (num(w.next()), num(w.next()), w.next()) {
            (Some(id), Some(vectors), None) => peers.push(Peer { id, vectors }),
            _ => return Err(format!("'{line}' is not 'id vectors'")),
        }
    }
    if peers.windows(2).any(|p| p[0].id >= p[1].id) {
        return Err("peer ids are not rising".into());
    }
    Ok(peers)
}

/// `1:2,4:2` (id:vectors), or `none`.
pub fn format_ids(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (i, p) in peers.iter().enumerate() {
        let _ = write!(s, "{}{}:{}", if i > 0 { "," } else { "" }, p.id, p.vectors);
    }
    s
}

/// Ids as `1,4`, or `none`.
fn format_id_list(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The key=value part every `peers:` line shares.
pub fn format_state(p: &Presence) -> String {
    format!(
        "generation={} link={} own_id={} rejoins={} count={} ids={}",
        p.generation,
        p.link,
        p.own_id,
        p.rejoins,
        p.peers.len(),
        format_ids(&p.peers)
    )
}

/// Ids that joined and ids that left from `old` to `new` (a peer whose
/// vector count changed counts as leaving and joining).
pub fn diff(old: &[Peer], new: &[Peer]) -> (Vec<u32>, Vec<u32>) {
    let joined = new
        .iter()
        .filter(|p| !old.contains(p))
        .map(|p| p.id)
        .collect();
    let left = old
        .iter()
        .filter(|p| !new.contains(p))
        .map(|p| p.id)
        .collect();
    (joined, left)
}

/// One change line of `--watch`.
pub fn format_change(old: &Presence, new: &Presence, via: &str) -> String {
    let (joined, left) = diff(&old.peers, &new.peers);
    format!(
        "peers: change {} joined={} left={} via={via}",
        format_state(new),
        format_id_list(&joined),
        format_id_list(&left)
    )
}

/// The driver's sysfs directory for an open device node (by its dev_t,
/// so any name of the node works).
pub fn sysfs_dir(dev: &Device) -> Result<PathBuf, Error> {
    let meta = fs::metadata(dev.path()).map_err(|e| Error::Open(dev.path().to_string(), e))?;
    let rdev = meta.rdev();
    Ok(PathBuf::from(format!(
        "/sys/dev/char/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    )))
}

fn attr(dir: &Path, name: &str) -> Result<String, Error> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|e| Error::Sysfs(path.display().to_string(), e))
}

fn num_attr(dir: &Path, name: &str) -> Result<u32, Error> {
    let text = attr(dir, name)?;
    text.trim().parse().map_err(|_| {
        Error::Sysfs(
            dir.join(name).display().to_string(),
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("'{}' is not a number", text.trim()),
            ),
        )
    })
}

/// Whether the device has the extension: `generation` exists and is not
/// `unsupported` (QEMU, plain devices, or a driver without it).
pub fn supported(dir: &Path) -> bool {
    fs::read_to_string(dir.join("generation")).is_ok_and(|g| g.trim() != "unsupported")
}

/// The vector notifications go to (`notify`): None for `none`.
pub fn notify_vector(dir: &Path) -> Result<Option<u32>, Error> {
    let text = attr(dir, "notify")?;
    Ok(text.trim().parse().ok())
}

/// A consistent snapshot: the generation read before and after the other
/// files is the same (each file alone is consistent in the driver).
pub fn read(dir: &Path) -> Result<Presence, Error> {
    let mut last = None;
    for _ in 0..64 {
        let before = num_attr(dir, "generation")?;
        let peers = match fs::read_to_string(dir.join("peers")) {
            Ok(t) => parse_peers(&t).map_err(|e| {
                Error::Sysfs(
                    dir.join("peers").display().to_string(),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            })?,
            // The generation kept moving under the driver's walk.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(Error::Sysfs(dir.join("peers").display().to_string(), e)),
        };
        let p = Presence {
            generation: before,
            link: Link::parse(&attr(dir, "link")?),
            own_id: num_attr(dir, "own_id")?,
            rejoins: num_attr(dir, "rejoins")?,
            peers,
        };
        if num_attr(dir, "generation")? == before {
            return Ok(p);
        }
        last = Some(p);
    }
    last.ok_or(Error::Timeout(0, "a stable peer generation"))
}

/// `ivshm peers`: the state once. Returns false when unsupported.
pub fn show(dev: &Device) -> Result<bool, Error> {
    let dir = sysfs_dir(dev)?;
    if !supported(&dir) {
        println!(
            "peers: unsupported dev={} (no ivvmm peer-presence extension: QEMU's ivshmem, a plain device, or an older driver)",
            dev.path()
        );
        return Ok(false);
    }
    let p = read(&dir)?;
    for peer in &p.peers {
        println!("peer id={} vectors={}", peer.id, peer.vectors);
    }
    let notify = notify_vector(&dir)?.map_or("none".to_string(), |v| v.to_string());
    println!(
        "peers: ok dev={} {} notify={notify}",
        dev.path(),
        format_state(&p)
    );
    Ok(true)
}

/// SIGINT and SIGTERM as a file descriptor (blocked, read by poll).
struct Signals(std::os::fd::OwnedFd);

impl Signals {
    fn new() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; the calls only write it, and
        // blocking the signals in this single-threaded process lets the
        // signalfd receive them instead of the default action. An ignored
        // signal never reaches a signalfd (a shell ignores SIGINT for
        // background jobs), so both get their default disposition first,
        // which blocking then keeps from running.
        let fd = unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(Signals(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }
}

/// What one wait of the watch loop saw.
enum Woke {
    Signal,
    Device,
    Idle,
}

/// Wait for a signal, for the device (when `device`: its events) or for
/// `timeout` (None: forever).
fn wait(
    dev: &Device,
    sig: &Signals,
    device: bool,
    timeout: Option<Duration>,
) -> Result<Woke, Error> {
    use std::os::fd::AsRawFd;
    let mut fds = [
        libc::pollfd {
            fd: sig.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: dev.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n: libc::nfds_t = if device { 2 } else { 1 };
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    // SAFETY: `fds` is a live array of at least `n` pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Woke::Idle);
        }
        return Err(Error::Epoll(dev.path().to_string(), e));
    }
    if fds[0].revents != 0 {
        return Ok(Woke::Signal);
    }
    if !device || fds[1].revents == 0 {
        return Ok(Woke::Idle);
    }
    if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        return Err(Error::Read(
            dev.path().to_string(),
            io::Error::from_raw_os_error(libc::ENODEV),
        ));
    }
    Ok(Woke::Device)
}

/// `ivshm peers --watch`: the state, then a line per change, until
/// SIGINT/SIGTERM, `--count` changes or `--timeout`.
pub fn watch(dev: &Device, vectors: u32, o: &PeersOpts) -> Result<(), Error> {
    let dir = sysfs_dir(dev)?;
    if !supported(&dir) {
        println!("peers: unsupported dev={}", dev.path());
        return Err(Error::Unsupported(dev.path().to_string()));
    }
    let sig = Signals::new().map_err(|e| Error::Epoll("a signalfd".into(), e))?;
    let interval = o.interval_ms.map(Duration::from_millis);
    let how = match interval {
        Some(i) => format!("notify=none interval_ms={}", i.as_millis()),
        None => {
            let v = dev.notify(o.vector.map_or(-1, i32::from))?;
            format!("notify={v}")
        }
    };
    let via = if interval.is_some() {
        "interval"
    } else {
        "event"
    };
    let mut cur = read(&dir)?;
    println!(
        "peers: watching dev={} {how} {}",
        dev.path(),
        format_state(&cur)
    );
    let deadline = o.timeout_s.map(|s| Instant::now() + Duration::from_secs(s));
    let mut counts = vec![0u64; vectors as usize + 1];
    let mut changes = 0u64;
    let mut backwards = 0u64;
    loop {
        if o.count.is_some_and(|c| changes >= c) {
            break;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::Timeout(o.timeout_s.unwrap_or(0), "peer changes"));
        }
        // Interval mode samples sysfs and never listens to the device;
        // event mode blocks on it (until the deadline, if any).
        let step = match (interval, left) {
            (Some(i), Some(l)) => Some(i.min(l)),
            (i, l) => i.or(l),
        };
        let woke = wait(dev, &sig, interval.is_none(), step)?;
        match woke {
            Woke::Signal => break,
            // Consume the events (vector counts and the change count) so
            // poll blocks again; what changed is read from sysfs.
            Woke::Device => {
                dev.read_counts(&mut counts)?;
            }
            Woke::Idle => {}
        }
        let new = read(&dir)?;
        if new.generation != cur.generation {
            if new.generation < cur.generation {
                backwards += 1;
            }
            println!("{}", format_change(&cur, &new, via));
            changes += 1;
            cur = new;
        }
    }
    println!(
        "peers: ok watched changes={changes} backwards={backwards} {}",
        format_state(&cur)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr(generation: u32, ids: &[(u32, u32)]) -> Presence {
        Presence {
            generation,
            link: Link::Connected,
            own_id: 3,
            rejoins: 0,
            peers: ids
                .iter()
                .map(|&(id, vectors)| Peer { id, vectors })
                .collect(),
        }
    }

    #[test]
    fn the_driver_peers_file_parses() {
        assert_eq!(parse_peers("").unwrap(), vec![]);
        assert_eq!(
            parse_peers("1 2\n4 1\n").unwrap(),
            vec![Peer { id: 1, vectors: 2 }, Peer { id: 4, vectors: 1 }]
        );
        assert!(parse_peers("1\n").is_err());
        assert!(parse_peers("1 2 3\n").is_err());
        assert!(parse_peers("x 2\n").is_err());
        assert!(parse_peers("unsupported\n").is_err());
        assert!(parse_peers("4 1\n1 2\n").is_err(), "ids must rise");
        assert!(parse_peers("1 1\n1 1\n").is_err(), "no id twice");
    }

    #[test]
    fn links_parse_and_print_as_the_driver_names_them() {
        for s in ["connected", "lost", "rejoined"] {
            assert_eq!(Link::parse(&format!("{s}\n")).to_string(), s);
        }
        assert_eq!(Link::parse("unknown(7)\n"), Link::Other);
    }

    #[test]
    fn state_lines_are_key_value() {
        let p = pr(5, &[(1, 2), (4, 2)]);
        assert_eq!(
            format_state(&p),
            "generation=5 link=connected own_id=3 rejoins=0 count=2 ids=1:2,4:2"
        );
        assert_eq!(format_ids(&[]), "none");
    }

    #[test]
    fn changes_name_who_joined_and_who_left() {
        let a = pr(5, &[(1, 2), (4, 2)]);
        let b = pr(6, &[(1, 2), (7, 1)]);
        assert_eq!(diff(&a.peers, &b.peers), (vec![7], vec![4]));
        assert_eq!(
            format_change(&a, &b, "event"),
            "peers: change generation=6 link=connected own_id=3 rejoins=0 count=2 \
             ids=1:2,7:1 joined=7 left=4 via=event"
        );
        let c = pr(7, &[]);
        assert!(format_change(&b, &c, "interval").ends_with("joined=none left=1,7 via=interval"));
        // A peer that came back with other vectors left and joined.
        let d = pr(8, &[(1, 1)]);
        assert_eq!(
            diff(&[Peer { id: 1, vectors: 2 }], &d.peers),
            (vec![1], vec![1])
        );
    }
}
