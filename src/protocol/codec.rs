// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The wire format: each message is an 8-byte little-endian `i64`, optionally
//! carrying one file descriptor as SCM_RIGHTS ancillary data.
//!
//! Receiving copes with what a stream socket and a hostile sender can do:
//! messages split across reads, several fds on one message (the first is kept,
//! the rest closed), fds always received close-on-exec, and EOF.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::stat::SFlag;

/// The protocol version the server sends first (QEMU ≥ 2.5).
pub const PROTOCOL_VERSION: i64 = 0;
/// The value that accompanies the shared-memory fd.
pub const SHM_MESSAGE: i64 = -1;
/// Bytes in one message.
pub const MESSAGE_LEN: usize = 8;
/// The kernel passes at most this many fds in one SCM_RIGHTS message
/// (SCM_MAX_FD); room for all of them means the control data is never
/// truncated, so no received fd can go unnoticed (and leak).
const SCM_MAX_FD: usize = 253;

/// A message arrived whose fd we could not receive: this process holds as
/// many fds as RLIMIT_NOFILE allows. Carried inside an `io::Error` (see
/// [`fds_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdsLost {
    /// The message's value (a peer id, or -1 for the shared memory).
    pub value: i64,
    /// Our soft RLIMIT_NOFILE when it happened.
    pub limit: u64,
}

impl std::fmt::Display for FdsLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "message {} came with a file descriptor this process could not take: it holds as many as its limit allows (RLIMIT_NOFILE {}); raise it (ulimit -n) or use fewer peers or vectors",
            self.value, self.limit
        )
    }
}

impl std::error::Error for FdsLost {}

/// The [`FdsLost`] inside `e`, if that is what `e` is.
pub fn fds_lost(e: &io::Error) -> Option<FdsLost> {
    e.get_ref()?.downcast_ref::<FdsLost>().copied()
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub value: i64,
    pub fd: Option<OwnedFd>,
}

/// What one attempt to receive produced.
#[derive(Debug)]
pub enum Received {
    /// A whole message.
    Message(Message),
    /// Nothing more to read right now (part of a message may be buffered).
    WouldBlock,
    /// The other side closed the connection. `partial` is true if it did so
    /// in the middle of a message.
    Eof { partial: bool },
}

