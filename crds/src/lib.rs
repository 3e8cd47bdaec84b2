//! The Millrace API: the `StreamApp` custom resource.
//!
//! The resource types arrive with the API issue (#3); this crate holds the
//! names that every other crate agrees on so they are spelled once.

/// API group of every Millrace resource.
pub const GROUP: &str = "millrace.dev";
/// The only served version so far.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_is_group_slash_version() {
        assert_eq!(
            format!("{}/{}", super::GROUP, super::VERSION),
            "millrace.dev/v1alpha1"
        );
    }
}
