//! Plain descriptions of the Kubernetes objects the collectors share: this node's pods and the node
//! itself, as the `kube` watcher sees them and as the tailer (pod labels) and the scraper
//! (`kubernetes_sd_configs` targets) consume them.
//!
//! Owns: the [`ClusterView`] seam and its value types. Never touches: `kube`/`k8s-openapi` types
//! (only `collect::kube` converts from them, so the scraper and tailer compile and test without a
//! cluster), I/O of any kind.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One pod on this node, stripped to what discovery and labelling use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: String,
    /// `status.podIP`, empty until assigned.
    pub pod_ip: String,
    pub host_ip: String,
    /// `status.phase`: Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controller owner reference (`kind`, `name`), e.g. (`ReplicaSet`, `web-7d4b9c`).
    pub controller: Option<(String, String)>,
    /// Regular containers first, then init containers (`ContainerMeta::init`).
    pub containers: Vec<ContainerMeta>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: String,
    /// `containerStatuses[].containerID`, e.g. `containerd://<64 hex>`; empty before it starts.
    pub id: String,
    pub init: bool,
    pub ports: Vec<PortMeta>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortMeta {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// The node this process runs on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMeta {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.addresses` as (`type`, `address`) in the API's order: InternalIP, Hostname, ...
    pub addresses: Vec<(String, String)>,
    /// `status.daemonEndpoints.kubeletEndpoint.Port` (10250 on most clusters).
    pub kubelet_port: u16,
    /// `spec.providerID` (`aws:///eu-west-1a/i-0abc...`), empty when the cloud sets none.
    pub provider_id: String,
}

/// What the collectors know of the cluster right now. Implemented by `collect::kube`'s watcher
/// cache and by [`StaticCluster`] (tests, plain-directory mode).
pub trait ClusterView: Send + Sync {
    /// Every pod on this node that the cache holds, including deleted pods still in their grace
    /// period (the tailer needs their labels for late lines; discovery skips them by `deleted`).
    fn pods(&self) -> Vec<Arc<PodMeta>>;
    /// One pod by namespace and name (the tailer's lookup; the path gives both).
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodMeta>>;
    /// Whether a pod returned by [`ClusterView::pods`] has been deleted and is only kept for late lines.
    fn deleted(&self, pod: &PodMeta) -> bool;
    /// This node, once known.
    fn node(&self) -> Option<Arc<NodeMeta>>;
    /// Rises whenever anything above changes, so consumers re-derive their state only then.
    fn generation(&self) -> u64;
}

/// A fixed view: what tests and the plain-directory mode use.
#[derive(Debug, Default, Clone)]
pub struct StaticCluster {
    pub pods: Vec<Arc<PodMeta>>,
    pub node: Option<Arc<NodeMeta>>,
}

impl ClusterView for StaticCluster {
    fn pods(&self) -> Vec<Arc<PodMeta>> {
        self.pods.clone()
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodMeta>> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }
    fn deleted(&self, _pod: &PodMeta) -> bool {
        false
    }
    fn node(&self) -> Option<Arc<NodeMeta>> {
        self.node.clone()
    }
    fn generation(&self) -> u64 {
        0
    }
}
