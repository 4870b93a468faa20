//! Drift test for the Helm chart in `helm/clustermesh`.
//!
//! Helm is not available on the CI machine, so the chart is never rendered there. This test checks
//! what can be checked without Helm:
//!
//! - `Chart.yaml` and `values.yaml` parse, with the expected chart metadata;
//! - every `--flag` in the apiserver and node-agent templates exists in the built binary's `--help`
//!   (and the chart's defaults for the binaries' settings equal the binaries' defaults);
//! - the ClusterRole grants exactly the RBAC that `docs/sources.md` lists;
//! - every `.Values.…` path a template reads exists in `values.yaml`, every `include` names a
//!   defined template, every block is closed;
//! - each template, with its template lines dropped and inline actions replaced by a placeholder,
//!   still parses as Kubernetes objects; the TLS Secret is mounted with the files `clustermesh certs
//!   init` writes.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clustermesh_certs::{CA_CERT_FILE, Role, cert_file, key_file};
use clustermesh_integration::process::workspace_bin;
use serde_yaml::Value;

/// What an inline template action becomes in the pseudo-render.
const PLACEHOLDER: &str = "PLACEHOLDER";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("helm").join("clustermesh")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// `(file name, text)` of every file in `templates/`, sorted by name.
fn templates() -> Vec<(String, String)> {
    let dir = chart_dir().join("templates");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_string();
            (name, strip_comments(&read(&path)))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no templates in {}", dir.display());
    out
}

/// Removes `{{/* … */}}` comments (also `{{- /* … */ -}}`, also over several lines), keeping the
/// line count so that line numbers in messages stay right.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let open = ["{{/*", "{{- /*"]
            .iter()
            .filter_map(|o| rest.find(o).map(|at| (at, o.len())))
            .min();
        let Some((at, len)) = open else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let body = &rest[at + len..];
        let end = body
            .find("*/")
            .unwrap_or_else(|| panic!("unclosed template comment: {:?}", &rest[at..]));
        let after = &body[end + 2..];
        let close = after
            .trim_start_matches(' ')
            .trim_start_matches('-')
            .strip_prefix("}}")
            .unwrap_or_else(|| panic!("template comment not closed by }}}}: {:?}", &rest[at..]));
        let consumed = &rest[at..rest.len() - close.len()];
        out.extend(consumed.chars().filter(|&c| c == '\n'));
        rest = close;
    }
}

/// Templates whose name starts with `prefix` and ends with `.yaml`.
fn templates_named(prefix: &str) -> Vec<(String, String)> {
    let found: Vec<_> = templates()
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(".yaml"))
        .collect();
    assert!(!found.is_empty(), "no templates/{prefix}*.yaml");
    found
}

/// `--name` tokens in `text`: `--` not preceded by a word character or `-`, followed by a lower
/// case letter or digit, then letters, digits and `-`.
fn long_flags(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut flags = BTreeSet::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let starts = bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && (bytes[i + 2].is_ascii_lowercase() || bytes[i + 2].is_ascii_digit())
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while j < bytes.len()
            && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'-')
        {
            j += 1;
        }
        flags.insert(text[i..j].trim_end_matches('-').to_string());
        i = j;
    }
    flags
}

// ---------------------------------------------------------------------------------------------
// --help of the binaries

fn run_help(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}): {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The help of one command: the flags it accepts, their `[default: …]`, its subcommands.
#[derive(Debug, Default)]
struct Help {
    flags: BTreeSet<String>,
    defaults: BTreeMap<String, String>,
    subcommands: Vec<String>,
}

/// Reads clap's help output. Option lines start (after indentation) with `-`; their flags are the
/// `--` tokens before the description (separated by two spaces, or on the following lines).
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !line.starts_with(' ') && trimmed.ends_with(':') {
            section = trimmed;
            current = None;
            continue;
        }
        match section {
            "Commands:" => {
                if let Some(name) = trimmed.split_whitespace().next()
                    && name != "help"
                {
                    help.subcommands.push(name.to_string());
                }
            }
            "Options:" => {
                if trimmed.starts_with('-') {
                    let head = trimmed.split("  ").next().unwrap_or(trimmed);
                    let flags = long_flags(head);
                    current = flags.iter().next().cloned();
                    help.flags.extend(flags);
                }
                if let (Some(flag), Some(start)) = (&current, trimmed.find("[default: ")) {
                    let rest = &trimmed[start + "[default: ".len()..];
                    if let Some(end) = rest.find(']') {
                        help.defaults.insert(flag.clone(), rest[..end].to_string());
                    }
                }
            }
            _ => {}
        }
    }
    help
}

