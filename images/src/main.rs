//! `millrace-image`: builds an OCI image archive of one executable
//! (`make images`), or unpacks one (to look inside). See docs/images.md.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use millrace_images::{build, unpack, Contents, ImageSpec};

#[derive(Parser)]
#[command(
    version,
    about = "OCI images of one executable, without a container engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes an OCI image layout archive (`oci-archive:` to skopeo).
    Build(BuildArgs),
    /// Unpacks an archive's image into a directory and prints its run
    /// configuration.
    Unpack { archive: PathBuf, rootfs: PathBuf },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The executable: at /usr/local/bin/<name>, the entrypoint, with the
    /// shared libraries `ldd` names.
    #[arg(long)]
    binary: PathBuf,
    /// The image's title (`org.opencontainers.image.title`).
    #[arg(long)]
    title: String,
    #[arg(long, default_value = "")]
    description: String,
    /// The tag: `org.opencontainers.image.version` and the ref name.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    version: String,
    /// The source revision (`git rev-parse HEAD`).
    #[arg(long)]
    revision: Option<String>,
    #[arg(long, default_value = env!("CARGO_PKG_REPOSITORY"))]
    source: String,
    #[arg(long, default_value = env!("CARGO_PKG_LICENSE"))]
    licenses: String,
    /// Creation time, seconds since the epoch (reproducible builds set it
    /// to the commit's time).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    created: u64,
    /// gzip level 1 (the test bed rebuilds its images on every start).
    #[arg(long)]
    fast: bool,
    /// Where the archive goes.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Build(args) => {
            let mut contents = Contents::base()?;
            let entrypoint = contents.executable(&args.binary)?;
            let built = build(&ImageSpec {
                title: args.title,
                description: args.description,
                version: args.version,
                revision: args.revision,
                source: args.source,
                licenses: args.licenses,
                created: args.created,
                entrypoint: vec![entrypoint.to_string_lossy().into_owned()],
                contents,
                fast: args.fast,
            })?;
            if let Some(dir) = args.out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // An unchanged image is left alone (its file time too: the test
            // bed's pod runner unpacks an archive again when it changes).
            if std::fs::read(&args.out).is_ok_and(|old| old == built.archive) {
                println!(
                    "{} {} (unchanged)",
                    args.out.display(),
                    built.manifest_digest
                );
                return Ok(());
            }
            // Written beside and renamed: a reader never sees half an archive.
            let partial = args.out.with_extension("partial");
            std::fs::write(&partial, &built.archive)
                .with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &args.out)?;
            println!("{} {}", args.out.display(), built.manifest_digest);
        }
        Command::Unpack { archive, rootfs } => {
            let run = unpack(&archive, &rootfs)?;
            println!("{run:#?}");
        }
    }
    Ok(())
}