/// Sends the 8-byte encoding of `value` (or, for a resumed partial send,
/// `bytes`) with an optional fd. Never raises SIGPIPE; never blocks.
/// Returns how many bytes went out (a stream socket may take fewer).
pub fn send_raw(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let raw: [RawFd; 1] = [fd.map_or(-1, |f| f.as_raw_fd())];
    let cmsgs: &[ControlMessage<'_>] = if fd.is_some() {
        &[ControlMessage::ScmRights(&raw)]
    } else {
        &[]
    };
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Encodes a message value as it travels.
pub fn encode(value: i64) -> [u8; MESSAGE_LEN] {
    value.to_le_bytes()
}

/// Sends one whole message on a blocking-capable path: retries partial sends
/// and waits (poll) while the socket is full. For tests and simple senders;
/// the server uses its own queue instead.
pub fn send_message(
    sock: BorrowedFd<'_>,
    value: i64,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = encode(value);
    let mut sent = 0;
    let mut fd = fd;
    while sent < MESSAGE_LEN {
        match send_raw(sock, &bytes[sent..], fd) {
            Ok(n) => {
                sent += n;
                // The fd travels with the first byte that went out.
                if n > 0 {
                    fd = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(sock)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn wait_writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reassembles messages from a stream socket, one `read` call at a time.
#[derive(Debug)]
pub struct MessageReader {
    buf: [u8; MESSAGE_LEN],
    filled: usize,
    fd: Option<OwnedFd>,
    cmsg: Vec<u64>,
    /// The message being received came with fds the kernel could not give
    /// us (MSG_CTRUNC with none delivered).
    lost_fd: bool,
    /// Fds that arrived beyond the first of a message and were closed.
    pub extra_fds_closed: u64,
}

impl Default for MessageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReader {
    pub fn new() -> Self {
        MessageReader {
            buf: [0; MESSAGE_LEN],
            filled: 0,
            fd: None,
            cmsg: super::recv::control_buffer(SCM_MAX_FD),
            lost_fd: false,
            extra_fds_closed: 0,
        }
    }

    /// True if part of a message has been received.
    pub fn has_partial(&self) -> bool {
        self.filled > 0 || self.fd.is_some()
    }

    /// Receives (without blocking) until one message is complete, the socket
    /// has nothing more, or the peer closed it. A whole message whose fd the
    /// kernel could not deliver (our RLIMIT_NOFILE is reached) is an error
    /// carrying [`FdsLost`]; the stream stays in step, so reading may go on.
    pub fn read(&mut self, sock: BorrowedFd<'_>) -> io::Result<Received> {
        loop {
            // Never ask for more than the rest of this message, so bytes and
            // fds of the next message stay in the socket.
            let got = match super::recv::recv_with_fds(
                sock,
                &mut self.buf[self.filled..],
                &mut self.cmsg,
            ) {
                Ok(got) => got,
                Err(Errno::EAGAIN) => return Ok(Received::WouldBlock),
                Err(e) => return Err(e.into()),
            };
            let bytes = got.bytes;
            // Truncated with nothing delivered: this message's fd is lost
            // (our fd table is full). With one delivered, only extras we
            // would close anyway are lost: the first fd is the one kept.
            if got.truncated && got.fds.is_empty() && self.fd.is_none() {
                self.lost_fd = true;
            }
            for owned in got.fds {
                if self.fd.is_none() {
                    self.fd = Some(owned);
                } else {
                    self.extra_fds_closed += 1;
                    drop(owned);
                }
            }
            if bytes == 0 {
                let partial = self.has_partial();
                self.filled = 0;
                self.fd = None;
                self.lost_fd = false;
                return Ok(Received::Eof { partial });
            }
            self.filled += bytes;
            if self.filled == MESSAGE_LEN {
                self.filled = 0;
                if std::mem::take(&mut self.lost_fd) {
                    self.fd = None;
                    return Err(io::Error::other(FdsLost {
                        value: i64::from_le_bytes(self.buf),
                        limit: crate::fdlimit::soft_limit(),
                    }));
                }
                return Ok(Received::Message(Message {
                    value: i64::from_le_bytes(self.buf),
                    fd: self.fd.take(),
                }));
            }
        }
    }
}

/// What /proc/self/fd/N says `fd` is (`pipe:[12]`, `/memfd:x (deleted)`...).
pub fn fd_link(fd: BorrowedFd<'_>) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Checks that a doorbell fd a server sent is an eventfd; otherwise says
/// what it is instead ("a pipe", "a socket", "the character device
/// /dev/null"...). Without /proc, fstat still rules out pipes, sockets,
/// devices, directories and files (an eventfd has no file type).
pub fn check_eventfd(fd: BorrowedFd<'_>) -> Result<(), String> {
    match fd_link(fd) {
        Some(link) if link == "anon_inode:[eventfd]" => Ok(()),
        Some(link) => Err(describe_link(fd, &link)),
        None => match file_type(fd) {
            Some(kind) if kind != SFlag::empty() => Err(describe_type(kind).to_string()),
            _ => Ok(()),
        },
    }
}

/// Checks that the memory fd a server sent is something to map: a regular
/// file (tmpfs, a memfd, hugetlbfs); otherwise says what it is instead.
pub fn check_memory_fd(fd: BorrowedFd<'_>) -> Result<(), String> {
    match file_type(fd) {
        Some(SFlag::S_IFREG) => Ok(()),
        _ => Err(match fd_link(fd) {
            Some(link) => describe_link(fd, &link),
            None => file_type(fd)
                .map_or("an fd that cannot be inspected", describe_type)
                .into(),
        }),
    }
}

/// The S_IFMT bits of `fd`; `None` if fstat fails.
fn file_type(fd: BorrowedFd<'_>) -> Option<SFlag> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
}

fn describe_type(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "an anonymous inode",
    }
}

fn describe_link(fd: BorrowedFd<'_>, link: &str) -> String {
    if link.starts_with("pipe:") {
        return "a pipe".into();
    }
    if link.starts_with("socket:") {
        return "a socket".into();
    }
    if let Some(kind) = link.strip_prefix("anon_inode:") {
        let kind = kind.trim_start_matches('[').trim_end_matches(']');
        let name = if kind.ends_with("fd") {
            kind.to_string()
        } else {
            format!("{kind} fd")
        };
        let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        return format!("{article} {name}");
    }
    match file_type(fd) {
        Some(kind) => format!("{} ({link})", describe_type(kind)),
        None => link.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, FromRawFd};
    use std::os::unix::net::UnixStream;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn expect_message(r: &mut MessageReader, s: &UnixStream) -> Message {
        match r.read(s.as_fd()).unwrap() {
            Received::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn values_round_trip_little_endian() {
        let (a, b) = pair();
        let mut r = MessageReader::new();
        for v in [0, 1, -1, 65535, i64::MIN, i64::MAX] {
            send_message(a.as_fd(), v, None).unwrap();
            let m = expect_message(&mut r, &b);
            assert_eq!(m.value, v);
            assert!(m.fd.is_none());
        }
        send_message(a.as_fd(), 0x0102, None).unwrap();
        let mut raw = [0u8; 8];
        (&b).read_exact(&mut raw).unwrap();
        assert_eq!(raw, [2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn fd_arrives_close_on_exec() {
        let (a, b) = pair();
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: efd outlives the borrow.
        let bfd = unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) };
        send_message(a.as_fd(), 7, Some(bfd)).unwrap();
        let m = expect_message(&mut MessageReader::new(), &b);
        assert_eq!(m.value, 7);
        let fd = m.fd.expect("fd");
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        assert_eq!(check_eventfd(fd.as_fd()), Ok(()));
        efd.write(3).unwrap();
        // SAFETY: fd is an eventfd we own.
        let rx = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        assert_eq!(rx.read().unwrap(), 3, "same eventfd on both ends");
    }

    #[test]
    fn partial_messages_are_reassembled() {
        let (a, b) = pair();
        let mut r = MessageReader::new();
        let bytes = encode(-1);
        let efd = EventFd::new(0).unwrap();
        // SAFETY: efd outlives the borrow.
        let bfd = unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) };
        assert_eq!(send_raw(a.as_fd(), &bytes[..3], Some(bfd)).unwrap(), 3);
        assert!(matches!(r.read(b.as_fd()).unwrap(), Received::WouldBlock));
        assert!(r.has_partial());
        assert_eq!(send_raw(a.as_fd(), &bytes[3..], None).unwrap(), 5);
        let m = expect_message(&mut r, &b);
        assert_eq!(m.value, -1);
        assert!(
            m.fd.is_some(),
            "the fd sent with the first part belongs to the message"
        );
        assert!(!r.has_partial());
    }

    #[test]
    fn extra_fds_in_one_message_are_closed_first_kept() {
        let (a, b) = pair();
        let first = EventFd::new(0).unwrap();
        first.write(11).unwrap();
        let (extra_r1, extra_w1) = nix::unistd::pipe().unwrap();
        let (extra_r2, extra_w2) = nix::unistd::pipe().unwrap();
        let fds = [
            first.as_raw_fd(),
            extra_w1.as_raw_fd(),
            extra_w2.as_raw_fd(),
        ];
        let five = encode(5);
        let iov = [IoSlice::new(&five)];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop((extra_w1, extra_w2));
        let mut r = MessageReader::new();
        let m = expect_message(&mut r, &b);
        assert_eq!(r.extra_fds_closed, 2);
        // SAFETY: the kept fd is the eventfd sent first.
        let kept =
            unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(m.fd.unwrap())) };
        assert_eq!(kept.read().unwrap(), 11, "the first fd is the one kept");
        // Every write end is closed now, so the pipes read EOF.
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(&extra_r1, &mut buf), Ok(0));
        assert_eq!(nix::unistd::read(&extra_r2, &mut buf), Ok(0));
    }

    #[test]
    fn eof_is_reported_clean_or_mid_message() {
        let (a, b) = pair();
        let mut r = MessageReader::new();
        send_message(a.as_fd(), 1, None).unwrap();
        drop(a);
        expect_message(&mut r, &b);
        assert!(matches!(
            r.read(b.as_fd()).unwrap(),
            Received::Eof { partial: false }
        ));
        let (a, b) = pair();
        send_raw(a.as_fd(), &[1, 2], None).unwrap();
        drop(a);
        assert!(matches!(
            r.read(b.as_fd()).unwrap(),
            Received::Eof { partial: true }
        ));
    }

    #[test]
    fn doorbell_fds_must_be_eventfds_and_say_what_they_are() {
        let efd = EventFd::new(0).unwrap();
        // SAFETY: efd outlives the borrow.
        let e = unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) };
        assert_eq!(check_eventfd(e), Ok(()));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert_eq!(check_eventfd(r.as_fd()), Err("a pipe".into()));
        let (a, _b) = pair();
        assert_eq!(check_eventfd(a.as_fd()), Err("a socket".into()));
        let null = std::fs::File::open("/dev/null").unwrap();
        let why = check_eventfd(null.as_fd()).unwrap_err();
        assert!(
            why.contains("character device") && why.contains("/dev/null"),
            "{why}"
        );
        let memfd = crate::shm::ShmBackend::memfd(4096, true).unwrap();
        let why = check_eventfd(memfd.as_fd()).unwrap_err();
        assert!(why.contains("regular file"), "{why}");
    }

    #[test]
    fn memory_fds_must_be_regular_files() {
        let memfd = crate::shm::ShmBackend::memfd(4096, true).unwrap();
        assert_eq!(check_memory_fd(memfd.as_fd()), Ok(()));
        let (a, _b) = pair();
        assert_eq!(check_memory_fd(a.as_fd()), Err("a socket".into()));
        let efd = EventFd::new(0).unwrap();
        // SAFETY: efd outlives the borrow.
        let e = unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) };
        assert_eq!(check_memory_fd(e), Err("an eventfd".into()));
    }
}