/// The help of `bin` and, recursively, of its subcommands (keyed by the subcommand path).
fn help_tree(bin: &Path) -> BTreeMap<Vec<String>, Help> {
    let mut tree = BTreeMap::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = parse_help(&run_help(bin, &args));
        assert!(
            help.flags.contains("--help"),
            "could not read the options of {} {args:?}",
            bin.display()
        );
        for sub in &help.subcommands {
            let mut child = path.clone();
            child.push(sub.clone());
            todo.push(child);
        }
        tree.insert(path, help);
    }
    tree
}

/// A template's container args name a subcommand when one of its list items is exactly the
/// subcommand's name (`- run` or `- "run"`).
fn invoked_subcommand(template: &str, name: &str) -> bool {
    template.lines().any(|line| {
        let item = line
            .trim()
            .trim_start_matches("- ")
            .trim()
            .trim_matches('"');
        line.trim().starts_with("- ") && item == name
    })
}

/// Asserts every flag of the `prefix` templates exists for `bin`: among the top-level flags, or
/// the flags of a subcommand the template invokes. Returns the binary's help tree.
fn check_template_flags(bin_name: &str, prefix: &str) -> BTreeMap<Vec<String>, Help> {
    let bin = workspace_bin(bin_name).unwrap_or_else(|e| panic!("{e:#}"));
    let tree = help_tree(&bin);
    let top = &tree[&Vec::new()];
    for (file, text) in templates_named(prefix) {
        let mut allowed = top.flags.clone();
        for (path, help) in &tree {
            if !path.is_empty() && path.iter().all(|sub| invoked_subcommand(&text, sub)) {
                allowed.extend(help.flags.iter().cloned());
            }
        }
        let used = long_flags(&text);
        let unknown: Vec<_> = used.difference(&allowed).collect();
        assert!(
            unknown.is_empty(),
            "templates/{file} passes {unknown:?}, which `{bin_name} --help` does not list \
             (it lists {allowed:?})"
        );
        eprintln!(
            "templates/{file}: {} flags, all known to {bin_name}",
            used.len()
        );
    }
    tree
}

// ---------------------------------------------------------------------------------------------
// Template structure

/// One `{{ … }}` action: its inner text (without delimiters, trim markers and spaces).
fn actions(line: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = line[from..].find("{{").map(|s| s + from) {
        let Some(end) = line[start..].find("}}").map(|e| e + start + 2) else {
            panic!("unclosed action in line {line:?}");
        };
        let inner = line[start + 2..end - 2]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim()
            .to_string();
        out.push((start, end, inner));
        from = end;
    }
    out
}

#[derive(Debug, PartialEq)]
enum Control {
    Open(String),
    Else,
    End,
    Other,
}

fn control(action: &str) -> Control {
    if action.starts_with("/*") {
        return Control::Other;
    }
    let word = action.split_whitespace().next().unwrap_or("");
    match word {
        "if" | "range" | "with" | "define" | "block" => Control::Open(word.to_string()),
        "else" => Control::Else,
        "end" => Control::End,
        _ => Control::Other,
    }
}

/// Drops template-only lines, keeps the first branch of each `if`/`with`/`range` … `else`, and
/// replaces inline actions with [`PLACEHOLDER`]: what is left of a YAML template should be YAML.
fn pseudo_render(file: &str, text: &str) -> String {
    // Per open block: whether its lines are skipped (an `else` branch).
    let mut stack: Vec<bool> = Vec::new();
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let acts = actions(line);
        let mut rest = String::new();
        let mut last = 0;
        for (start, end, _) in &acts {
            rest.push_str(&line[last..*start]);
            last = *end;
        }
        rest.push_str(&line[last..]);
        let template_only = !acts.is_empty() && rest.trim().is_empty();
        if template_only {
            for (_, _, act) in &acts {
                match control(act) {
                    Control::Open(_) => stack.push(false),
                    Control::Else => {
                        *stack
                            .last_mut()
                            .unwrap_or_else(|| panic!("{file}:{}: else outside a block", n + 1)) =
                            true
                    }
                    Control::End => {
                        stack
                            .pop()
                            .unwrap_or_else(|| panic!("{file}:{}: end without a block", n + 1));
                    }
                    Control::Other => {}
                }
            }
            continue;
        }
        if stack.iter().any(|&skipping| skipping) {
            continue;
        }
        let mut rendered = String::new();
        let mut last = 0;
        for (start, end, act) in &acts {
            rendered.push_str(&line[last..*start]);
            assert!(
                control(act) == Control::Other,
                "{file}:{}: control action {act:?} inside a YAML line",
                n + 1
            );
            if !act.starts_with("/*") {
                rendered.push_str(PLACEHOLDER);
            }
            last = *end;
        }
        rendered.push_str(&line[last..]);
        out.push_str(&rendered);
        out.push('\n');
    }
    assert!(
        stack.is_empty(),
        "{file}: {} block(s) not closed",
        stack.len()
    );
    out
}

