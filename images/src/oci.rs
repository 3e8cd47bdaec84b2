//! The OCI image layout (image-spec v1.1): config, manifest, index and blobs,
//! in one tar archive. Structs, not maps, so every document's key order is
//! fixed by the code and the digests by the inputs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::layer::{self, Contents, NONROOT};

pub(crate) const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// What an image holds and says about itself.
pub struct ImageSpec {
    /// `org.opencontainers.image.title`, e.g. `millrace-runtime`.
    pub title: String,
    pub description: String,
    /// The tag (`org.opencontainers.image.version` and the index's ref name).
    pub version: String,
    /// The source revision (a git commit), when known.
    pub revision: Option<String>,
    pub source: String,
    pub licenses: String,
    /// Seconds since the epoch: the config's `created`, every file's time.
    pub created: u64,
    pub entrypoint: Vec<String>,
    pub contents: Contents,
    /// gzip level 1 instead of 9: for images rebuilt on every test-bed
    /// start (still reproducible, just larger).
    pub fast: bool,
}

/// A written image: its archive's bytes and its manifest's digest (what a
/// registry names it by).
pub struct Built {
    pub archive: Vec<u8>,
    pub manifest_digest: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The image as an OCI image layout archive.
pub fn build(spec: &ImageSpec) -> anyhow::Result<Built> {
    let created = rfc3339(spec.created);
    let layer_tar = spec.contents.tar(spec.created)?;
    let diff_id = sha256(&layer_tar);
    let level = if spec.fast { 1 } else { 9 };
    // No file name and time 0 in the gzip header: the bytes are the layer's.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(level));
    std::io::Write::write_all(&mut gz, &layer_tar)?;
    let layer = gz.finish()?;

    let labels: BTreeMap<String, String> = [
        ("created", Some(created.clone())),
        ("title", Some(spec.title.clone())),
        ("description", Some(spec.description.clone())),
        ("version", Some(spec.version.clone())),
        ("revision", spec.revision.clone()),
        ("source", Some(spec.source.clone())),
        ("licenses", Some(spec.licenses.clone())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((format!("org.opencontainers.image.{k}"), v?)))
    .filter(|(_, v)| !v.is_empty())
    .collect();
    let config = Config {
        created: Some(created.clone()),
        architecture: architecture().to_string(),
        os: "linux".into(),
        config: ContainerConfig {
            user: Some(format!("{NONROOT}:{NONROOT}")),
            env: Some(vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".into(),
            ]),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: None,
            working_dir: Some("/home/nonroot".into()),
            labels: Some(labels.clone()),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(created),
            created_by: Some("millrace-image build".into()),
        }],
    };
    let config = serde_json::to_vec(&config)?;
    let descriptor = |media_type: &str, bytes: &[u8], annotations| Descriptor {
        media_type: media_type.into(),
        digest: sha256(bytes),
        size: bytes.len() as u64,
        annotations,
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.into()),
        config: descriptor(CONFIG, &config, BTreeMap::new()),
        layers: vec![descriptor(LAYER_GZIP, &layer, BTreeMap::new())],
        annotations: labels,
    };
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_descriptor = descriptor(
        MANIFEST,
        &manifest,
        [(
            "org.opencontainers.image.ref.name".to_string(),
            spec.version.clone(),
        )]
        .into(),
    );
    let manifest_digest = manifest_descriptor.digest.clone();
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: Some(INDEX.into()),
        manifests: vec![manifest_descriptor],
    })?;

    let mut out = tar::Builder::new(Vec::new());
    let file = |out: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        layer::append(
            out,
            name,
            (tar::EntryType::Regular, 0o644, 0, spec.created),
            data,
        )
    };
    file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file(&mut out, "index.json", &index)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        layer::append(
            &mut out,
            dir,
            (tar::EntryType::Directory, 0o755, 0, spec.created),
            &[],
        )?;
    }
    let mut blobs = [&config, &manifest, &layer];
    blobs.sort_by_key(|b| sha256(b));
    for blob in blobs {
        let digest = sha256(blob);
        file(
            &mut out,
            &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            blob,
        )?;
    }
    Ok(Built {
        archive: out.into_inner()?,
        manifest_digest,
    })
}

/// The OCI name of this machine's architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `seconds` since the epoch as RFC 3339 UTC (days to a civil date:
/// Howard Hinnant's algorithm).
fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_690_406), "2026-12-08T00:40:06Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
