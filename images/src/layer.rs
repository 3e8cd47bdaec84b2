//! An image's one layer: the files it holds, written as a tar archive whose
//! bytes depend only on those files and the creation time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The non-root user the images run as (distroless' `nonroot`).
pub const NONROOT: u32 = 65532;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32, owner: u32 },
    File { mode: u32, data: Vec<u8> },
}

/// A layer's contents by path (relative to `/`, no leading slash). Parents
/// are added as root-owned 0755 directories when the layer is written.
#[derive(Debug, Default, Clone)]
pub struct Contents {
    entries: BTreeMap<String, Entry>,
}

impl Contents {
    /// The base every image starts from: `/etc/passwd` and `/etc/group`
    /// with `root` and `nonroot` (65532), a home for `nonroot`, `/tmp`, and
    /// the host's CA bundle when it has one (Debian's ca-certificates).
    pub fn base() -> anyhow::Result<Self> {
        let mut c = Self::default();
        c.file(
            "etc/passwd",
            0o644,
            format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n").into_bytes(),
        );
        c.file(
            "etc/group",
            0o644,
            format!("root:x:0:\nnonroot:x:{NONROOT}:\n").into_bytes(),
        );
        c.dir("home/nonroot", 0o755, NONROOT);
        c.dir("tmp", 0o1777, 0);
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if bundle.exists() {
            c.copy(bundle, bundle)?;
        }
        Ok(c)
    }

    pub fn dir(&mut self, path: &str, mode: u32, owner: u32) {
        self.entries
            .insert(relative(path), Entry::Dir { mode, owner });
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.entries
            .insert(relative(path), Entry::File { mode, data });
    }

    /// The host file `from` (symlinks followed) at `to` in the image:
    /// 0755 when the host file is executable by anyone, else 0644 (not the
    /// host's bits, which follow the builder's umask and would change the
    /// digest).
    pub fn copy(&mut self, from: &Path, to: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let executable = std::fs::metadata(from)?.permissions().mode() & 0o111 != 0;
        let mode = if executable { 0o755 } else { 0o644 };
        self.file(&to.to_string_lossy(), mode, data);
        Ok(())
    }

    /// `binary` at `/usr/local/bin/<its name>`, with every shared library
    /// `ldd` names for it at the path the dynamic loader looks in.
    pub fn executable(&mut self, binary: &Path) -> anyhow::Result<PathBuf> {
        let name = binary
            .file_name()
            .with_context(|| format!("{} names no file", binary.display()))?;
        let inside = Path::new("/usr/local/bin").join(name);
        self.copy(binary, &inside)?;
        let ldd = std::process::Command::new("ldd")
            .arg(binary)
            .output()
            .context("running ldd (Debian: libc-bin)")?;
        let out = String::from_utf8_lossy(&ldd.stdout);
        // A static executable makes ldd fail, saying so; any other failure
        // would leave the image without its libraries.
        let static_binary = format!("{out}{}", String::from_utf8_lossy(&ldd.stderr))
            .contains("not a dynamic executable");
        if !ldd.status.success() && !static_binary {
            bail!(
                "ldd {} failed: {}",
                binary.display(),
                String::from_utf8_lossy(&ldd.stderr).trim()
            );
        }
        for library in shared_libraries(&out)? {
            self.copy(&library, &library)?;
        }
        Ok(inside)
    }

    /// The layer as an uncompressed tar archive, every entry's time `mtime`.
    pub fn tar(&self, mtime: u64) -> anyhow::Result<Vec<u8>> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                all.entry(p.to_string_lossy().into_owned())
                    .or_insert(Entry::Dir {
                        mode: 0o755,
                        owner: 0,
                    });
                parent = p.parent();
            }
        }
        let mut out = tar::Builder::new(Vec::new());
        // Sorted: a parent ("usr") sorts before its children ("usr/bin").
        for (path, entry) in &all {
            let (kind, mode, owner, data): (_, _, _, &[u8]) = match entry {
                Entry::Dir { mode, owner } => (tar::EntryType::Directory, *mode, *owner, &[]),
                Entry::File { mode, data } => (tar::EntryType::Regular, *mode, 0, data),
            };
            let name = match kind {
                tar::EntryType::Directory => format!("{path}/"),
                _ => path.clone(),
            };
            append(&mut out, &name, (kind, mode, owner, mtime), data)?;
        }
        Ok(out.into_inner()?)
    }
}

/// One tar entry with every header field fixed (no user or group names, no
/// device numbers from the host).
pub(crate) fn append(
    out: &mut tar::Builder<Vec<u8>>,
    name: &str,
    (kind, mode, owner, mtime): (tar::EntryType, u32, u32, u64),
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner.into());
    header.set_gid(owner.into());
    header.set_mtime(mtime);
    header.set_size(data.len() as u64);
    out.append_data(&mut header, name, data)
        .with_context(|| format!("adding {name} to a tar archive"))
}

fn relative(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// The shared libraries in `ldd`'s output: each `name => /path (addr)`, and
/// the loader (`/lib64/ld-linux-x86-64.so.2 (addr)`); the kernel's vDSO has
/// no file. A static executable has none.
pub fn shared_libraries(ldd_output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in ldd_output.lines().map(str::trim) {
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.starts_with("not found") {
                    bail!("ldd: shared library {name} not found");
                }
                rest.split(" (").next().unwrap_or(rest)
            }
            None if line.starts_with('/') => line.split(" (").next().unwrap_or(line),
            None => continue,
        };
        if !path.is_empty() {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader_but_not_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f59)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f59)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f59)\n";
        assert_eq!(
            shared_libraries(out).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(shared_libraries("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        let missing = shared_libraries("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn the_layer_is_the_same_bytes_whatever_order_files_were_added_in() {
        let mut a = Contents::default();
        a.file("/usr/local/bin/x", 0o755, b"x".to_vec());
        a.file("etc/passwd", 0o644, b"p".to_vec());
        let mut b = Contents::default();
        b.file("etc/passwd", 0o644, b"p".to_vec());
        b.file("usr/local/bin/x", 0o755, b"x".to_vec());
        assert_eq!(a.tar(7).unwrap(), b.tar(7).unwrap());
        assert_ne!(a.tar(7).unwrap(), a.tar(8).unwrap());

        let mut names = Vec::new();
        let tar = a.tar(7).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            names.push(e.path().unwrap().to_string_lossy().into_owned());
            assert_eq!(e.header().mtime().unwrap(), 7);
        }
        assert_eq!(
            names,
            [
                "etc/",
                "etc/passwd",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/x"
            ]
        );
    }
}