/// The Kubernetes objects of a pseudo-rendered template.
fn objects(file: &str, text: &str) -> Vec<Value> {
    let rendered = pseudo_render(file, text);
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in rendered.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let doc: Value = serde_yaml::from_str(&current).unwrap_or_else(|e| {
                panic!(
                    "templates/{file} does not parse as YAML once pseudo-rendered: {e}\n{current}"
                )
            });
            if !doc.is_null() {
                docs.push(doc);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in {v:?}"))
}

/// Every object of every YAML template, with the file it came from.
fn all_objects() -> Vec<(String, Value)> {
    templates()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".yaml"))
        .flat_map(|(name, text)| {
            objects(&name, &text)
                .into_iter()
                .map(move |o| (name.clone(), o))
        })
        .collect()
}

fn object_of_kind(kind: &str) -> Value {
    let found: Vec<_> = all_objects()
        .into_iter()
        .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} in the templates");
    found.into_iter().next().expect("one object").1
}

/// `(apiGroup, resource, verb)` of every rule of a Role/ClusterRole.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let rules = role
        .get("rules")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("no rules in {role:?}"));
    let strings = |rule: &Value, key: &str| -> Vec<String> {
        rule.get(key)
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("rule without {key}: {rule:?}"))
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                for verb in strings(rule, "verbs") {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// The ClusterRole YAML block of docs/sources.md, after "RBAC it needs".
fn documented_rbac() -> Value {
    let doc = read(&repo_root().join("docs").join("sources.md"));
    let at = doc
        .find("RBAC it needs")
        .expect("docs/sources.md has an \"RBAC it needs\" paragraph");
    let rest = &doc[at..];
    let start = rest.find("```yaml").expect("a ```yaml block after it") + "```yaml".len();
    let end = rest[start..].find("```").expect("the block is closed") + start;
    serde_yaml::from_str(&rest[start..end]).expect("the documented RBAC is YAML")
}

fn volume<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .and_then(|vols| {
            vols.iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        })
        .unwrap_or_else(|| panic!("no volume {name:?}"))
}

fn secret_items(vol: &Value) -> BTreeSet<String> {
    get(vol, &["secret", "items"])
        .and_then(Value::as_sequence)
        .expect("secret volume with items")
        .iter()
        .map(|item| {
            let key = str_at(item, &["key"]);
            assert_eq!(key, str_at(item, &["path"]), "items keep the file names");
            key.to_string()
        })
        .collect()
}

fn files(roles: &[Role]) -> BTreeSet<String> {
    let mut out = BTreeSet::from([CA_CERT_FILE.to_string()]);
    for role in roles {
        out.insert(cert_file(*role).to_string());
        out.insert(key_file(*role).to_string());
    }
    out
}

