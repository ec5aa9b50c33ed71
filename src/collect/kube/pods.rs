//! The pod and node cache: what the pods and node watchers saw, stripped to [`PodMeta`]/[`NodeMeta`]
//! the moment it arrives.
//!
//! Deleted pods stay for `deleted_pod_grace` (marked, not removed) so that a file the tailer meets
//! after the pod's deletion (a last container's log, a restart of this process) still gets the pod's
//! labels: the short-lived-pod failure of vectordotdev/vector#19472 and fluent/fluent-bit#2670. The
//! cache is keyed by UID, not name: a StatefulSet's `web-0` deleted and recreated is two entries, and
//! the tailer asks with the UID from the log path (`<ns>_<pod>_<uid>`), so the old pod's files keep
//! the old pod's labels (vectordotdev/vector#13467). A static pod's path carries its config hash,
//! which its mirror pod exposes as the `kubernetes.io/config.hash` annotation.
//!
//! A node has some tens of pods (110 at most by default), so lookups scan a `Vec`: no index to
//! keep in step, and a scan of 110 entries is below a microsecond next to a file open per lookup.

use crate::collect::logs::{LabelProvider, PodRef};
use crate::collect::meta::{ClusterView, ContainerMeta, NodeMeta, PodMeta, PortMeta};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::Event;
use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONFIG_HASH: &str = "kubernetes.io/config.hash";

struct Entry {
    pod: Arc<PodMeta>,
    deleted_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    pods: Vec<Entry>,
    node: Option<Arc<NodeMeta>>,
    /// UIDs listed since the last `Init`: at `InitDone`, live pods not among them were deleted
    /// while the watch was down.
    relist: Option<HashSet<String>>,
    node_relisted: bool,
}

pub struct PodCache {
    inner: RwLock<Inner>,
    generation: AtomicU64,
    listed: AtomicBool,
    grace: Duration,
    /// The watchers' state: while the pods watch is synced, an unknown pod is `pending`.
    stats: Option<Arc<super::KubeStats>>,
}

impl PodCache {
    pub fn new(grace: Duration) -> Self {
        PodCache {
            inner: RwLock::new(Inner::default()),
            generation: AtomicU64::new(0),
            listed: AtomicBool::new(false),
            grace,
            stats: None,
        }
    }

    /// Reads the pods watch's health from `stats` (see [`LabelProvider::pending`]).
    pub fn watched_by(mut self, stats: Arc<super::KubeStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// The first pod list has been applied.
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn visible(&self, e: &Entry, now: Instant) -> bool {
        e.deleted_at
            .is_none_or(|d| now.saturating_duration_since(d) < self.grace)
    }

    /// A pod added or changed (also used by tests without a watcher).
    pub fn apply(&self, pod: PodMeta) {
        let mut g = self.inner.write();
        if let Some(seen) = g.relist.as_mut() {
            seen.insert(pod.uid.clone());
        }
        let pod = Arc::new(pod);
        match g.pods.iter_mut().find(|e| e.pod.uid == pod.uid) {
            Some(e) => {
                e.pod = pod;
                e.deleted_at = None;
            }
            None => g.pods.push(Entry { pod, deleted_at: None }),
        }
        drop(g);
        self.bump();
    }

    /// A pod deleted: kept, marked, until its grace ends.
    pub fn delete(&self, uid: &str, now: Instant) {
        let mut g = self.inner.write();
        if let Some(e) = g.pods.iter_mut().find(|e| e.pod.uid == uid)
            && e.deleted_at.is_none()
        {
            e.deleted_at = Some(now);
        }
        drop(g);
        self.bump();
    }

    /// Drops deleted pods whose grace has ended.
    pub fn prune(&self, now: Instant) {
        let mut g = self.inner.write();
        let before = g.pods.len();
        let grace = self.grace;
        g.pods
            .retain(|e| e.deleted_at.is_none_or(|d| now.saturating_duration_since(d) < grace));
        let changed = g.pods.len() != before;
        drop(g);
        if changed {
            self.bump();
        }
    }

    pub fn on_pod_event(&self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.inner.write().relist = Some(HashSet::new()),
            Event::Apply(p) | Event::InitApply(p) => {
                if let Some(m) = pod_meta(&p) {
                    self.apply(m);
                }
            }
            Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_deref() {
                    self.delete(uid, Instant::now());
                }
            }
            Event::InitDone => {
                let now = Instant::now();
                let mut g = self.inner.write();
                if let Some(seen) = g.relist.take() {
                    // Deleted while the watch was down: the re-list simply no longer has them.
                    for e in g.pods.iter_mut() {
                        if e.deleted_at.is_none() && !seen.contains(&e.pod.uid) {
                            e.deleted_at = Some(now);
                        }
                    }
                }
                drop(g);
                self.listed.store(true, Ordering::Release);
                self.bump();
            }
        }
    }

    pub fn on_node_event(&self, ev: Event<Node>) {
        let mut g = self.inner.write();
        match ev {
            Event::Init => g.node_relisted = false,
            Event::Apply(n) | Event::InitApply(n) => {
                g.node = Some(Arc::new(node_meta(&n)));
                g.node_relisted = true;
            }
            Event::Delete(_) => g.node = None,
            Event::InitDone => {
                if !g.node_relisted {
                    g.node = None;
                }
            }
        }
        drop(g);
        self.bump();
    }

    /// The pod a log path names: by UID (or a static pod's config hash), so a reused name never
    /// lends its labels to the other pod's files; by name only when the path has no UID.
    pub fn lookup(&self, namespace: &str, name: &str, uid: &str) -> Option<Arc<PodMeta>> {
        if uid.is_empty() {
            return self.pod(namespace, name);
        }
        let now = Instant::now();
        let g = self.inner.read();
        g.pods
            .iter()
            .filter(|e| self.visible(e, now))
            .find(|e| e.pod.uid == uid || e.pod.annotations.get(CONFIG_HASH).is_some_and(|h| h == uid))
            .map(|e| Arc::clone(&e.pod))
    }
}

