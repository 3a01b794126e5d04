//! Real conditions for unit tests that need root to set up: another Unix user, a file system
//! that is full. Both change only the calling test thread (raw `setresuid`/`setresgid`
//! syscalls are per thread on Linux, and `unshare(CLONE_NEWNS)` gives the thread its own
//! mount table), so tests running beside them are not touched. The tests that use them run
//! in the real tier (`--features real-pm2`, as `scripts/test.sh` does, as root) and fail,
//! never pass quietly, when not root.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The unprivileged user tests act as: Debian's `nobody` (65534), a real account on every
/// Debian machine, owning nothing.
pub const NOBODY: u32 = 65534;

/// Fail loudly unless root: these conditions cannot be made otherwise.
pub fn require_root() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test needs root (it acts as another user or mounts a small file system); scripts/test.sh runs it so"
    );
}

/// This thread acts as `uid`/`gid` (no supplementary groups) until dropped; root can come
/// back because the saved user id stays 0.
pub struct AsUser;

/// Switch this thread to `uid`/`gid`.
pub fn as_user(uid: u32, gid: u32) -> AsUser {
    require_root();
    // SAFETY: raw syscalls with plain integer arguments; they change this thread only.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, -1), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, -1), 0);
    }
    AsUser
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // SAFETY: as above; the saved uid 0 allows going back.
        unsafe {
            libc::syscall(libc::SYS_setresuid, 0, 0, -1);
            libc::syscall(libc::SYS_setresgid, 0, 0, -1);
        }
    }
}

/// A tmpfs of `bytes` mounted at `dir` in this thread's own mount table; unmounted when
/// dropped. Nothing outside this thread sees it.
pub struct TinyFs {
    dir: PathBuf,
}

/// Mount a tmpfs of `bytes` at `dir` (which must exist).
pub fn tiny_fs(dir: &Path, bytes: u64) -> TinyFs {
    require_root();
    let c = |s: &[u8]| CString::new(s).unwrap();
    let target = c(dir.as_os_str().as_bytes());
    let opts = c(format!("size={bytes}").as_bytes());
    // SAFETY: plain syscalls with valid C strings that outlive them.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        // Private, so the mount below never propagates to the host's table.
        let root = c(b"/");
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        let tmpfs = c(b"tmpfs");
        assert_eq!(
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                0,
                opts.as_ptr().cast()
            ),
            0,
            "mounting a tmpfs at {}",
            dir.display()
        );
    }
    TinyFs {
        dir: dir.to_path_buf(),
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}