/// `values.yaml` as a string at `path` (numbers and strings alike).
fn value_string(values: &Value, path: &[&str]) -> String {
    match get(values, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        other => panic!("values.yaml {path:?}: expected a scalar, found {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn chart_and_values_parse() {
    let chart = parse_yaml(&chart_dir().join("Chart.yaml"));
    assert_eq!(str_at(&chart, &["apiVersion"]), "v2");
    assert_eq!(str_at(&chart, &["name"]), "clustermesh");
    assert_eq!(str_at(&chart, &["version"]), "0.1.0");
    assert_eq!(str_at(&chart, &["appVersion"]), "0.1.0");

    let values = parse_yaml(&chart_dir().join("values.yaml"));
    assert!(values.is_mapping(), "values.yaml is a mapping");
    assert_eq!(value_string(&values, &["apiserver", "replicas"]), "2");
    assert_eq!(value_string(&values, &["apiserver", "healthPort"]), "9880");
    assert_eq!(value_string(&values, &["apiserver", "grpcPort"]), "7443");
    assert_eq!(value_string(&values, &["source"]), "kubernetes");
    // One agent on every node (DESIGN §7): no node selector by default.
    assert_eq!(value_string(&values, &["nodeAgent", "underlayDev"]), "");
    assert_eq!(value_string(&values, &["mesh", "gatewayLease"]), "1s");
    for path in [
        ["mesh", "heartbeatInterval"],
        ["mesh", "peerTimeout"],
        ["mesh", "staleTtl"],
        ["mesh", "leaderLeaseTtl"],
        ["mesh", "identityGcGrace"],
        ["nodeAgent", "logInterval"],
        ["nodeAgent", "resyncInterval"],
        ["nodeAgent", "syncWait"],
    ] {
        let v = value_string(&values, &path);
        clustermesh_proto::duration::parse(&v)
            .unwrap_or_else(|e| panic!("values.yaml {path:?} = {v:?} is not a duration: {e}"));
    }
}

#[test]
fn apiserver_template_flags_exist_and_defaults_match() {
    let tree = check_template_flags("clustermesh-apiserver", "apiserver");
    let defaults = &tree[&Vec::new()].defaults;
    let values = parse_yaml(&chart_dir().join("values.yaml"));
    for (path, flag) in [
        (
            &["cluster", "maxConnectedClusters"][..],
            "--max-connected-clusters",
        ),
        (&["mesh", "heartbeatInterval"][..], "--heartbeat-interval"),
        (&["mesh", "peerTimeout"][..], "--peer-timeout"),
        (&["mesh", "staleTtl"][..], "--stale-ttl"),
        (&["mesh", "leaderLeaseTtl"][..], "--leader-lease-ttl"),
        (&["mesh", "identityGcGrace"][..], "--identity-gc-grace"),
        (&["mesh", "watchHistory"][..], "--watch-history"),
        (&["mesh", "watcherBuffer"][..], "--watcher-buffer"),
        (&["apiserver", "logFormat"][..], "--log-format"),
    ] {
        let default = defaults
            .get(flag)
            .unwrap_or_else(|| panic!("clustermesh-apiserver --help shows no default for {flag}"));
        assert_eq!(
            &value_string(&values, path),
            default,
            "values.yaml {path:?} differs from the default of {flag}"
        );
    }
}

#[test]
fn node_agent_template_flags_exist_and_defaults_match() {
    let tree = check_template_flags("clustermesh-node-agent", "node-agent");
    let defaults = &tree[&Vec::new()].defaults;
    let values = parse_yaml(&chart_dir().join("values.yaml"));
    for (key, flag) in [
        ("tunnel", "--tunnel"),
        ("tunnelDev", "--tunnel-dev"),
        ("logInterval", "--log-interval"),
        ("resyncInterval", "--resync-interval"),
        ("syncWait", "--sync-wait"),
    ] {
        let default = defaults
            .get(flag)
            .unwrap_or_else(|| panic!("clustermesh-node-agent --help shows no default for {flag}"));
        assert_eq!(
            &value_string(&values, &["nodeAgent", key]),
            default,
            "values.yaml nodeAgent.{key} differs from the default of {flag}"
        );
    }
}

#[test]
fn cluster_role_matches_docs_sources() {
    let documented = grants(&documented_rbac());
    // The doc's block must cover what the kubernetes source watches (same page).
    for resource in [
        "pods",
        "namespaces",
        "nodes",
        "services",
        "endpointslices",
        "networkpolicies",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                documented
                    .iter()
                    .any(|(_, r, v)| r == resource && v == verb),
                "docs/sources.md's RBAC lacks {verb} on {resource}"
            );
        }
    }
    let role = object_of_kind("ClusterRole");
    let granted = grants(&role);
    let missing: Vec<_> = documented.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the ClusterRole lacks {missing:?} (docs/sources.md)"
    );
    let extra: Vec<_> = granted.difference(&documented).collect();
    assert!(
        extra.is_empty(),
        "the ClusterRole grants {extra:?}, which docs/sources.md does not list"
    );

    let binding = object_of_kind("ClusterRoleBinding");
    assert_eq!(str_at(&binding, &["roleRef", "kind"]), "ClusterRole");
    let subjects = binding
        .get("subjects")
        .and_then(Value::as_sequence)
        .expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(str_at(&subjects[0], &["kind"]), "ServiceAccount");
}

