//! Multi-document Kubernetes YAML → objects of the kinds we read.

use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_yaml::Value;

use crate::source::{K8sObject, ObjectKind};

/// Why a manifest file was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line (the start of the document when the YAML parser gives none).
    pub line: u32,
    pub message: String,
}

fn yaml_error(e: &serde_yaml::Error, fallback_line: u32) -> ParseError {
    ParseError {
        line: e
            .location()
            .and_then(|l| u32::try_from(l.line()).ok())
            .unwrap_or(fallback_line),
        message: e.to_string(),
    }
}

/// Deserializes into the k8s-openapi type of `kind`.
fn typed<'de, D: de::Deserializer<'de>>(kind: ObjectKind, d: D) -> Result<K8sObject, D::Error> {
    Ok(match kind {
        ObjectKind::Namespace => K8sObject::Namespace(core::Namespace::deserialize(d)?),
        ObjectKind::Node => K8sObject::Node(core::Node::deserialize(d)?),
        ObjectKind::Pod => K8sObject::Pod(core::Pod::deserialize(d)?),
        ObjectKind::Service => K8sObject::Service(core::Service::deserialize(d)?),
        ObjectKind::EndpointSlice => K8sObject::EndpointSlice(EndpointSlice::deserialize(d)?),
        ObjectKind::NetworkPolicy => K8sObject::NetworkPolicy(NetworkPolicy::deserialize(d)?),
    })
}

/// Always fails at the first event of a document, so the error's location
/// is where the document's content starts.
struct StartProbe;