impl ClusterView for PodCache {
    fn pods(&self) -> Vec<Arc<PodMeta>> {
        let now = Instant::now();
        let g = self.inner.read();
        g.pods
            .iter()
            .filter(|e| self.visible(e, now))
            .map(|e| Arc::clone(&e.pod))
            .collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodMeta>> {
        let now = Instant::now();
        let g = self.inner.read();
        let mut best: Option<&Entry> = None;
        for e in g
            .pods
            .iter()
            .filter(|e| e.pod.namespace == namespace && e.pod.name == name)
        {
            if !self.visible(e, now) {
                continue;
            }
            // The live pod first, else the most recently deleted one.
            let better = match best {
                None => true,
                Some(b) => match (b.deleted_at, e.deleted_at) {
                    (Some(_), None) => true,
                    (Some(x), Some(y)) => y > x,
                    _ => false,
                },
            };
            if better {
                best = Some(e);
            }
        }
        best.map(|e| Arc::clone(&e.pod))
    }

    fn deleted(&self, pod: &PodMeta) -> bool {
        let g = self.inner.read();
        g.pods
            .iter()
            .find(|e| e.pod.uid == pod.uid)
            .is_none_or(|e| e.deleted_at.is_some())
    }

    fn node(&self) -> Option<Arc<NodeMeta>> {
        self.inner.read().node.clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl LabelProvider for PodCache {
    fn pod_labels(&self, pod: &PodRef<'_>) -> Vec<(String, String)> {
        self.lookup(pod.namespace, pod.name, pod.uid)
            .map(|p| p.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// While the pods watch is synced, a pod it has not delivered is about to be: kubelet makes
    /// the log directory once the pod is bound to this node, the watch tells of the binding.
    /// With the watch down, nothing is pending (the tailer goes on with the path's labels).
    fn pending(&self, pod: &PodRef<'_>) -> bool {
        let synced = self
            .stats
            .as_ref()
            .is_some_and(|s| s.synced[super::Resource::Pods as usize].load(Ordering::Relaxed) == 1);
        synced && self.lookup(pod.namespace, pod.name, pod.uid).is_none()
    }
}

/// A pod stripped to what labelling and discovery use; `None` without a name or UID.
pub fn pod_meta(p: &Pod) -> Option<PodMeta> {
    let md = &p.metadata;
    let name = md.name.clone().filter(|n| !n.is_empty())?;
    let uid = md.uid.clone().filter(|u| !u.is_empty())?;
    let status = p.status.as_ref();
    let spec = p.spec.as_ref();
    let id_of = |statuses: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>, name: &str| {
        statuses
            .and_then(|s| s.iter().find(|c| c.name == name))
            .and_then(|c| c.container_id.clone())
            .unwrap_or_default()
    };
    let mut containers = Vec::new();
    let no_init = Vec::new();
    if let Some(spec) = spec {
        let lists = [
            (
                &spec.containers,
                false,
                status.and_then(|s| s.container_statuses.as_ref()),
            ),
            (
                spec.init_containers.as_ref().unwrap_or(&no_init),
                true,
                status.and_then(|s| s.init_container_statuses.as_ref()),
            ),
        ];
        for (list, init, statuses) in lists {
            for c in list {
                containers.push(ContainerMeta {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    id: id_of(statuses, &c.name),
                    init,
                    ports: c
                        .ports
                        .iter()
                        .flatten()
                        .map(|p| PortMeta {
                            name: p.name.clone().unwrap_or_default(),
                            port: u16::try_from(p.container_port).unwrap_or(0),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                        })
                        .collect(),
                });
            }
        }
    }
    Some(PodMeta {
        namespace: md.namespace.clone().unwrap_or_default(),
        name,
        uid,
        node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        pod_ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        host_ip: status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        labels: md.labels.clone().unwrap_or_default(),
        annotations: md.annotations.clone().unwrap_or_default(),
        controller: md
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone())),
        containers,
    })
}

pub fn node_meta(n: &Node) -> NodeMeta {
    let md = &n.metadata;
    let status = n.status.as_ref();
    NodeMeta {
        name: md.name.clone().unwrap_or_default(),
        uid: md.uid.clone().unwrap_or_default(),
        labels: md.labels.clone().unwrap_or_default(),
        annotations: md.annotations.clone().unwrap_or_default(),
        provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()).unwrap_or_default(),
        addresses: status
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().map(|a| (a.type_.clone(), a.address.clone())).collect())
            .unwrap_or_default(),
        kubelet_port: status
            .and_then(|s| s.daemon_endpoints.as_ref())
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .and_then(|k| u16::try_from(k.port).ok())
            .unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, uid: &str, app: &str) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ..Default::default()
        }
    }

    /// Steps are (op, name, uid, seconds after t0); lookups (name, uid, expected `app`) happen at
    /// t0 + 3600 s with a 300 s grace.
    fn check(steps: &[(&str, &str, &str, u64)], lookups: &[(&str, &str, Option<&str>)]) {
        let cache = PodCache::new(Duration::from_secs(300));
        let t0 = Instant::now() - Duration::from_secs(3600);
        for &(op, name, uid, at) in steps {
            let now = t0 + Duration::from_secs(at);
            match op {
                "add" => cache.apply(pod("ns", name, uid, &format!("{name}-{uid}"))),
                "del" => cache.delete(uid, now),
                "prune" => cache.prune(now),
                _ => unreachable!(),
            }
        }
        for &(name, uid, want) in lookups {
            let got = cache.lookup("ns", name, uid).map(|p| p.labels["app"].clone());
            assert_eq!(got.as_deref(), want, "lookup {name} {uid}");
        }
    }

    /// An unknown pod is pending only while the pods watch is synced.
    #[test]
    fn unknown_pods_are_pending_while_the_watch_is_synced() {
        let stats = Arc::new(super::super::KubeStats::default());
        let cache = PodCache::new(Duration::from_secs(300)).watched_by(Arc::clone(&stats));
        cache.apply(pod("ns", "web-0", "u0", "web"));
        let pending = |name: &str, uid: &str| {
            cache.pending(&PodRef {
                namespace: "ns",
                name,
                uid,
            })
        };
        assert_eq!(
            [pending("web-0", "u0"), pending("web-1", "u1")],
            [false, false],
            "not synced"
        );
        stats.synced[super::super::Resource::Pods as usize].store(1, Ordering::Relaxed);
        assert_eq!([pending("web-0", "u0"), pending("web-1", "u1")], [false, true]);
        assert!(!PodCache::new(Duration::from_secs(1)).pending(&PodRef {
            namespace: "ns",
            name: "web-1",
            uid: "u1"
        }));
    }

    #[test]
    fn deletion_grace_and_name_reuse() {
        // Deleted 3590 s after t0 (10 s ago): still visible; deleted at 100 s: gone.
        check(
            &[("add", "web-0", "a", 0), ("del", "web-0", "a", 3590)],
            &[("web-0", "a", Some("web-0-a")), ("web-0", "", Some("web-0-a"))],
        );
        check(
            &[("add", "web-0", "a", 0), ("del", "web-0", "a", 100)],
            &[("web-0", "a", None), ("web-0", "", None)],
        );
        // Name reuse: the old UID keeps its labels within the grace, the new UID has its own, and a
        // lookup by name prefers the live pod.
        check(
            &[
                ("add", "web-0", "a", 0),
                ("del", "web-0", "a", 3590),
                ("add", "web-0", "b", 3591),
            ],
            &[
                ("web-0", "a", Some("web-0-a")),
                ("web-0", "b", Some("web-0-b")),
                ("web-0", "", Some("web-0-b")),
                ("web-0", "c", None),
            ],
        );
        // Prune removes only what is past the grace.
        check(
            &[
                ("add", "x", "1", 0),
                ("add", "y", "2", 0),
                ("del", "x", "1", 100),
                ("del", "y", "2", 3590),
                ("prune", "", "", 3600),
            ],
            &[("x", "1", None), ("y", "2", Some("y-2"))],
        );
    }
}
