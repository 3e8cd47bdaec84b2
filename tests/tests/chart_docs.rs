//! The chart's README lists every value of `values.yaml` with its default
//! and the comment above it: the table is generated from `values.yaml` and
//! this test fails when the README's copy differs
//! (`MILLRACE_UPDATE_GOLDEN=1 cargo test -p millrace-tests --test chart_docs`
//! rewrites it). Needs no stack.

use millrace_tests::repo_root;

const BEGIN: &str = "<!-- values: generated from values.yaml by tests/tests/chart_docs.rs -->";
const END: &str = "<!-- end of values -->";

/// One documented value: its dotted path, default and description.
#[derive(Debug, PartialEq)]
struct Value {
    path: String,
    default: String,
    description: String,
}

/// Every key of `values.yaml`, in file order. A comment block directly
/// above a key (same indentation, no blank line between) describes it; a
/// key whose value is on its own line is a map, and its children follow.
fn values(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    // (indentation, key) of the maps enclosing the current line.
    let mut parents: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    let mut comment_indent = None;
    for line in yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            comment.clear();
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if comment_indent != Some(indent) {
                comment.clear();
            }
            comment_indent = Some(indent);
            comment.push(text.trim().to_string());
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        if key.starts_with('-') || key.contains(' ') {
            continue;
        }
        parents.retain(|(i, _)| *i < indent);
        let path = parents
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        let described = comment_indent == Some(indent);
        let description = if described {
            comment.join(" ")
        } else {
            String::new()
        };
        comment.clear();
        let rest = rest.trim();
        let default = if rest.is_empty() {
            parents.push((indent, key.to_string()));
            String::new()
        } else {
            rest.to_string()
        };
        out.push(Value {
            path,
            default,
            description,
        });
    }
    out
}

fn table(values: &[Value]) -> String {
    let mut out = format!("{BEGIN}\n\n| value | default | what it does |\n|---|---|---|\n");
    for v in values {
        let default = if v.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", v.default)
        };
        out.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            v.path,
            v.description.replace('|', "\\|")
        ));
    }
    out.push('\n');
    out.push_str(END);
    out
}

#[test]
fn the_chart_readme_lists_every_value() {
    let chart = repo_root().join("charts/millrace");
    let yaml = std::fs::read_to_string(chart.join("values.yaml")).unwrap();
    let generated = table(&values(&yaml));
    let readme_path = chart.join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let (Some(start), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!(
            "{} lacks the markers {BEGIN} … {END}",
            readme_path.display()
        );
    };
    let current = &readme[start..end + END.len()];
    if current != generated {
        if std::env::var("MILLRACE_UPDATE_GOLDEN").is_ok() {
            std::fs::write(&readme_path, readme.replace(current, &generated)).unwrap();
            return;
        }
        panic!(
            "charts/millrace/README.md's values table differs from values.yaml; run with MILLRACE_UPDATE_GOLDEN=1 and review"
        );
    }
    // Every top-level value is documented by a comment.
    let undocumented: Vec<String> = values(&yaml)
        .into_iter()
        .filter(|v| !v.path.contains('.') && v.description.is_empty())
        .map(|v| v.path)
        .collect();
    assert!(
        undocumented.is_empty(),
        "top-level values without a comment in values.yaml: {undocumented:?}"
    );
}

#[test]
fn comments_describe_the_key_below_them_and_maps_nest() {
    let yaml = "# The image.\nimage:\n  # Where from.\n  repository: r\n  tag: \"\"\n\n# Dropped: a blank line follows.\n\nlogLevel: info\nworkers:\n  adminFrom: []\n  # - example: commented out\n";
    let v = values(yaml);
    let row = |p: &str| v.iter().find(|x| x.path == p).unwrap();
    assert_eq!(row("image").description, "The image.");
    assert_eq!(row("image.repository").description, "Where from.");
    assert_eq!(row("image.repository").default, "r");
    assert_eq!(row("image.tag").default, "\"\"");
    assert_eq!(row("logLevel").description, "");
    assert_eq!(row("workers.adminFrom").default, "[]");
    assert_eq!(v.len(), 6, "{v:?}");
}
