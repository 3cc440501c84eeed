//! The deployment recipes of `deploy/` (docs/deploy.md) agree with the node: the config files they
//! carry parse and validate as `cohort node` reads them, so a renamed or removed key fails here and
//! not in someone's cluster, and every `COHORT_*` variable they set is one docs/operations.md
//! documents. The recipes' own syntax is checked by their tools in scripts/check-deploy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cohort::config::Config;

/// Files of `deploy/` that set or name `COHORT_*` variables.
const RECIPES: &[&str] = &[
    "deploy/Dockerfile",
    "deploy/kubernetes/configmap.yaml",
    "deploy/kubernetes/statefulset.yaml",
    "deploy/systemd/cohort.service",
];

/// What the StatefulSet must set for a pod to join its peers (docs/deploy.md): each must stay in
/// the manifest and in the reference.
const STATEFULSET_ENV: &[&str] = &[
    "COHORT_NAME",
    "COHORT_ADVERTISE",
    "COHORT_SEEDS",
    "COHORT_HTTP",
    "COHORT_GOSSIP",
    "COHORT_INTERNODE",
    "COHORT_DATA_DIR",
    "COHORT_CONFIG",
];

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The literal block `key: |` of a YAML text without its indentation: the lines after the key that
/// are blank or indented deeper than the key. Enough for the ConfigMap; not a YAML parser.
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let key_indent = loop {
        let line = lines.next().unwrap_or_else(|| panic!("no `{key}: |` block"));
        if line.trim_start().starts_with(&format!("{key}: |")) {
            break indent(line);
        }
    };
    let body: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || indent(l) > key_indent).collect();
    let block_indent = body.iter().filter(|l| !l.trim().is_empty()).map(|l| indent(l)).min().expect("empty block");
    body.iter().map(|l| format!("{}\n", l.get(block_indent..).unwrap_or(""))).collect()
}

/// Parses `text` as the node parses its config file, then validates it as `cohort node` would,
/// except for the secret files, which exist only where the recipe is deployed.
fn accepted(text: &str, path: &Path) -> Config {
    let config = Config::from_toml_str(text, path).unwrap_or_else(|e| panic!("{e}"));
    let mut without_secrets = config.clone();
    without_secrets.cluster_secret_file = None;
    without_secrets.admin_token_file = None;
    without_secrets.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config
}

/// Every `COHORT_*` word of a text.
fn cohort_vars(text: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    text.split(|c: char| !word(c)).filter(|w| w.starts_with("COHORT_") && w.len() > 7).map(String::from).collect()
}

#[test]
fn configmap_config_is_accepted_with_and_without_the_bootstrap_line() {
    let (path, yaml) = repo_file("deploy/kubernetes/configmap.yaml");
    let text = yaml_block(&yaml, "cohort.toml");
    // Errors name lines of the block, not of the YAML file.
    let path = PathBuf::from(format!("{} (data.\"cohort.toml\")", path.display()));
    let config = accepted(&text, &path);
    assert_eq!(config.raft.bootstrap, None, "only the init container decides the bootstrap");
    // The secrets are where the StatefulSet mounts them.
    let (_, statefulset) = repo_file("deploy/kubernetes/statefulset.yaml");
    assert!(statefulset.contains("mountPath: /etc/cohort/secrets"));
    for file in [&config.cluster_secret_file, &config.admin_token_file] {
        let file = file.as_ref().expect("the ConfigMap names both secret files");
        assert!(file.starts_with("/etc/cohort/secrets"), "{}", file.display());
    }
    // The init container puts this line before the text on cohort-0 of a new cluster.
    let line = "raft.bootstrap = true";
    assert!(statefulset.contains(&format!("echo \"{line}\" > \"$out\"")), "the init container's line changed");
    let first_node = accepted(&format!("{line}\n{text}"), &path);
    assert_eq!(first_node.raft.bootstrap, Some(true));
}

#[test]
fn systemd_example_config_is_accepted() {
    let (path, text) = repo_file("deploy/systemd/cohort.toml");
    accepted(&text, &path);
}

#[test]
fn recipe_variables_are_documented() {
    let (_, reference) = repo_file("docs/operations.md");
    let documented = cohort_vars(&reference);
    let (_, statefulset) = repo_file("deploy/kubernetes/statefulset.yaml");
    for var in STATEFULSET_ENV {
        assert!(statefulset.contains(&format!("- name: {var}\n")), "the StatefulSet no longer sets {var}");
    }
    let mut used: BTreeSet<String> = STATEFULSET_ENV.iter().map(|v| v.to_string()).collect();
    for rel in RECIPES {
        used.extend(cohort_vars(&repo_file(rel).1));
    }
    let missing: Vec<&String> = used.difference(&documented).collect();
    assert!(missing.is_empty(), "used by deploy/ but not in docs/operations.md: {missing:?}");
}
