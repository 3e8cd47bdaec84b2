//! Reading an OCI image layout archive into a root filesystem, as a
//! container runtime does before it starts a container.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::oci::{self, Config, Index, Manifest};

/// How the image says its containers run (Kubernetes' `command` replaces
/// `entrypoint`, its `args` replace `cmd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub manifest_digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// `uid`, `uid:gid`, or a name (not resolved here).
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// Unpacks the archive's single image into `rootfs` (which must not exist
/// yet or be empty), checking every blob against its digest.
pub fn unpack(archive: &Path, rootfs: &Path) -> anyhow::Result<RunConfig> {
    let blobs = read_archive(archive)?;
    let json = |name: &str| -> anyhow::Result<&Vec<u8>> {
        blobs
            .get(name)
            .with_context(|| format!("{}: no {name}", archive.display()))
    };
    let index: Index = serde_json::from_slice(json("index.json")?)
        .with_context(|| format!("{}: index.json", archive.display()))?;
    let [descriptor] = &index.manifests[..] else {
        bail!(
            "{}: {} images in index.json; expected exactly one",
            archive.display(),
            index.manifests.len()
        );
    };
    if descriptor.media_type != oci::MANIFEST {
        bail!(
            "{}: the index names a {}, not an image manifest (a multi-platform image?)",
            archive.display(),
            descriptor.media_type
        );
    }
    let blob = |digest: &str| -> anyhow::Result<&Vec<u8>> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("{}: digest {digest} is not sha256", archive.display()))?;
        let bytes = json(&format!("blobs/sha256/{hex}"))?;
        anyhow::ensure!(
            oci::sha256(bytes) == digest,
            "{}: blob {digest} does not match its digest",
            archive.display()
        );
        Ok(bytes)
    };
    let manifest: Manifest = serde_json::from_slice(blob(&descriptor.digest)?)?;
    let config: Config = serde_json::from_slice(blob(&manifest.config.digest)?)?;
    std::fs::create_dir_all(rootfs)?;
    anyhow::ensure!(
        config.rootfs.diff_ids.len() == manifest.layers.len(),
        "{}: {} layers but {} diff_ids in the config",
        archive.display(),
        manifest.layers.len(),
        config.rootfs.diff_ids.len()
    );
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        let bytes = blob(&layer.digest)?;
        anyhow::ensure!(
            bytes.len() as u64 == layer.size,
            "{}: layer {} is {} bytes, its descriptor says {}",
            archive.display(),
            layer.digest,
            bytes.len(),
            layer.size
        );
        let tar = match layer.media_type.as_str() {
            oci::LAYER_GZIP => {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut tar)?;
                tar
            }
            oci::LAYER_TAR => bytes.clone(),
            other => bail!("{}: layer type {other} is not supported", archive.display()),
        };
        anyhow::ensure!(
            oci::sha256(&tar) == *diff_id,
            "{}: layer {} does not match its diff_id {diff_id}",
            archive.display(),
            layer.digest
        );
        extract(&tar[..], rootfs)
            .with_context(|| format!("{}: unpacking layer {}", archive.display(), layer.digest))?;
    }
    let c = config.config;
    Ok(RunConfig {
        manifest_digest: descriptor.digest.clone(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        user: c.user.filter(|u| !u.is_empty()),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        labels: c.labels.unwrap_or_default().into_iter().collect(),
    })
}

/// Every file of the archive by its name.
fn read_archive(archive: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("opening image archive {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        files.insert(name, bytes);
    }
    Ok(files)
}

/// One layer over `rootfs`, owners and modes kept. A whiteout (a file
/// deleted by a later layer) is refused: images built here have one layer.
fn extract(reader: impl Read, rootfs: &Path) -> anyhow::Result<()> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_overwrite(true);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".wh."))
        {
            bail!(
                "{}: whiteouts (layered deletions) are not supported",
                path.display()
            );
        }
        // unpack_in skips paths that would leave rootfs (`..`) and writes
        // through no symlink that points out of it.
        entry.unpack_in(rootfs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Contents, ImageSpec};

    fn spec(created: u64, data: &[u8]) -> ImageSpec {
        let mut contents = Contents::default();
        contents.file("usr/local/bin/tool", 0o755, data.to_vec());
        contents.dir("home/nonroot", 0o755, crate::layer::NONROOT);
        ImageSpec {
            title: "tool".into(),
            description: "a test image".into(),
            version: "1.2.3".into(),
            revision: Some("abc".into()),
            source: "https://example.invalid/tool".into(),
            licenses: "Apache-2.0".into(),
            created,
            entrypoint: vec!["/usr/local/bin/tool".into()],
            contents,
            fast: true,
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_digest_and_other_inputs_another() {
        let a = build(&spec(100, b"one")).unwrap();
        let b = build(&spec(100, b"one")).unwrap();
        assert_eq!(a.archive, b.archive);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_ne!(
            a.manifest_digest,
            build(&spec(101, b"one")).unwrap().manifest_digest
        );
        assert_ne!(
            a.manifest_digest,
            build(&spec(100, b"two")).unwrap().manifest_digest
        );
    }

    #[test]
    fn an_image_unpacks_to_its_files_with_its_run_configuration() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("millrace-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let built = build(&spec(100, b"#!tool")).unwrap();
        let archive = dir.join("tool.oci.tar");
        std::fs::write(&archive, &built.archive).unwrap();
        let rootfs = dir.join("rootfs");
        let run = unpack(&archive, &rootfs).unwrap();
        assert_eq!(run.manifest_digest, built.manifest_digest);
        assert_eq!(run.entrypoint, ["/usr/local/bin/tool"]);
        assert_eq!(run.user.as_deref(), Some("65532:65532"));
        assert_eq!(run.working_dir.as_deref(), Some("/home/nonroot"));
        assert!(run.env.iter().any(|e| e.starts_with("PATH=")));
        assert!(run
            .labels
            .contains(&("org.opencontainers.image.version".into(), "1.2.3".into())));
        let tool = rootfs.join("usr/local/bin/tool");
        assert_eq!(std::fs::read(&tool).unwrap(), b"#!tool");
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let home = std::fs::metadata(rootfs.join("home/nonroot")).unwrap();
        assert_eq!(home.uid(), crate::layer::NONROOT);

        // A corrupted blob is refused, not unpacked.
        let mut bad = built.archive.clone();
        let at = bad
            .windows(14)
            .position(|w| w == b"\"architecture\"")
            .expect("the config blob");
        bad[at + 1] = b'A';
        std::fs::write(&archive, &bad).unwrap();
        let refused = unpack(&archive, &dir.join("bad")).unwrap_err();
        assert!(
            format!("{refused:#}").contains("does not match its digest"),
            "{refused:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
