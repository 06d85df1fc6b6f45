// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Kernel loading (bzImage, ELF vmlinux, PVH ELF), initrd, command line, boot params and e820.
