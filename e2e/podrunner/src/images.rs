//! The image table: which local executable stands in for a container image.
//!
//! There is no container runtime on the test bed, so an image is only a name
//! that selects a binary built in this repository (or any host command).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[derive(Debug, Default, Clone)]
pub struct ImageTable {
    executables: HashMap<String, PathBuf>,
}

impl ImageTable {
    /// Parses `name executable` lines; `#` starts a comment; `${VAR}` expands
    /// from `lookup_var`, and an unset variable is an error naming the line.
    pub fn parse(text: &str, lookup_var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut executables = HashMap::new();
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
            executables.insert(name.to_string(), PathBuf::from(path));
        }
        Ok(Self { executables })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading image table {}", path.display()))?;
        Self::parse(&text, |name| std::env::var(name).ok())
            .with_context(|| format!("in {}", path.display()))
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
    fn unset_variable_and_bad_lines_are_errors() {
        assert!(ImageTable::parse("a ${NOPE}/x", |_| None)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(ImageTable::parse("a b c", |_| None).is_err());
    }
}
