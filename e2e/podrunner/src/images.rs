//! The image table: what a container image's name runs on the test bed.
//!
//! There is no registry on the test bed, so an image name selects either an
//! OCI image archive built in this repository (`oci-archive:/path`, made by
//! `millrace-image`: the container runs in the image's unpacked root, as a
//! container runtime would run it) or, as a fallback, a local executable
//! (or any host command) run on the host's filesystem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context};
use millrace_images::RunConfig;

#[derive(Debug, Default)]
pub struct ImageTable {
    executables: HashMap<String, PathBuf>,
    archives: HashMap<String, PathBuf>,
    /// Where archives are unpacked, one directory per image digest.
    unpack_dir: PathBuf,
    /// Archives unpacked so far, with the file's size and time then.
    unpacked: tokio::sync::Mutex<HashMap<PathBuf, (Stamp, Arc<Unpacked>)>>,
}

/// An archive file's size and modification time: a rebuilt one differs.
type Stamp = (u64, SystemTime);

/// An image unpacked on this node: its root filesystem (shared read-only by
/// every container of it) and how it says to run.
#[derive(Debug)]
pub struct Unpacked {
    pub rootfs: PathBuf,
    pub run: RunConfig,
}

impl ImageTable {
    /// Parses `name executable` lines; `#` starts a comment; `${VAR}` expands
    /// from `lookup_var`, and an unset variable is an error naming the line.
    pub fn parse(text: &str, lookup_var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut executables = HashMap::new();
        let mut archives = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(path), None) = (words.next(), words.next(), words.next()) else {
                bail!(
                    "line {}: expected 'image-name executable', got '{raw}'",
                    index + 1
                );
            };
            let path =
                expand_vars(path, &lookup_var).with_context(|| format!("line {}", index + 1))?;
            match path.strip_prefix("oci-archive:") {
                Some(archive) => archives.insert(name.to_string(), PathBuf::from(archive)),
                None => executables.insert(name.to_string(), PathBuf::from(path)),
            };
        }
        Ok(Self {
            executables,
            archives,
            ..Self::default()
        })
    }

    /// The table at `path`; images are unpacked under `unpack_dir`.
    pub fn load(path: &Path, unpack_dir: PathBuf) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading image table {}", path.display()))?;
        let table = Self::parse(&text, |name| std::env::var(name).ok())
            .with_context(|| format!("in {}", path.display()))?;
        Ok(Self {
            unpack_dir,
            ..table
        })
    }

    /// The image unpacked, when the table names an archive for it; unpacked
    /// once per archive content (a rebuilt archive is unpacked again).
    pub async fn unpacked(&self, image: &str) -> anyhow::Result<Option<Arc<Unpacked>>> {
        let Some(archive) = self.archives.get(image_name(image)) else {
            return Ok(None);
        };
        let meta = std::fs::metadata(archive).with_context(|| {
            format!(
                "image '{image}': its archive {} (run `make images`?)",
                archive.display()
            )
        })?;
        let stamp = (meta.len(), meta.modified()?);
        // One unpack at a time: pods of one image start together.
        let mut cache = self.unpacked.lock().await;
        if let Some((seen, unpacked)) = cache.get(archive) {
            if *seen == stamp {
                return Ok(Some(unpacked.clone()));
            }
        }
        let (archive_path, dir) = (archive.clone(), self.unpack_dir.clone());
        let unpacked = tokio::task::spawn_blocking(move || unpack_once(&archive_path, &dir))
            .await?
            .with_context(|| format!("image '{image}'"))?;
        let unpacked = Arc::new(unpacked);
        cache.insert(archive.clone(), (stamp, unpacked.clone()));
        Ok(Some(unpacked))
    }

    /// The argv a container runs, or an error a user can act on.
    ///
    /// `command` replaces the image's entrypoint as in Kubernetes; its first
    /// word is itself looked up in the table so `command: [millrace-runtime]`
    /// finds the repository's binary rather than a stray one on PATH.
    pub fn argv(
        &self,
        image: &str,
        command: &[String],
        args: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut argv: Vec<String> = if command.is_empty() {
            let name = image_name(image);
            let Some(exe) = self.executables.get(name) else {
                bail!(
                    "image '{image}' has no local executable and the container sets no command; \
                     add '{name} /path/to/binary' to the pod runner's image table"
                );
            };
            vec![exe.display().to_string()]
        } else {
            let mut argv = command.to_vec();
            if let Some(exe) = self.executables.get(argv[0].as_str()) {
                argv[0] = exe.display().to_string();
            }
            argv
        };
        argv.extend(args.iter().cloned());
        Ok(argv)
    }
}

