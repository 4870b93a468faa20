//! The Kubernetes objects a source delivers: one enum over the six kinds the
//! conversion reads, and the (kind, namespace, name) reference that names one.

use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The kinds of Kubernetes objects the sources deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
}

impl ObjectKind {
    /// Every kind, namespaces first (their labels feed every namespaced record).
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Namespace,
        ObjectKind::Node,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::NetworkPolicy,
    ];

    /// The `apiVersion` this kind is read as.
    pub fn api_version(self) -> &'static str {
        match self {
            ObjectKind::Namespace | ObjectKind::Node | ObjectKind::Pod | ObjectKind::Service => {
                "v1"
            }
            ObjectKind::EndpointSlice => "discovery.k8s.io/v1",
            ObjectKind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// The `kind` field value.
    pub fn kind_name(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Node => "Node",
            ObjectKind::Pod => "Pod",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// The plural resource name, as used in RBAC rules and logs.
    pub fn resource(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "namespaces",
            ObjectKind::Node => "nodes",
            ObjectKind::Pod => "pods",
            ObjectKind::Service => "services",
            ObjectKind::EndpointSlice => "endpointslices",
            ObjectKind::NetworkPolicy => "networkpolicies",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, ObjectKind::Namespace | ObjectKind::Node)
    }

    /// The kind read for an (`apiVersion`, `kind`) pair, if it is one of ours.
    pub fn from_type(api_version: &str, kind: &str) -> Option<ObjectKind> {
        ObjectKind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind_name() == kind)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind_name())
    }
}

/// Names one object: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// A reference; the namespace is dropped for cluster-scoped kinds.
    pub fn new(kind: ObjectKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let namespace = if kind.is_namespaced() {
            namespace.into()
        } else {
            String::new()
        };
        ObjectRef {
            kind,
            namespace,
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One Kubernetes object of a kind the conversion reads.
// Not boxed: an object is moved once, from the source into the inventory
// (whose per-kind maps hold the bare type), so boxing would only add an
// allocation per object.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum K8sObject {
    Namespace(core::Namespace),
    Node(core::Node),
    Pod(core::Pod),
    Service(core::Service),
    EndpointSlice(discovery::EndpointSlice),
    NetworkPolicy(networking::NetworkPolicy),
}

impl K8sObject {
    pub fn kind(&self) -> ObjectKind {
        match self {
            K8sObject::Namespace(_) => ObjectKind::Namespace,
            K8sObject::Node(_) => ObjectKind::Node,
            K8sObject::Pod(_) => ObjectKind::Pod,
            K8sObject::Service(_) => ObjectKind::Service,
            K8sObject::EndpointSlice(_) => ObjectKind::EndpointSlice,
            K8sObject::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            K8sObject::Namespace(o) => &o.metadata,
            K8sObject::Node(o) => &o.metadata,
            K8sObject::Pod(o) => &o.metadata,
            K8sObject::Service(o) => &o.metadata,
            K8sObject::EndpointSlice(o) => &o.metadata,
            K8sObject::NetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            K8sObject::Namespace(o) => &mut o.metadata,
            K8sObject::Node(o) => &mut o.metadata,
            K8sObject::Pod(o) => &mut o.metadata,
            K8sObject::Service(o) => &mut o.metadata,
            K8sObject::EndpointSlice(o) => &mut o.metadata,
            K8sObject::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// The reference naming this object (missing namespace/name read as "").
    pub fn object_ref(&self) -> ObjectRef {
        let meta = self.metadata();
        ObjectRef::new(
            self.kind(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl From<core::Namespace> for K8sObject {
    fn from(o: core::Namespace) -> Self {
        K8sObject::Namespace(o)
    }
}
impl From<core::Node> for K8sObject {
    fn from(o: core::Node) -> Self {
        K8sObject::Node(o)
    }
}
impl From<core::Pod> for K8sObject {
    fn from(o: core::Pod) -> Self {
        K8sObject::Pod(o)
    }
}
impl From<core::Service> for K8sObject {
    fn from(o: core::Service) -> Self {
        K8sObject::Service(o)
    }
}
impl From<discovery::EndpointSlice> for K8sObject {
    fn from(o: discovery::EndpointSlice) -> Self {
        K8sObject::EndpointSlice(o)
    }
}
impl From<networking::NetworkPolicy> for K8sObject {
    fn from(o: networking::NetworkPolicy) -> Self {
        K8sObject::NetworkPolicy(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_type_matches_api_version_and_kind() {
        assert_eq!(
            ObjectKind::from_type("discovery.k8s.io/v1", "EndpointSlice"),
            Some(ObjectKind::EndpointSlice)
        );
        assert_eq!(ObjectKind::from_type("v1", "Pod"), Some(ObjectKind::Pod));
        assert_eq!(ObjectKind::from_type("apps/v1", "Deployment"), None);
        assert_eq!(
            ObjectKind::from_type("discovery.k8s.io/v1beta1", "EndpointSlice"),
            None
        );
    }

    #[test]
    fn cluster_scoped_refs_drop_the_namespace() {
        let r = ObjectRef::new(ObjectKind::Node, "default", "n1");
        assert_eq!(r.namespace, "");
        assert_eq!(r.to_string(), "Node n1");
        let r = ObjectRef::new(ObjectKind::Pod, "shop", "p");
        assert_eq!(r.to_string(), "Pod shop/p");
    }
}