impl<'de> Deserialize<'de> for StartProbe {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StartProbe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<StartProbe, A::Error> {
                Err(de::Error::custom("probe"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The 1-based line where document `index` of `text` starts (1 if unknown).
fn document_line(text: &str, index: usize) -> u32 {
    serde_yaml::Deserializer::from_str(text)
        .nth(index)
        .and_then(|doc| StartProbe::deserialize(doc).err())
        .and_then(|e| e.location())
        .and_then(|l| u32::try_from(l.line()).ok())
        .unwrap_or(1)
}

/// What a document is, read from its `apiVersion` and `kind`.
enum Doc {
    Empty,
    Object(ObjectKind),
    List,
    Ignored(String),
    Invalid(String),
}

fn classify(v: &Value) -> Doc {
    let map = match v {
        Value::Null => return Doc::Empty,
        Value::Mapping(m) => m,
        _ => return Doc::Invalid("a document must be a mapping (a Kubernetes object)".into()),
    };
    let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if kind.is_empty() || api_version.is_empty() {
        return Doc::Invalid("apiVersion and kind must be set".into());
    }
    if let Some(k) = ObjectKind::from_type(api_version, kind) {
        Doc::Object(k)
    } else if api_version == "v1" && kind == "List" {
        Doc::List
    } else {
        Doc::Ignored(format!("{api_version}/{kind}"))
    }
}

/// Fills in what Kubernetes would: namespace `default` for namespaced kinds
/// without one, none for cluster-scoped kinds. The object must have a name.
fn normalize(mut obj: K8sObject) -> Result<K8sObject, String> {
    let kind = obj.kind();
    let meta = obj.metadata_mut();
    if meta.name.as_deref().is_none_or(str::is_empty) {
        return Err(format!("{kind}: metadata.name must be set"));
    }
    if !kind.is_namespaced() {
        meta.namespace = None;
    } else if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".into());
    }
    Ok(obj)
}

fn list_items(items: Option<&Value>, line: u32) -> Result<Vec<K8sObject>, ParseError> {
    let err = |message: String| ParseError { line, message };
    let mut out = Vec::new();
    let items = match items {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Sequence(s)) => s,
        Some(_) => return Err(err("List: items must be a sequence".into())),
    };
    for (i, item) in items.iter().enumerate() {
        match classify(item) {
            Doc::Empty => {}
            Doc::Object(kind) => {
                let obj = typed(kind, item.clone()).map_err(|e| err(format!("items[{i}]: {e}")))?;
                out.push(normalize(obj).map_err(|m| err(format!("items[{i}]: {m}")))?);
            }
            Doc::Ignored(what) => tracing::debug!(kind = %what, "manifests: ignoring list item"),
            Doc::List => return Err(err(format!("items[{i}]: nested List"))),
            Doc::Invalid(m) => return Err(err(format!("items[{i}]: {m}"))),
        }
    }
    Ok(out)
}

/// Parses every document of a (multi-document) YAML text. Kinds other than
/// ours are skipped (debug log); `v1 List` documents are expanded. Any
/// syntax or schema error rejects the whole text, with its line.
pub fn parse_manifests(text: &str) -> Result<Vec<K8sObject>, ParseError> {
    // Pass 1: generic values (syntax errors, with their location).
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        values.push(Value::deserialize(doc).map_err(|e| yaml_error(&e, 1))?);
    }
    let docs: Vec<Doc> = values.iter().map(classify).collect();
    // Pass 2: our kinds, straight from the YAML so schema errors keep a line.
    let mut out = Vec::new();
    for (i, (doc, (kind, value))) in serde_yaml::Deserializer::from_str(text)
        .zip(docs.iter().zip(&values))
        .enumerate()
    {
        match step(kind) {
            Step::Skip => {}
            Step::Typed(kind) => {
                let obj = typed(kind, doc).map_err(|e| yaml_error(&e, document_line(text, i)))?;
                let obj = normalize(obj).map_err(|message| ParseError {
                    line: document_line(text, i),
                    message,
                })?;
                out.push(obj);
            }
            Step::List => out.extend(list_items(value.get("items"), document_line(text, i))?),
            Step::Fail(message) => {
                return Err(ParseError {
                    line: document_line(text, i),
                    message,
                });
            }
        }
    }
    Ok(out)
}

enum Step {
    Skip,
    Typed(ObjectKind),
    List,
    Fail(String),
}

fn step(doc: &Doc) -> Step {
    match doc {
        Doc::Empty => Step::Skip,
        Doc::Object(k) => Step::Typed(*k),
        Doc::List => Step::List,
        Doc::Ignored(what) => {
            tracing::debug!(kind = %what, "manifests: ignoring document of a kind we do not read");
            Step::Skip
        }
        Doc::Invalid(m) => Step::Fail(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
# leading comment
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored
---
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
  - name: c
---
";

    #[test]
    fn multi_document_with_unknown_kinds_and_default_namespace() {
        let objs = parse_manifests(TWO).expect("parses");
        let refs: Vec<String> = objs.iter().map(|o| o.object_ref().to_string()).collect();
        assert_eq!(refs, vec!["Namespace shop", "Pod default/p"]);
    }

    #[test]
    fn syntax_error_has_its_line() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {a: b\n";
        let e = parse_manifests(text).expect_err("broken");
        assert!(e.line >= 5, "{e}");
    }

    #[test]
    fn schema_error_in_a_later_document_has_its_line() {
        let text = format!(
            "{TWO}apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: notanumber\n"
        );
        let e = parse_manifests(&text).expect_err("bad port");
        assert_eq!(e.line, 28, "{e}");
    }

    #[test]
    fn missing_kind_or_name_points_at_the_document() {
        let text =
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\nmetadata:\n  name: x\n";
        let e = parse_manifests(text).expect_err("no kind");
        assert_eq!(e.line, 7, "{e}");
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Node\nmetadata:\n  labels: {}\n";
        let e = parse_manifests(text).expect_err("no name");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("metadata.name"));
    }

    #[test]
    fn lists_are_expanded() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata:\n    name: n1\n    namespace: ignored\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: cm\n";
        let objs = parse_manifests(text).expect("parses");
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].object_ref().to_string(), "Node n1");
    }

    #[test]
    fn empty_text_is_no_objects() {
        assert_eq!(parse_manifests("").expect("ok"), Vec::new());
        assert_eq!(
            parse_manifests("# only a comment\n").expect("ok"),
            Vec::new()
        );
    }
}
