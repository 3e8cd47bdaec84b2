//! OCI images without a container engine.
//!
//! [`build`] writes a distroless-style image of one executable as an OCI
//! image layout archive (`oci-archive:` to skopeo): the executable, exactly
//! the shared libraries `ldd` names for it, CA certificates, a passwd entry
//! for the non-root user 65532, and nothing else (no shell). Every byte is
//! a function of the inputs and the creation time given: entries sorted,
//! owners, modes and times fixed, gzip without a timestamp, JSON with a
//! fixed key order; so the same inputs give the same digest.
//!
//! [`unpack`] reads such an archive (or any single-platform OCI archive of
//! gzip or plain layers without whiteouts) into a root filesystem and
//! returns the image's run configuration: the test bed's pod runner runs
//! containers from it as a container runtime would.

mod layer;
mod oci;
mod unpack;

pub use layer::{shared_libraries, Contents};
pub use oci::{build, Built, ImageSpec};
pub use unpack::{unpack, RunConfig};
