//! Files inside app.dir, touched only through descriptors guard opened itself.
//!
//! The app's own user can often write parts of app.dir (`uploads/`, logs, caches) while guard
//! works there as root. A path checked and then used by name can be swapped for a symlink in
//! between. So every open, stat, mkdir, rename, unlink and chmod inside app.dir goes relative
//! to a folder descriptor: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel
//! has it (Linux 5.6), else a walk of `O_NOFOLLOW | O_DIRECTORY` opens, one component at a
//! time. A symlink on any component is refused with `ELOOP`, never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Set once the kernel said it has no openat2: the walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// An open folder that paths are resolved beneath.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Open `dir` (the operator's app.dir, as configured) as the root of later lookups.
    pub fn open(dir: &Path) -> Result<Root> {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {}", dir.display()))?;
        Ok(Root { fd })
    }

    /// A second handle on the same folder (the same inode, not the path looked up again).
    pub fn try_clone(&self) -> std::io::Result<Root> {
        Ok(Root {
            fd: rustix::io::dup(self.fd())?,
        })
    }

    /// The root's own descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open `rel` beneath the root with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are added): no
    /// component may be a symlink or `..`.
    pub fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
        open_beneath(self.fd(), rel, flags, mode)
    }

    /// A file beneath the root, for reading (a FIFO does not block the open).
    pub fn open_file(&self, rel: &Path) -> std::io::Result<File> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// A folder beneath the root (`""` is the root itself).
    pub fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(rustix::io::dup(self.fd())?);
        }
        self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    }

    /// The target of the symlink `rel`, read through its folder opened beneath the root (a
    /// folder on the way swapped for a link is refused, never followed).
    pub fn read_link(&self, rel: &Path) -> std::io::Result<std::path::PathBuf> {
        let (dir, name) = self.parent_of(rel)?;
        let target = rustix::fs::readlinkat(&dir, name.as_os_str(), Vec::new())?;
        Ok(std::path::PathBuf::from(std::ffi::OsString::from_vec(
            target.into_bytes(),
        )))
    }

    /// The folder holding `rel`, opened beneath the root, and `rel`'s last component.
    pub fn parent_of(&self, rel: &Path) -> std::io::Result<(OwnedFd, OsString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.open_dir(parent)?, name.to_os_string()))
    }
}

/// `openat2(dirfd, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or the walk.
pub fn open_beneath(
    dirfd: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> std::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(
            dirfd,
            rel,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // openat2 may fail with EAGAIN when a rename raced it: try once more.
            Err(rustix::io::Errno::AGAIN) => {}
            r => return r.map_err(Into::into),
        }
    }
    walk(dirfd, rel, flags, mode)
}

/// The portable way: each folder opened `O_NOFOLLOW | O_DIRECTORY` from the one before.
fn walk(dirfd: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        })
        .collect::<std::io::Result<_>>()?;
    let Some((last, folders)) = parts.split_last() else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let mut current: Option<OwnedFd> = None;
    for name in folders {
        let at = current.as_ref().map_or(dirfd, |f| f.as_fd());
        let next = rustix::fs::openat(
            at,
            *name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        current = Some(next);
    }
    let at = current.as_ref().map_or(dirfd, |f| f.as_fd());
    Ok(rustix::fs::openat(at, *last, flags, mode)?)
}

/// The type of `name` in folder `dir`, without following a symlink (None: it does not exist).
pub fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove `name` in folder `dir`: a file or symlink is unlinked, a folder emptied through its
/// own descriptor (never through a symlink inside it) and removed.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            empty_dir(sub.as_fd())?;
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

fn empty_dir(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    for n in names {
        remove_at(dir, &n)?;
    }
    Ok(())
}

