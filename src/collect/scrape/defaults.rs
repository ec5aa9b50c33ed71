//! The scrape jobs used when running in a cluster without `scrape_configs`: Prometheus's
//! canonical Kubernetes jobs, limited to this node (a DaemonSet scrapes its own pods and kubelet).
//!
//! - `kubernetes-pods`: pods annotated `prometheus.io/scrape: "true"`, with
//!   `prometheus.io/scheme|path|port|param_<name>`; the relabeling is the prometheus-community
//!   chart's (IPv4 and IPv6 port rules, pending/finished pods dropped), so one annotated pod with
//!   several container ports is scraped once (the targets collapse to one label set).
//! - `kubelet` and `kubelet-cadvisor`: the node role over https with the service-account token
//!   (re-read every scrape, bound tokens rotate). `insecure_skip_verify` as kube-prometheus's
//!   kubelet ServiceMonitor: the kubelet's serving certificate is self-signed unless the cluster
//!   enables `serverTLSBootstrap`, so verifying it against the service-account CA fails on most
//!   clusters. cAdvisor samples carry explicit timestamps (honoured, so no staleness markers) and
//!   are refreshed every 10 s by the kubelet's housekeeping: a shorter interval only stores
//!   duplicates (prometheus-community/helm-charts#5063).

use super::ScrapeError;
use super::pool::ScrapeConfig;

/// The embedded jobs, as YAML a user can copy into `scrape_configs` and edit.
pub const IN_CLUSTER_DEFAULTS: &str = r#"
- job_name: kubernetes-pods
  scrape_interval: 30s
  kubernetes_sd_configs:
    - role: pod
  relabel_configs:
    - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
      action: keep
      regex: "true"
    - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scheme]
      action: replace
      regex: (https?)
      target_label: __scheme__
    - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
      action: replace
      regex: (.+)
      target_label: __metrics_path__
    - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
      action: replace
      regex: (\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})
      replacement: "[$2]:$1"
      target_label: __address__
    - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_port, __meta_kubernetes_pod_ip]
      action: replace
      regex: (\d+);((([0-9]+?)(\.|$)){4})
      replacement: "$2:$1"
      target_label: __address__
    - action: labelmap
      regex: __meta_kubernetes_pod_annotation_prometheus_io_param_(.+)
      replacement: __param_$1
    - action: labelmap
      regex: __meta_kubernetes_pod_label_(.+)
    - source_labels: [__meta_kubernetes_namespace]
      action: replace
      target_label: namespace
    - source_labels: [__meta_kubernetes_pod_name]
      action: replace
      target_label: pod
    - source_labels: [__meta_kubernetes_pod_phase]
      regex: Pending|Succeeded|Failed|Completed
      action: drop
    - source_labels: [__meta_kubernetes_pod_node_name]
      action: replace
      target_label: node
- job_name: kubelet
  scrape_interval: 30s
  scheme: https
  metrics_path: /metrics
  bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
  tls_config:
    ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    insecure_skip_verify: true
  kubernetes_sd_configs:
    - role: node
  relabel_configs:
    - source_labels: [__meta_kubernetes_node_name]
      target_label: node
- job_name: kubelet-cadvisor
  scrape_interval: 30s
  scheme: https
  metrics_path: /metrics/cadvisor
  honor_timestamps: true
  bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
  tls_config:
    ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    insecure_skip_verify: true
  kubernetes_sd_configs:
    - role: node
  relabel_configs:
    - source_labels: [__meta_kubernetes_node_name]
      target_label: node
"#;

/// The embedded jobs, parsed.
pub fn in_cluster_defaults() -> Result<Vec<ScrapeConfig>, ScrapeError> {
    serde_yaml::from_str(IN_CLUSTER_DEFAULTS).map_err(|e| ScrapeError::Config(format!("embedded defaults: {e}")))
}
