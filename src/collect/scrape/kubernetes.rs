//! `kubernetes_sd_configs` with roles `pod` and `node`, over this node's [`ClusterView`].
//!
//! The labels and addresses are Prometheus's (`discovery/kubernetes/pod.go` and `node.go` at
//! v2.42.0, <https://github.com/prometheus/prometheus/blob/v2.42.0/discovery/kubernetes/pod.go>):
//! - pod role: one target per declared container port (`__address__` = `podIP:port`), one target
//!   per container without ports (`__address__` = the pod IP alone); init containers after the
//!   regular ones with `_container_init="true"`; pods without an IP yet give no targets;
//! - node role: one target, `__address__` = the first address by type priority (InternalIP,
//!   InternalDNS, ExternalIP, ExternalDNS, LegacyHostIP, Hostname) with the kubelet port,
//!   `instance` = node name, `__meta_kubernetes_node_address_<type>` = the first address per type.
//!
//! Unlike Prometheus, discovery never talks to an API server itself: it reads the watch this
//! process already keeps of *this node's* pods (a DaemonSet scrapes its own node). So
//! `api_server`, `kubeconfig_file` and `selectors` are refused with a config error, and the pod
//! role sees only pods on this node. Deleted pods kept in the view for their late log lines are
//! skipped.

use super::ScrapeError;
use super::pool::{ScrapeConfig, TargetGroup, TargetProvider};
use super::relabel::LabelMap;
use crate::collect::meta::{ClusterView, NodeMeta, PodMeta};
use serde::Deserialize;
use std::sync::Arc;

/// One `kubernetes_sd_configs` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSdConfig {
    pub role: String,
    #[serde(default)]
    pub namespaces: Option<Namespaces>,
    /// Refused: discovery uses this node's watch (see the module doc).
    #[serde(default)]
    pub api_server: Option<String>,
    /// Refused, like `api_server`.
    #[serde(default)]
    pub kubeconfig_file: Option<String>,
    /// Refused: the watch is already limited to this node's pods.
    #[serde(default)]
    pub selectors: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    #[serde(default)]
    pub names: Vec<String>,
}

impl KubernetesSdConfig {
    /// Refuses what this discovery cannot honour, naming the job.
    pub fn check(&self, job: &str) -> Result<(), ScrapeError> {
        let refuse = |what: &str| {
            Err(ScrapeError::Config(format!(
                "job {job}: kubernetes_sd_configs `{what}` is not supported: discovery uses this node's own pod watch (in-cluster service account), not a separate API client"
            )))
        };
        if self.api_server.is_some() {
            return refuse("api_server");
        }
        if self.kubeconfig_file.is_some() {
            return refuse("kubeconfig_file");
        }
        if self.selectors.is_some() {
            return refuse("selectors");
        }
        match self.role.as_str() {
            "pod" | "node" => Ok(()),
            other => Err(ScrapeError::Config(format!(
                "job {job}: kubernetes_sd_configs role {other:?} is not supported (only pod and node)"
            ))),
        }
    }
}

/// Targets of every `kubernetes_sd_configs` entry of a job, from a cluster view.
pub struct KubernetesProvider(pub Arc<dyn ClusterView>);

