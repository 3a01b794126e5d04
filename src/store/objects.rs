//! Content-addressed file contents shared by every incident in `backup.dir`: a file's bytes
//! are stored once under their BLAKE3 hash (`objects/ab/cdef...`, 0600, never changed, never
//! hard-linked into the app folder), however many snapshots hold them. Files are streamed,
//! never read whole into memory.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const BUF: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread, reused for every file: a fresh zeroed 256 KiB per file
    /// would cost more than reading a small file.
    static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF]);
}

/// Run `f` with this thread's read buffer.
fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUFFER.with(|b| f(&mut b.borrow_mut()))
}

/// The object folder of one store.
#[derive(Debug, Clone)]
pub struct Objects {
    dir: PathBuf,
}

/// Lowercase hex BLAKE3 of everything `reader` yields, and how many bytes that was.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    with_buffer(|buf| {
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        loop {
            let n = reader.read(buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((hasher.finalize().to_hex().to_string(), total))
    })
}

/// Copy everything from `input` to `out`, hashing it on the way; returns the hash and size.
fn copy_hashing(
    input: &mut impl Read,
    out: &mut impl Write,
    from: &Path,
    to: &Path,
) -> Result<(String, u64)> {
    with_buffer(|buf| {
        let mut hasher = blake3::Hasher::new();
        let mut total = 0u64;
        loop {
            let n = input
                .read(buf)
                .with_context(|| format!("reading {}", from.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", to.display()))?;
            total += n as u64;
        }
        Ok((hasher.finalize().to_hex().to_string(), total))
    })
}

/// Open a file for reading without following a symlink at its last component.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Why copying an object out failed: the object (the incident is broken) or the destination
/// (a full disk, a folder that cannot be written: the incident is fine).
#[derive(Debug)]
pub enum CopyError {
    /// The stored object is missing, of another size, or does not match its hash.
    Object(String),
    /// Writing the copy failed.
    Dest(anyhow::Error),
}

/// Whether `h` is a well-formed object name (64 lowercase hex digits).
pub fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Objects {
    /// The objects under `store_dir/objects`, without touching the disk.
    pub fn at(store_dir: &Path) -> Objects {
        Objects {
            dir: store_dir.join("objects"),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an object lives.
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(&hash[2..])
    }

    #[cfg(test)]
    /// Whether an object is stored (a regular file, not a link).
    pub fn has(&self, hash: &str) -> bool {
        fs::symlink_metadata(self.path(hash)).is_ok_and(|m| m.is_file())
    }

    /// Whether the object `hash` is there with `size` bytes: the cheap check before reusing
    /// it for bytes guard just read (a truncated or replaced object is stored again).
    pub fn has_sized(&self, hash: &str, size: u64) -> bool {
        fs::symlink_metadata(self.path(hash)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    #[cfg(test)]
    /// Copy `src` into the store, hashing what is copied; returns its hash and size. An
    /// object that is already there is kept (same hash, same bytes).
    pub fn store(&self, src: &Path) -> Result<(String, u64)> {
        let mut input = open_nofollow(src).with_context(|| format!("reading {}", src.display()))?;
        self.store_from(&mut input, src)
    }

    /// Copy what `input` reads into the store (see [`Objects::store`]); `src` names it in
    /// errors. An object of that hash with another size (truncated, replaced) is replaced.
    pub fn store_from(&self, input: &mut impl Read, src: &Path) -> Result<(String, u64)> {
        self.put(input, src, false)
    }

    /// Store what `input` reads, replacing an object of that hash whatever it holds: the
    /// repair of a stored copy that no longer matches its name.
    pub fn store_replacing(&self, input: &mut impl Read, src: &Path) -> Result<(String, u64)> {
        self.put(input, src, true)
    }

    fn put(&self, input: &mut impl Read, src: &Path, replace: bool) -> Result<(String, u64)> {
        let tmp_dir = self.dir.join("tmp");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp_dir)
            .with_context(|| format!("creating {}", tmp_dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("obj-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&tmp_dir)
            .with_context(|| format!("creating a temporary object in {}", tmp_dir.display()))?;
        let tmp_path = tmp.path().to_path_buf();
        let (hash, total) = copy_hashing(input, tmp.as_file_mut(), src, &tmp_path)?;
        let dest = self.path(&hash);
        if !replace && self.has_sized(&hash, total) {
            return Ok((hash, total));
        }
        let parent = dest.parent().expect("objects have a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        // Durability comes from one syncfs before the manifest is written, not an fsync per
        // object: 27,000 fsyncs would cost more than the copy.
        tmp.persist(&dest)
            .with_context(|| format!("storing {}", dest.display()))?;
        Ok((hash, total))
    }

    /// Check that an object is a regular file of `size` bytes whose content hashes to `hash`.
    pub fn check(&self, hash: &str, size: u64) -> Result<()> {
        if !valid_hash(hash) {
            bail!("{hash:?} is not an object name guard writes");
        }
        let path = self.path(hash);
        let f = open_nofollow(&path).with_context(|| format!("{} is missing", path.display()))?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if meta.len() != size {
            bail!(
                "{} has {} bytes, the snapshot says {size}",
                path.display(),
                meta.len()
            );
        }
        let (actual, _) = hash_reader(f).with_context(|| format!("reading {}", path.display()))?;
        if actual != hash {
            bail!(
                "{} does not match its hash (corrupted or changed)",
                path.display()
            );
        }
        Ok(())
    }

    #[cfg(test)]
    /// Copy an object of `size` bytes to a new file at `dest` (created exclusively, `mode`),
    /// checking its hash on the way; the caller renames it into place.
    pub fn copy_out(&self, hash: &str, size: u64, dest: &Path, mode: u32) -> Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        match self.copy_into(hash, size, &mut out, dest, mode) {
            Ok(()) => Ok(()),
            Err(CopyError::Object(why)) => {
                let _ = fs::remove_file(dest);
                bail!("{why}")
            }
            Err(CopyError::Dest(e)) => Err(e),
        }
    }

    /// Copy object `hash` into `out` (a new file, created with `mode`), checking its size and
    /// hash as it goes; `dest` names it in errors. A fault of the object is told apart from
    /// one of the destination (a full disk is not a broken incident).
    pub fn copy_into(
        &self,
        hash: &str,
        size: u64,
        out: &mut File,
        dest: &Path,
        mode: u32,
    ) -> Result<(), CopyError> {
        if !valid_hash(hash) {
            return Err(CopyError::Object(format!(
                "{hash:?} is not an object name guard writes"
            )));
        }
        let path = self.path(hash);
        let mut input = open_nofollow(&path)
            .map_err(|e| CopyError::Object(format!("{} is missing: {e}", path.display())))?;
        let meta = input
            .metadata()
            .map_err(|e| CopyError::Object(format!("{}: {e}", path.display())))?;
        if !meta.is_file() || meta.len() != size {
            return Err(CopyError::Object(format!(
                "{} is not a regular file of {size} bytes (corrupted or changed)",
                path.display()
            )));
        }
        let mut hasher = blake3::Hasher::new();
        let copied = with_buffer(|buf| -> std::result::Result<(), CopyError> {
            loop {
                let n = input
                    .read(buf)
                    .map_err(|e| CopyError::Object(format!("reading {}: {e}", path.display())))?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| {
                    CopyError::Dest(
                        anyhow::Error::new(e).context(format!("writing {}", dest.display())),
                    )
                })?;
            }
        });
        copied?;
        if hasher.finalize().to_hex().as_str() != hash {
            return Err(CopyError::Object(format!(
                "{} does not match its hash (corrupted or changed)",
                path.display()
            )));
        }
        // The umask may have narrowed the mode given at creation.
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| {
                CopyError::Dest(
                    anyhow::Error::new(e)
                        .context(format!("setting the mode of {}", dest.display())),
                )
            })?;
        Ok(())
    }

    /// Remove every object not in `keep` (and leftover temporaries). Returns how many objects
    /// and bytes were freed.
    pub fn collect_garbage(&self, keep: &std::collections::HashSet<String>) -> Result<(u64, u64)> {
        let (mut count, mut bytes) = (0u64, 0u64);
        let Ok(fans) = fs::read_dir(&self.dir) else {
            return Ok((0, 0));
        };
        for fan in fans.flatten() {
            let name = fan.file_name().to_string_lossy().into_owned();
            let is_dir = fan.file_type().is_ok_and(|t| t.is_dir());
            if name == "tmp" && is_dir {
                for t in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
                    let _ = fs::remove_file(t.path());
                }
                continue;
            }
            if name.len() != 2 || !is_dir {
                continue;
            }
            for obj in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
                let hash = format!("{name}{}", obj.file_name().to_string_lossy());
                if keep.contains(&hash) {
                    continue;
                }
                let size = obj.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(obj.path())
                    .with_context(|| format!("removing {}", obj.path().display()))?;
                count += 1;
                bytes += size;
            }
        }
        Ok((count, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn same_content_is_stored_once_and_checked() {
        let root = tempfile::tempdir().unwrap();
        let objs = Objects::at(root.path());
        let a = root.path().join("a");
        let b = root.path().join("b");
        fs::write(&a, "same bytes").unwrap();
        fs::write(&b, "same bytes").unwrap();
        let (ha, n) = objs.store(&a).unwrap();
        let (hb, _) = objs.store(&b).unwrap();
        assert_eq!(ha, hb);
        assert_eq!(n, 10);
        assert_eq!(ha, hash_reader(&b"same bytes"[..]).unwrap().0);
        assert_eq!(
            fs::metadata(objs.path(&ha)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        objs.check(&ha, 10).unwrap();
        assert!(objs.check(&ha, 11).is_err());
        // Tampered content is caught by the hash.
        fs::write(objs.path(&ha), "evil bytes").unwrap();
        assert!(
            objs.check(&ha, 10)
                .unwrap_err()
                .to_string()
                .contains("hash")
        );
        let out = root.path().join("out");
        assert!(objs.copy_out(&ha, 10, &out, 0o644).is_err());
        assert!(!out.exists(), "a bad copy is not left behind");
    }

    #[test]
    fn garbage_collection_keeps_what_is_referenced() {
        let root = tempfile::tempdir().unwrap();
        let objs = Objects::at(root.path());
        let f = root.path().join("f");
        fs::write(&f, "one").unwrap();
        let (one, _) = objs.store(&f).unwrap();
        fs::write(&f, "two").unwrap();
        let (two, _) = objs.store(&f).unwrap();
        let keep = [one.clone()].into_iter().collect();
        assert_eq!(objs.collect_garbage(&keep).unwrap(), (1, 3));
        assert!(objs.has(&one) && !objs.has(&two));
    }
}