/// Replace `rel` beneath `root` with `bytes` (permission bits `mode`), atomically: missing
/// folders on its path are created with `mkdirat`, a temporary file is created `O_EXCL` beside
/// it, written, synced and renamed over it, all through descriptors. A symlink on any
/// component of the path is refused, never written through.
pub fn write_file(root: &Root, shown: &Path, rel: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let name = rel
        .file_name()
        .with_context(|| format!("{} has no file name", shown.display()))?;
    let mut dir = root.open_dir(Path::new(""))?;
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            let Component::Normal(part) = c else {
                anyhow::bail!(
                    "{}: not a plain path inside the app folder",
                    shown.display()
                );
            };
            match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(std::io::Error::from(e))
                        .with_context(|| format!("creating the folders of {}", shown.display()));
                }
            }
            dir = rustix::fs::openat(
                &dir,
                part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "{}: a folder on its path is not a real folder (a symlink?): refusing to write through it",
                    shown.display()
                )
            })?;
        }
    }
    let mut rnd = [0u8; 8];
    rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for a temporary file's name")?;
    let tmp = format!(".guard-tmp-{}", hex::encode(rnd));
    let fd = rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("creating a temporary file beside {}", shown.display()))?;
    let mut file = File::from(fd);
    let written = file
        .write_all(bytes)
        .and_then(|()| chmod_fd(file.as_fd(), mode))
        .and_then(|()| file.sync_all())
        .and_then(|()| Ok(rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)?));
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        return Err(e).with_context(|| format!("writing {}", shown.display()));
    }
    let _ = rustix::fs::fsync(&dir);
    Ok(())
}

/// Set the mode of what `fd` is (never a symlink: it was opened `O_NOFOLLOW`).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> std::io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_any_component_is_refused_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let secret = dir.path().join("root-only");
        std::fs::create_dir_all(app.join("uploads/real")).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("secret.txt"), "root's").unwrap();
        std::fs::write(app.join("uploads/real/a.txt"), "mine").unwrap();
        std::os::unix::fs::symlink(&secret, app.join("uploads/zz")).unwrap();
        std::os::unix::fs::symlink(secret.join("secret.txt"), app.join("link.txt")).unwrap();
        let root = Root::open(&app).unwrap();
        assert!(root.open_file(Path::new("uploads/real/a.txt")).is_ok());
        for rel in [
            "uploads/zz/secret.txt",
            "link.txt",
            "../root-only/secret.txt",
        ] {
            assert!(
                root.open_file(Path::new(rel)).is_err(),
                "{rel} was followed"
            );
            assert!(
                walk(
                    root.fd(),
                    Path::new(rel),
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty()
                )
                .is_err(),
                "{rel} was followed by the walk"
            );
        }
        assert!(root.open_dir(Path::new("uploads/zz")).is_err());
        // A link inside the swapped folder is not read either; one in a real folder is.
        std::os::unix::fs::symlink("/etc/shadow", secret.join("l")).unwrap();
        assert!(root.read_link(Path::new("uploads/zz/l")).is_err());
        std::os::unix::fs::symlink("a.txt", app.join("uploads/real/l")).unwrap();
        assert_eq!(
            root.read_link(Path::new("uploads/real/l")).unwrap(),
            Path::new("a.txt")
        );
    }

    #[test]
    fn a_file_is_written_beneath_the_root_and_never_through_a_symlinked_folder() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let outside = dir.path().join("cron.d");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, app.join("config")).unwrap();
        let root = Root::open(&app).unwrap();
        let err = write_file(
            &root,
            &app.join("config/.env"),
            Path::new("config/.env"),
            b"K=v",
            0o600,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a real folder"), "{err:#}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        write_file(
            &root,
            &app.join("deep/er/.env"),
            Path::new("deep/er/.env"),
            b"K=v",
            0o640,
        )
        .unwrap();
        let p = app.join("deep/er/.env");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "K=v");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        std::os::unix::fs::symlink(outside.join("x"), app.join("link.env")).unwrap();
        write_file(
            &root,
            &app.join("link.env"),
            Path::new("link.env"),
            b"new",
            0o600,
        )
        .unwrap();
        assert!(!outside.join("x").exists(), "written through the link");
        assert!(
            std::fs::symlink_metadata(app.join("link.env"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn removing_a_folder_never_follows_a_symlink_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(app.join("dist/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::fs::write(app.join("dist/sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, app.join("dist/link")).unwrap();
        let root = Root::open(&app).unwrap();
        remove_at(root.fd(), OsStr::new("dist")).unwrap();
        assert!(!app.join("dist").exists());
        assert!(outside.join("keep").exists());
    }
}
