//! One writer per delivery log: an exclusive `flock` held for as long as the log is open.
//!
//! Two processes appending to one log interleave and tear its lines, and each sends what the
//! other is sending (a resumed run reads the log once, at its start). `flock` is released by
//! the kernel when the holder exits, however it exits, so a killed run never leaves a stale
//! lock behind to be cleaned up by hand.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::io::AsRawFd as _;

/// Takes the lock on `file` without waiting. `Ok(false)`: another open file holds it.
pub fn try_lock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(error),
        }
    }
}

/// Who holds a lock, for an error message: `process 4242`, or `another process` when
/// `/proc/locks` did not say.
pub fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_owned(),
    }
}

/// The process holding a `flock` on `file`, read from `/proc/locks` (Linux), if it can be found.
pub fn holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// `/proc/locks` lines read `1: FLOCK  ADVISORY  WRITE 4242 08:01:1311 0 EOF`: the pid, then
/// the device (major:minor, hex) and inode of the locked file. Blocked waiters (`->`) are skipped.
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip(1);
        if words.next()? != "FLOCK" {
            return None;
        }
        let pid: u32 = words.nth(2)?.parse().ok()?;
        let mut id = words.next()?.split(':');
        let (maj, min) =
            (u32::from_str_radix(id.next()?, 16).ok()?, u32::from_str_radix(id.next()?, 16).ok()?);
        let inode: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && inode == ino).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_cannot_take_the_lock_and_the_holder_is_named() {
        let dir = std::env::temp_dir().join(format!("volley-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.jsonl");
        std::fs::write(&path, b"").unwrap();
        let first = File::open(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock(&first).unwrap());
        assert!(!try_lock(&second).unwrap(), "one writer at a time, even within a process");
        assert_eq!(holder(&second), Some(std::process::id()));
        drop(first);
        assert!(try_lock(&second).unwrap(), "closing the file releases the lock");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_locks_lines_are_matched_by_device_and_inode() {
        let dev = libc::makedev(8, 1);
        let text = "1: POSIX  ADVISORY  WRITE 11 08:01:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 08:01:77 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 99 08:01:77 0 EOF\n";
        assert_eq!(holder_in(text, dev, 77), Some(4242));
        assert_eq!(holder_in(text, dev, 78), None);
        assert_eq!(holder_in(text, libc::makedev(0xfd, 1), 77), None);
    }
}
