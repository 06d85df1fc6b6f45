// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One `recvmsg(2)` with SCM_RIGHTS that never loses track of a descriptor.
//!
//! When our fd table is full (RLIMIT_NOFILE), the kernel installs as many of
//! a message's fds as fit, drops the rest and sets MSG_CTRUNC. nix refuses to
//! walk control data once MSG_CTRUNC is set, which would leak the ones that
//! *were* installed and leave the process at its limit for good; this walks
//! it (the kernel keeps the headers well-formed, only fewer fds) and reports
//! the truncation, so the caller can say what happened instead of reading a
//! message that lost its fd as one that never had one.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// What one receive produced.
#[derive(Debug)]
pub struct Recv {
    pub bytes: usize,
    /// Every fd the kernel installed for us, in order, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// MSG_CTRUNC: some fds of this message were not delivered.
    pub truncated: bool,
}

/// Control-message space for `max_fds` descriptors, as u64 words so the
/// buffer is aligned for `cmsghdr`.
pub fn control_buffer(max_fds: usize) -> Vec<u64> {
    let payload = max_fds * std::mem::size_of::<libc::c_int>();
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(payload as libc::c_uint) } as usize;
    vec![0u64; space.div_ceil(8)]
}

/// Receives without blocking into `buf`, fds into `control` (from
/// [`control_buffer`]). EINTR is retried; EAGAIN and other errors returned.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
) -> Result<Recv, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(control) as _;
        let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
        // SAFETY: `hdr` points at `iov` (our `buf`) and `control`, both live
        // and writable for the lengths given; the kernel writes within them.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, flags) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        let fds = take_fds(&hdr);
        return Ok(Recv {
            bytes: n as usize,
            fds,
            truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

/// Takes ownership of every SCM_RIGHTS fd in `hdr`'s control data.
fn take_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // usize on glibc, u32 on musl.
    #[allow(clippy::unnecessary_cast)]
    let controllen = hdr.msg_controllen as usize;
    if hdr.msg_control.is_null() || controllen == 0 {
        return fds;
    }
    let start = hdr.msg_control as usize;
    let end = start + controllen;
    // SAFETY: `hdr` was just filled by recvmsg; CMSG_FIRSTHDR only reads it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/NXTHDR return either null or a header that
        // lies inside the msg_controllen bytes the kernel wrote.
        let h = unsafe { std::ptr::read_unaligned(c) };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `c` is a valid header (above); CMSG_DATA is arithmetic.
            let data = unsafe { libc::CMSG_DATA(c) } as usize;
            // Never trust cmsg_len beyond the bytes actually written.
            let len = (c as usize + h.cmsg_len as usize).min(end);
            let count = len.saturating_sub(data) / std::mem::size_of::<libc::c_int>();
            for i in 0..count {
                let at = (data + i * std::mem::size_of::<libc::c_int>()) as *const libc::c_int;
                // SAFETY: `at` is inside the control buffer (bounded by
                // `end` above); the kernel may not align it, hence unaligned.
                let raw = unsafe { std::ptr::read_unaligned(at) };
                if raw >= 0 {
                    // SAFETY: the kernel just installed this fd for us
                    // (SCM_RIGHTS); nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `hdr` and `c` are valid as above; NXTHDR bounds-checks
        // against msg_controllen.
        c = unsafe { libc::CMSG_NXTHDR(hdr, c) };
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_and_bytes_arrive_and_a_small_buffer_reports_truncation() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (_r2, w2) = nix::unistd::pipe().unwrap();
        let iov = [std::io::IoSlice::new(b"12345678")];
        let two = [w1.as_raw_fd(), w2.as_raw_fd()];
        let three = [w1.as_raw_fd(), w2.as_raw_fd(), w1.as_raw_fd()];
        for raw in [&two[..], &three[..]] {
            nix::sys::socket::sendmsg::<()>(
                a.as_raw_fd(),
                &iov,
                &[nix::sys::socket::ControlMessage::ScmRights(raw)],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .unwrap();
        }
        let mut buf = [0u8; 8];
        let mut control = control_buffer(4);
        let got = recv_with_fds(b.as_fd(), &mut buf, &mut control).unwrap();
        assert_eq!((got.bytes, got.fds.len(), got.truncated), (8, 2, false));
        assert_eq!(&buf, b"12345678");
        drop(got);
        // Room for two fds (one, rounded up to the alignment): the third is
        // dropped and that is reported; the two delivered are ours (closed,
        // not leaked, when dropped).
        let mut small = control_buffer(1);
        let got = recv_with_fds(b.as_fd(), &mut buf, &mut small).unwrap();
        assert!(got.truncated);
        assert_eq!(got.fds.len(), 2);
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf, &mut small).unwrap_err(),
            Errno::EAGAIN
        );
        drop(got);
        drop(w1);
        // Every copy of w1 (ours, both received ones) is closed: EOF.
        let mut one = [0u8; 1];
        assert_eq!(nix::unistd::read(&r1, &mut one), Ok(0));
    }
}