impl TargetProvider for KubernetesProvider {
    fn groups(&self, job: &ScrapeConfig) -> Vec<TargetGroup> {
        let mut out = Vec::new();
        for sd in &job.kubernetes_sd_configs {
            match sd.role.as_str() {
                "pod" => {
                    let names = sd.namespaces.as_ref().map_or(&[][..], |n| &n.names[..]);
                    for p in self.0.pods() {
                        if self.0.deleted(&p) || (!names.is_empty() && !names.contains(&p.namespace)) {
                            continue;
                        }
                        if let Some(g) = pod_group(&p) {
                            out.push(g);
                        }
                    }
                }
                "node" => {
                    if let Some(g) = self.0.node().and_then(|n| node_group(&n)) {
                        out.push(g);
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Prometheus's `strutil.SanitizeLabelName`: every byte outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

/// `_label_*`, `_labelpresent_*`, `_annotation_*`, `_annotationpresent_*` (`addObjectMetaLabels`).
fn object_meta(ls: &mut LabelMap, prefix: &str, labels: &LabelMap, annotations: &LabelMap) {
    for (k, v) in labels {
        let n = sanitize(k);
        ls.insert(format!("{prefix}_label_{n}"), v.clone());
        ls.insert(format!("{prefix}_labelpresent_{n}"), "true".into());
    }
    for (k, v) in annotations {
        let n = sanitize(k);
        ls.insert(format!("{prefix}_annotation_{n}"), v.clone());
        ls.insert(format!("{prefix}_annotationpresent_{n}"), "true".into());
    }
}

/// Go's `net.JoinHostPort`: IPv6 hosts in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `buildPod`: the pod's labels for the group, one target per container port or portless container.
pub fn pod_group(p: &PodMeta) -> Option<TargetGroup> {
    // Prometheus: "PodIP can be empty when a pod is starting or has been evicted."
    if p.pod_ip.is_empty() {
        return None;
    }
    const P: &str = "__meta_kubernetes_pod";
    let mut labels = LabelMap::new();
    labels.insert("__meta_kubernetes_namespace".into(), p.namespace.clone());
    labels.insert(format!("{P}_name"), p.name.clone());
    labels.insert(format!("{P}_ip"), p.pod_ip.clone());
    labels.insert(format!("{P}_ready"), p.ready.to_string());
    labels.insert(format!("{P}_phase"), p.phase.clone());
    labels.insert(format!("{P}_node_name"), p.node_name.clone());
    labels.insert(format!("{P}_host_ip"), p.host_ip.clone());
    labels.insert(format!("{P}_uid"), p.uid.clone());
    object_meta(&mut labels, P, &p.labels, &p.annotations);
    if let Some((kind, name)) = &p.controller {
        if !kind.is_empty() {
            labels.insert(format!("{P}_controller_kind"), kind.clone());
        }
        if !name.is_empty() {
            labels.insert(format!("{P}_controller_name"), name.clone());
        }
    }
    let mut targets = Vec::new();
    // Regular containers first, then init containers, as Prometheus appends them.
    let ordered = p
        .containers
        .iter()
        .filter(|c| !c.init)
        .chain(p.containers.iter().filter(|c| c.init));
    for c in ordered {
        let mut base = LabelMap::new();
        base.insert(format!("{P}_container_name"), c.name.clone());
        base.insert(format!("{P}_container_id"), c.id.clone());
        base.insert(format!("{P}_container_image"), c.image.clone());
        base.insert(format!("{P}_container_init"), c.init.to_string());
        if c.ports.is_empty() {
            base.insert("__address__".into(), p.pod_ip.clone());
            targets.push(base);
            continue;
        }
        for port in &c.ports {
            let mut t = base.clone();
            t.insert("__address__".into(), join_host_port(&p.pod_ip, port.port));
            t.insert(format!("{P}_container_port_number"), port.port.to_string());
            t.insert(format!("{P}_container_port_name"), port.name.clone());
            t.insert(format!("{P}_container_port_protocol"), port.protocol.clone());
            targets.push(t);
        }
    }
    Some(TargetGroup { targets, labels })
}

/// `buildNode`: one target at the preferred address and the kubelet port.
pub fn node_group(n: &NodeMeta) -> Option<TargetGroup> {
    const PRIORITY: [&str; 6] = [
        "InternalIP",
        "InternalDNS",
        "ExternalIP",
        "ExternalDNS",
        "LegacyHostIP",
        "Hostname",
    ];
    let first = |ty: &str| n.addresses.iter().find(|(t, _)| t == ty).map(|(_, a)| a.as_str());
    // Prometheus logs "no address" and skips the node.
    let addr = PRIORITY.iter().find_map(|ty| first(ty))?;
    let mut labels = LabelMap::new();
    labels.insert("__meta_kubernetes_node_name".into(), n.name.clone());
    labels.insert("__meta_kubernetes_node_provider_id".into(), n.provider_id.clone());
    object_meta(&mut labels, "__meta_kubernetes_node", &n.labels, &n.annotations);
    let mut t = LabelMap::new();
    t.insert("__address__".into(), join_host_port(addr, n.kubelet_port));
    t.insert("instance".into(), n.name.clone());
    for (ty, a) in &n.addresses {
        t.entry(sanitize(&format!("__meta_kubernetes_node_address_{ty}")))
            .or_insert(a.clone());
    }
    Some(TargetGroup {
        targets: vec![t],
        labels,
    })
}
