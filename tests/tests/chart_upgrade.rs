//! `helm upgrade` from the previous chart version carries a CRD change.
//!
//! Helm installs a chart's `crds/` once and never upgrades them, so a new
//! field would be pruned from every StreamApp after an upgrade. The chart
//! has the operator apply the CRD of its own version at start
//! (`crds.manageByOperator`). Here an older chart (version 0.0.9, whose CRD
//! lacks `spec.autoscaling`, and whose operator did not manage the CRD) is
//! installed, shown to refuse the field, then upgraded to this chart (with
//! images named as a registry of one's own would, docs/images.md): the
//! field is in the CRD again and kept on an app.
//!
//! Its own test binary: it replaces the cluster's CRD for a while, which no
//! concurrently running test may see (test binaries run one at a time).

use std::path::Path;
use std::time::Duration;

use millrace_tests::{helm, kubectl, repo_root, unique, wait_until, TestNamespace};

const CRD: &str = "streamapps.millrace.dev";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Puts this version's CRD back however the test ends.
struct CurrentCrd;

impl Drop for CurrentCrd {
    fn drop(&mut self) {
        let file = repo_root().join("charts/millrace/crds/streamapps.millrace.dev.yaml");
        let _ = kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=millrace-operator",
            "-f",
            file.to_str().unwrap(),
        ]);
    }
}

fn has_autoscaling() -> bool {
    !kubectl(&[
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.autoscaling.type}",
    ])
    .unwrap_or_default()
    .is_empty()
}

/// The cluster's CRD without `spec.autoscaling`: the previous version's.
fn replace_with_older_crd(dir: &Path) {
    let mut crd: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "crd", CRD, "-o", "json"]).unwrap()).unwrap();
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("autoscaling");
    }
    crd["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    let file = dir.join("old-crd.json");
    std::fs::write(&file, crd.to_string()).unwrap();
    // A full update (with its resourceVersion): the field goes.
    kubectl(&["replace", "-f", file.to_str().unwrap()]).unwrap();
}

/// The chart as its previous version: version 0.0.9, and the older CRD in
/// its crds/ (what Helm would install on a fresh cluster).
fn older_chart(dir: &Path) -> std::path::PathBuf {
    let chart = dir.join("millrace");
    let status = std::process::Command::new("cp")
        .args(["-r"])
        .arg(repo_root().join("charts/millrace"))
        .arg(&chart)
        .status()
        .unwrap();
    assert!(status.success());
    let meta = chart.join("Chart.yaml");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\nversion: 0.1.0", "\nversion: 0.0.9")).unwrap();
    std::fs::copy(
        dir.join("old-crd.json"),
        chart.join("crds/streamapps.millrace.dev.yaml"),
    )
    .unwrap();
    chart
}

/// Applies an app with `spec.autoscaling` and reads the field back.
fn apply_with_autoscaling(ns: &str, app: &str) -> anyhow::Result<String> {
    let manifest = format!(
        r#"{{"apiVersion":"millrace.dev/v1alpha1","kind":"StreamApp","metadata":{{"name":"{app}"}},"spec":{{"kafka":{{"bootstrapServers":"127.0.0.1:1"}},"pipeline":{{"source":{{"topics":["{app}-in"]}},"steps":[{{"route":{{"default":"{app}-out"}}}}]}},"autoscaling":{{"mode":"DryRun"}}}}}}"#
    );
    let file = std::env::temp_dir().join(format!("{}.json", unique(app)));
    std::fs::write(&file, manifest).unwrap();
    let applied = kubectl(&["-n", ns, "apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    applied?;
    kubectl(&[
        "-n",
        ns,
        "get",
        "streamapp",
        app,
        "-o",
        "jsonpath={.spec.autoscaling.mode}",
    ])
}

#[test]
fn an_upgrade_from_the_previous_chart_carries_its_crd_change() {
    let _restore = CurrentCrd;
    let dir = std::env::temp_dir().join(unique("chart-upgrade"));
    std::fs::create_dir_all(&dir).unwrap();
    let ns = TestNamespace::create("upgrade");
    let ns = ns.0.as_str();
    let release = "millrace-upgrade";
    // This release's operator serves only its own namespace.
    let scope = format!("watchNamespaces={{{ns}}}");

    replace_with_older_crd(&dir);
    assert!(!has_autoscaling(), "the older CRD is in place");
    let old = older_chart(&dir);
    helm(&[
        "install",
        release,
        old.to_str().unwrap(),
        "-n",
        ns,
        "--set",
        &scope,
        "--set",
        "crds.manageByOperator=false",
        "--wait",
        "--timeout",
        "120s",
    ])
    .unwrap();
    assert!(
        !has_autoscaling(),
        "the previous operator leaves the CRD alone"
    );
    // The older CRD does not know the field: kubectl's strict validation
    // refuses it (a client that does not validate would see it pruned).
    let refused = apply_with_autoscaling(ns, "before")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("unknown field \"spec.autoscaling\""),
        "{refused}"
    );

    // Upgraded to images pushed to a registry of one's own, as
    // docs/images.md says (the test bed runs an image by its name's last
    // segment, so these run the archives `make images` recipe builds).
    helm(&[
        "upgrade",
        release,
        "charts/millrace",
        "-n",
        ns,
        "--set",
        &scope,
        "--set",
        "image.repository=registry.example.com/team/millrace-operator",
        "--set",
        "runtimeImage.repository=registry.example.com/team/millrace-runtime",
        "--wait",
        "--timeout",
        "120s",
    ])
    .unwrap();
    let deployment = kubectl(&[
        "-n",
        ns,
        "get",
        "deployment",
        "-o",
        "jsonpath={.items[0].spec.template.spec.containers[0].image} {.items[0].spec.template.spec.containers[0].env[?(@.name==\"MILLRACE_RUNTIME_IMAGE\")].value}",
    ])
    .unwrap();
    assert_eq!(
        deployment,
        "registry.example.com/team/millrace-operator:0.1.0 registry.example.com/team/millrace-runtime:0.1.0"
    );
    wait_until("the upgraded operator applies its CRD", TIMEOUT, || {
        has_autoscaling().then_some(())
    });
    assert_eq!(apply_with_autoscaling(ns, "after").unwrap(), "DryRun");

    helm(&["uninstall", release, "-n", ns, "--wait"]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