#[test]
fn templates_are_well_formed_and_read_existing_values() {
    let values = parse_yaml(&chart_dir().join("values.yaml"));
    let all = templates();

    let mut defined = BTreeSet::new();
    for (_, text) in &all {
        for line in text.lines() {
            for (_, _, act) in actions(line) {
                if let Some(rest) = act.strip_prefix("define ") {
                    defined.insert(rest.trim().trim_matches('"').to_string());
                }
            }
        }
    }

    for (file, text) in &all {
        // Blocks are balanced, `else` only inside a block.
        let mut stack: Vec<String> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            for (_, _, act) in actions(line) {
                match control(&act) {
                    Control::Open(word) => stack.push(word),
                    Control::Else => assert!(
                        matches!(
                            stack.last().map(String::as_str),
                            Some("if" | "with" | "range")
                        ),
                        "{file}:{}: else outside if/with/range",
                        n + 1
                    ),
                    Control::End => {
                        stack
                            .pop()
                            .unwrap_or_else(|| panic!("{file}:{}: end without a block", n + 1));
                    }
                    Control::Other => {}
                }
                // Included templates exist.
                for word in ["include ", "template "] {
                    let mut from = 0;
                    while let Some(at) = act[from..].find(word).map(|a| a + from) {
                        let name = act[at + word.len()..]
                            .trim_start()
                            .strip_prefix('"')
                            .and_then(|s| s.split('"').next())
                            .unwrap_or_else(|| panic!("{file}:{}: bad {word}in {act:?}", n + 1));
                        assert!(
                            defined.contains(name),
                            "{file}:{}: {word}{name:?} is not defined",
                            n + 1
                        );
                        from = at + word.len();
                    }
                }
                // .Values paths exist (Helm fails on a field of a missing parent).
                let mut from = 0;
                while let Some(at) = act[from..].find(".Values.").map(|a| a + from) {
                    let path: String = act[at + ".Values.".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                        .collect();
                    let keys: Vec<&str> = path.trim_end_matches('.').split('.').collect();
                    let mut node = &values;
                    for (i, key) in keys.iter().enumerate() {
                        node = node.get(*key).unwrap_or_else(|| {
                            panic!(
                                "{file}:{}: .Values.{} is not in values.yaml (missing {:?})",
                                n + 1,
                                keys.join("."),
                                keys[..=i].join(".")
                            )
                        });
                    }
                    from = at + ".Values.".len();
                }
            }
        }
        assert!(stack.is_empty(), "{file}: unclosed {stack:?}");
    }

    // Every YAML template yields Kubernetes objects.
    let mut kinds = BTreeSet::new();
    for (file, object) in all_objects() {
        let kind = str_at(&object, &["kind"]).to_string();
        let _ = str_at(&object, &["apiVersion"]);
        let _ = str_at(&object, &["metadata", "name"]);
        kinds.insert(kind.clone());
        eprintln!("templates/{file}: {kind}");
    }
    for kind in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "StatefulSet",
        "DaemonSet",
    ] {
        assert!(kinds.contains(kind), "no {kind} in the templates");
    }
}

#[test]
fn workloads_mount_the_certs_init_files_and_probe_health() {
    let deployment = object_of_kind("Deployment");
    let pod = get(&deployment, &["spec", "template", "spec"]).expect("pod spec");
    assert_eq!(
        secret_items(volume(pod, "tls")),
        files(&[Role::Server, Role::Remote]),
        "the apiserver mounts the CA, its server and remote certificates"
    );
    let container = &pod
        .get("containers")
        .and_then(Value::as_sequence)
        .expect("containers")[0];
    assert_eq!(
        str_at(container, &["livenessProbe", "httpGet", "path"]),
        "/healthz"
    );
    assert_eq!(
        str_at(container, &["readinessProbe", "httpGet", "path"]),
        "/readyz"
    );
    assert_eq!(
        str_at(container, &["livenessProbe", "httpGet", "port"]),
        "health"
    );
    let env = container
        .get("env")
        .and_then(Value::as_sequence)
        .expect("env");
    let hostname = env
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("HOSTNAME"))
        .expect("HOSTNAME in the apiserver's env");
    assert_eq!(
        str_at(hostname, &["valueFrom", "fieldRef", "fieldPath"]),
        "metadata.name"
    );

    let daemonset = object_of_kind("DaemonSet");
    let pod = get(&daemonset, &["spec", "template", "spec"]).expect("pod spec");
    assert_eq!(
        secret_items(volume(pod, "tls")),
        files(&[Role::Agent]),
        "the node agent mounts the CA and its agent certificate"
    );
    assert!(
        get(volume(pod, "bpffs"), &["hostPath", "path"]).is_some(),
        "bpffs comes from the host"
    );
    let container = &pod
        .get("containers")
        .and_then(Value::as_sequence)
        .expect("containers")[0];
    let mounts: BTreeSet<&str> = container
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .expect("volumeMounts")
        .iter()
        .map(|m| str_at(m, &["mountPath"]))
        .collect();
    assert!(mounts.contains("/sys/fs/bpf"), "{mounts:?}");
}
