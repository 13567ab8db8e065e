//! Files the agent writes where tasks also live (docs/trust-model.md). Tasks are
//! untrusted and may plant symlinks wherever they can write, so below a directory the admin
//! chose (`run_dir`, `data_dir`) nothing is opened by path: each directory is opened from
//! its parent's descriptor with `O_NOFOLLOW`, owners and modes change through descriptors,
//! and files are created `O_EXCL|O_NOFOLLOW` and renamed within their directory.

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// An open directory; everything below it is reached through its descriptor.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Dir {
    /// A directory the admin chose, created (0700) if missing: its path is followed as
    /// written, since only root can change it.
    pub fn trusted(path: &Path) -> io::Result<Dir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory `name` inside this one, created with `mode` if missing, never reached
    /// through a symlink: a link or a file where it should be is removed first (a task may
    /// have planted it, in a directory it owned before).
    pub fn sub(&self, name: &str, mode: u32) -> io::Result<Dir> {
        match self.open_sub(name, mode) {
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io_err)?;
                log::warn!(
                    "removed {}: it was not a directory",
                    self.path.join(name).display()
                );
                self.open_sub(name, mode).map_err(io_err)
            }
            other => other.map_err(io_err),
        }
    }

    fn open_sub(&self, name: &str, mode: u32) -> Result<Dir, Errno> {
        match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Sets the owner and the mode (the mode last: a chown clears set-id bits).
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        fchown(
            self.fd.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(io_err)?;
        fchmod(self.fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_err)
    }

    /// Sets the group of the entry `name` itself (never what a link points to); missing is
    /// fine.
    pub fn set_group_of(&self, name: &str, gid: u32) -> io::Result<()> {
        match nix::unistd::fchownat(
            self.fd.as_fd(),
            name,
            None,
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Adds search permission for group and others (tasks pass through to their own
    /// directories), leaving the rest of the mode as it is.
    pub fn let_others_through(&self) -> io::Result<()> {
        let mode = nix::sys::stat::fstat(self.fd.as_fd())
            .map_err(io_err)?
            .st_mode
            & 0o7777;
        if mode & 0o011 != 0o011 {
            fchmod(self.fd.as_fd(), Mode::from_bits_truncate(mode | 0o011)).map_err(io_err)?;
        }
        Ok(())
    }

    /// Opens `name` for appending, creating it with `mode`; a symlink is refused (ELOOP).
    pub fn append(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_APPEND
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io_err)?;
        Ok(File::from(fd))
    }

    /// Opens `name` to read; a symlink is refused.
    pub fn read(&self, name: &str) -> io::Result<File> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(File::from(fd))
    }

    /// Opens `name` to write without truncating or creating it; a symlink is refused.
    pub fn write_existing(&self, name: &str) -> io::Result<File> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(File::from(fd))
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(self.fd.as_fd(), from, self.fd.as_fd(), to).map_err(io_err)
    }

    /// Removes the file `name` (a link itself, never what it points to); missing is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Replaces `name` with `bytes` atomically: written to a new temporary file (`O_EXCL`,
    /// mode 0600, or 0640 with group `gid` for a task that reads it), synced, renamed over
    /// the old one, and the directory synced, so a power cut leaves the old file or the new
    /// one, never a mix.
    pub fn write_private(&self, name: &str, bytes: &[u8], gid: Option<u32>) -> io::Result<()> {
        self.replace(name, bytes, gid, false)
    }

    /// `write_private`, but readable by everyone (0644): files tasks read and nobody
    /// but root writes, such as a group's resolv.conf.
    pub fn write_readable(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.replace(name, bytes, None, true)
    }

    fn replace(
        &self,
        name: &str,
        bytes: &[u8],
        gid: Option<u32>,
        readable: bool,
    ) -> io::Result<()> {
        let tmp = format!(".{name}.tmp");
        self.remove(&tmp)?;
        let written = self
            .write_new(&tmp, bytes, gid, readable)
            .and_then(|()| self.rename(&tmp, name));
        if written.is_err() {
            // A full disk: leave no partial file to take the space the next try needs.
            let _ = self.remove(&tmp);
        }
        written?;
        nix::unistd::fsync(self.fd.as_fd()).map_err(io_err)
    }

    fn write_new(
        &self,
        name: &str,
        bytes: &[u8],
        gid: Option<u32>,
        readable: bool,
    ) -> io::Result<()> {
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err)?;
        if let Some(gid) = gid {
            fchown(fd.as_fd(), None, Some(Gid::from_raw(gid))).map_err(io_err)?;
            fchmod(fd.as_fd(), Mode::from_bits_truncate(0o640)).map_err(io_err)?;
        }
        if readable {
            fchmod(fd.as_fd(), Mode::from_bits_truncate(0o644)).map_err(io_err)?;
        }
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        file.sync_all()
    }
}

/// Replaces `path` with `bytes` atomically and privately (0600 in a 0700 directory). For
/// directories only root writes (`data_dir`, `run_dir`, a group's `secrets/`).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    Dir::trusted(dir)?.write_private(name, bytes, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_a_planted_link() {
        let root = std::env::temp_dir().join(format!("outpost-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = Dir::trusted(&root).unwrap();
        let target = root.join("target");
        std::fs::write(&target, "keep").unwrap();
        // A link where a directory should be is replaced by the directory.
        std::os::unix::fs::symlink(&target, root.join("secrets")).unwrap();
        let secrets = dir.sub("secrets", 0o700).unwrap();
        assert!(
            std::fs::symlink_metadata(root.join("secrets"))
                .unwrap()
                .is_dir()
        );
        // A link at the temporary file's or the file's name is not written through.
        std::os::unix::fs::symlink(&target, root.join("secrets/.f.tmp")).unwrap();
        std::os::unix::fs::symlink(&target, root.join("secrets/f")).unwrap();
        secrets.write_private("f", b"new", None).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(root.join("secrets/f")).unwrap(),
            "new"
        );
        std::os::unix::fs::symlink(&target, root.join("secrets/log")).unwrap();
        assert_eq!(
            secrets.append("log", 0o640).unwrap_err().raw_os_error(),
            Some(nix::libc::ELOOP)
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
