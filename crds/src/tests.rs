use std::path::Path;

use super::*;

/// The checked-in CRD files must be what the types generate. Set
/// MILLRACE_UPDATE_GOLDEN=1 to rewrite them after changing the types.
#[test]
fn checked_in_crd_yaml_matches_the_types() {
    let generated = crd_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for file in [
        "crds/streamapps.millrace.dev.yaml",
        "charts/millrace/crds/streamapps.millrace.dev.yaml",
    ] {
        let path = root.join(file);
        if std::env::var_os("MILLRACE_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{file} differs from the generated CRD; run `MILLRACE_UPDATE_GOLDEN=1 cargo test -p millrace-crds` and commit the result"
        );
    }
}

#[test]
fn api_version_is_group_slash_version() {
    assert_eq!(format!("{GROUP}/{VERSION}"), "millrace.dev/v1alpha1");
}