/// Unpacks `archive` into a fresh directory under `dir`, then renames it to
/// the image's digest (a digest already unpacked is reused): a crash
/// mid-unpack leaves a partial directory no container ever runs from.
fn unpack_once(archive: &Path, dir: &Path) -> anyhow::Result<Unpacked> {
    let partial = dir.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let run = millrace_images::unpack(archive, &partial.join("rootfs"))?;
    let done = dir.join(run.manifest_digest.replace(':', "-"));
    if done.exists() {
        std::fs::remove_dir_all(&partial)?;
    } else {
        std::fs::rename(&partial, &done)?;
    }
    Ok(Unpacked {
        rootfs: done.join("rootfs"),
        run,
    })
}

/// `registry:5000/org/name:tag@sha256:…` → `name`.
pub fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn expand_vars(input: &str, lookup: &impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 2..].find('}') else {
            bail!("unclosed '${{' in '{input}'")
        };
        let name = &rest[start + 2..start + 2 + len];
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => bail!("'{input}' uses ${{{name}}}, which is not set"),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ImageTable {
        ImageTable::parse(
            "# comment\nmillrace-runtime ${T}/debug/millrace-runtime  # trailing\n\n",
            |v| (v == "T").then(|| "/tgt".to_string()),
        )
        .unwrap()
    }

    #[test]
    fn image_names_drop_registry_tag_and_digest() {
        assert_eq!(
            image_name("ghcr.io/millrace-dev/millrace-runtime:0.1.0"),
            "millrace-runtime"
        );
        assert_eq!(image_name("localhost:5000/x/busybox@sha256:abc"), "busybox");
        assert_eq!(image_name("busybox"), "busybox");
    }

    #[test]
    fn entrypoint_comes_from_the_table_and_args_follow() {
        let argv = table()
            .argv("ghcr.io/x/millrace-runtime:1", &[], &["run".into()])
            .unwrap();
        assert_eq!(argv, ["/tgt/debug/millrace-runtime", "run"]);
    }

    #[test]
    fn command_first_word_is_looked_up_then_left_for_path() {
        let t = table();
        assert_eq!(
            t.argv("any", &["millrace-runtime".into()], &[]).unwrap(),
            ["/tgt/debug/millrace-runtime"]
        );
        assert_eq!(
            t.argv("any", &["sleep".into(), "5".into()], &[]).unwrap(),
            ["sleep", "5"]
        );
    }

    #[test]
    fn unknown_image_without_command_names_the_image() {
        let err = table()
            .argv("nginx:1.27", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'nginx:1.27'") && err.contains("nginx /path/to/binary"),
            "{err}"
        );
    }

    #[test]
    fn an_oci_archive_line_names_an_image_not_an_executable() {
        let t =
            ImageTable::parse("millrace-runtime oci-archive:/img/rt.oci.tar\n", |_| None).unwrap();
        assert_eq!(
            t.archives["millrace-runtime"],
            PathBuf::from("/img/rt.oci.tar")
        );
        assert!(t.executables.is_empty());
    }

    #[test]
    fn unset_variable_and_bad_lines_are_errors() {
        assert!(ImageTable::parse("a ${NOPE}/x", |_| None)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(ImageTable::parse("a b c", |_| None).is_err());
    }
}
