// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared-memory backends: a POSIX shm name, a memfd, a file path (tmpfs or hugetlbfs), with create/size rules.
