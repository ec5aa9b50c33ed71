//! `kubernetes_sd_configs` (roles pod and node) over a `ClusterView`: the exact
//! `__meta_kubernetes_*` labels and addresses Prometheus's `discovery/kubernetes` gives, the
//! config refusals, the embedded in-cluster jobs' relabeling, and re-syncing targets when the
//! view's generation changes (unchanged targets keep running, removed ones go stale).

use monitoring_rs::collect::meta::{ClusterView, ContainerMeta, NodeMeta, PodMeta, PortMeta, StaticCluster};
use monitoring_rs::collect::scrape::{KubernetesProvider, ScrapeConfig, Scraper, TargetProvider, in_cluster_defaults};
use monitoring_rs::ingest::{Limits, MetricsIngester};
use monitoring_rs::model::{MatchOp, Matcher, is_stale_nan};
use monitoring_rs::storage::metrics::{MetricsDb, MetricsOptions, MetricsReader};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A view the test changes: pods, a deleted set and the generation.
#[derive(Default)]
struct View {
    cluster: Mutex<StaticCluster>,
    deleted: Mutex<HashSet<String>>,
    generation: AtomicU64,
}

impl View {
    fn set(&self, pods: Vec<PodMeta>, deleted: &[&str]) {
        self.cluster.lock().unwrap().pods = pods.into_iter().map(Arc::new).collect();
        *self.deleted.lock().unwrap() = deleted.iter().map(|s| s.to_string()).collect();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl ClusterView for View {
    fn pods(&self) -> Vec<Arc<PodMeta>> {
        self.cluster.lock().unwrap().pods()
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<PodMeta>> {
        self.cluster.lock().unwrap().pod(namespace, name)
    }
    fn deleted(&self, pod: &PodMeta) -> bool {
        self.deleted.lock().unwrap().contains(&pod.name)
    }
    fn node(&self) -> Option<Arc<NodeMeta>> {
        self.cluster.lock().unwrap().node()
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

fn port(name: &str, port: u16) -> PortMeta {
    PortMeta {
        name: name.into(),
        port,
        protocol: "TCP".into(),
    }
}

fn container(name: &str, init: bool, ports: Vec<PortMeta>) -> ContainerMeta {
    ContainerMeta {
        name: name.into(),
        image: format!("example/{name}:1"),
        id: format!("containerd://{name}-id"),
        init,
        ports,
    }
}

fn pod(ns: &str, name: &str, ip: &str, annotations: &[(&str, &str)], containers: Vec<ContainerMeta>) -> PodMeta {
    PodMeta {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node_name: "node-a".into(),
        pod_ip: ip.into(),
        host_ip: "10.0.0.1".into(),
        phase: "Running".into(),
        ready: true,
        labels: BTreeMap::from([("app.kubernetes.io/name".to_string(), name.to_string())]),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        controller: Some(("ReplicaSet".into(), format!("{name}-7d4b9c"))),
        containers,
    }
}

fn node() -> NodeMeta {
    NodeMeta {
        name: "node-a".into(),
        uid: "uid-node".into(),
        labels: BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]),
        annotations: BTreeMap::new(),
        addresses: vec![
            ("Hostname".into(), "node-a".into()),
            ("InternalIP".into(), "10.0.0.1".into()),
            ("ExternalIP".into(), "203.0.113.7".into()),
        ],
        kubelet_port: 10250,
        provider_id: "aws:///eu-west-1a/i-0abc".into(),
    }
}

fn sd_job(sd: &str) -> ScrapeConfig {
    serde_yaml::from_str(&format!("job_name: k\nkubernetes_sd_configs: [{sd}]\n")).unwrap()
}

/// The discovered targets (group and target labels merged), each rendered `k=v` sorted, against
/// `want`: every label must be listed.
fn check(view: &Arc<View>, sd: &str, want: &[&[&str]]) {
    let job = sd_job(sd);
    let mut got: Vec<Vec<String>> = KubernetesProvider(Arc::clone(view) as Arc<dyn ClusterView>)
        .groups(&job)
        .into_iter()
        .flat_map(|g| {
            g.targets
                .iter()
                .map(|t| {
                    let mut all = g.labels.clone();
                    all.extend(t.clone());
                    all.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    got.sort();
    let mut want: Vec<Vec<String>> = want
        .iter()
        .map(|t| {
            let mut v: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "{sd}");
}

const WEB_POD: &[&str] = &[
    "__meta_kubernetes_namespace=shop",
    "__meta_kubernetes_pod_name=web",
    "__meta_kubernetes_pod_ip=10.1.0.5",
    "__meta_kubernetes_pod_ready=true",
    "__meta_kubernetes_pod_phase=Running",
    "__meta_kubernetes_pod_node_name=node-a",
    "__meta_kubernetes_pod_host_ip=10.0.0.1",
    "__meta_kubernetes_pod_uid=uid-web",
    "__meta_kubernetes_pod_label_app_kubernetes_io_name=web",
    "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name=true",
    "__meta_kubernetes_pod_annotation_prometheus_io_scrape=true",
    "__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape=true",
    "__meta_kubernetes_pod_controller_kind=ReplicaSet",
    "__meta_kubernetes_pod_controller_name=web-7d4b9c",
];

fn with(base: &[&str], extra: &[&str]) -> Vec<&'static str> {
    base.iter()
        .chain(extra)
        .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
        .collect()
}

#[test]
fn discovery_labels() {
    let view = Arc::new(View::default());
    let web = pod(
        "shop",
        "web",
        "10.1.0.5",
        &[("prometheus.io/scrape", "true")],
        vec![
            container("init-db", true, vec![]),
            container("app", false, vec![port("http", 8080), port("metrics", 9100)]),
            container("sidecar", false, vec![]),
        ],
    );
    let starting = pod(
        "shop",
        "starting",
        "",
        &[],
        vec![container("app", false, vec![port("http", 80)])],
    );
    let gone = pod("shop", "gone", "10.1.0.9", &[], vec![container("app", false, vec![])]);
    let other_ns = pod(
        "kube-system",
        "dns",
        "fd00::5",
        &[],
        vec![container("dns", false, vec![port("dns", 53)])],
    );
    view.set(vec![web, starting, gone, other_ns], &["gone"]);
    view.cluster.lock().unwrap().node = Some(Arc::new(node()));

    let c = |name: &str, init: bool| {
        vec![
            format!("__meta_kubernetes_pod_container_name={name}"),
            format!("__meta_kubernetes_pod_container_id=containerd://{name}-id"),
            format!("__meta_kubernetes_pod_container_image=example/{name}:1"),
            format!("__meta_kubernetes_pod_container_init={init}"),
        ]
    };
    let leak =
        |v: Vec<String>| -> Vec<&'static str> { v.into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect() };
    let port_labels = |name: &str, n: u16| {
        leak(vec![
            format!("__address__=10.1.0.5:{n}"),
            format!("__meta_kubernetes_pod_container_port_name={name}"),
            format!("__meta_kubernetes_pod_container_port_number={n}"),
            "__meta_kubernetes_pod_container_port_protocol=TCP".to_string(),
        ])
    };
    let http = with(&with(WEB_POD, &leak(c("app", false))), &port_labels("http", 8080));
    let metrics = with(&with(WEB_POD, &leak(c("app", false))), &port_labels("metrics", 9100));
    let sidecar = with(&with(WEB_POD, &leak(c("sidecar", false))), &["__address__=10.1.0.5"]);
    let init = with(&with(WEB_POD, &leak(c("init-db", true))), &["__address__=10.1.0.5"]);
    check(
        &view,
        "{role: pod, namespaces: {names: [shop]}}",
        &[&http, &metrics, &sidecar, &init],
    );
    // The IPv6 pod in another namespace: bracketed address; no namespace filter lists both.
    let dns: Vec<&str> = vec![
        "__address__=[fd00::5]:53",
        "__meta_kubernetes_namespace=kube-system",
        "__meta_kubernetes_pod_name=dns",
        "__meta_kubernetes_pod_ip=fd00::5",
        "__meta_kubernetes_pod_ready=true",
        "__meta_kubernetes_pod_phase=Running",
        "__meta_kubernetes_pod_node_name=node-a",
        "__meta_kubernetes_pod_host_ip=10.0.0.1",
        "__meta_kubernetes_pod_uid=uid-dns",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name=dns",
        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name=true",
        "__meta_kubernetes_pod_controller_kind=ReplicaSet",
        "__meta_kubernetes_pod_controller_name=dns-7d4b9c",
        "__meta_kubernetes_pod_container_name=dns",
        "__meta_kubernetes_pod_container_id=containerd://dns-id",
        "__meta_kubernetes_pod_container_image=example/dns:1",
        "__meta_kubernetes_pod_container_init=false",
        "__meta_kubernetes_pod_container_port_name=dns",
        "__meta_kubernetes_pod_container_port_number=53",
        "__meta_kubernetes_pod_container_port_protocol=TCP",
    ];
    check(&view, "{role: pod, namespaces: {names: [kube-system]}}", &[&dns]);
    check(&view, "{role: pod}", &[&http, &metrics, &sidecar, &init, &dns]);
    check(&view, "{role: pod, namespaces: {names: [nowhere]}}", &[]);
    check(
        &view,
        "{role: node}",
        &[&[
            "__address__=10.0.0.1:10250",
            "instance=node-a",
            "__meta_kubernetes_node_name=node-a",
            "__meta_kubernetes_node_provider_id=aws:///eu-west-1a/i-0abc",
            "__meta_kubernetes_node_label_kubernetes_io_os=linux",
            "__meta_kubernetes_node_labelpresent_kubernetes_io_os=true",
            "__meta_kubernetes_node_address_Hostname=node-a",
            "__meta_kubernetes_node_address_InternalIP=10.0.0.1",
            "__meta_kubernetes_node_address_ExternalIP=203.0.113.7",
        ]],
    );
}

/// A job config must be refused with an error containing `want`.
fn check_refused(yaml: &str, want: &str) {
    let cfgs: Vec<ScrapeConfig> = serde_yaml::from_str(yaml).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ingester = {
        let dir = tempfile::tempdir().unwrap();
        let db = MetricsDb::open(MetricsOptions::new(dir.path())).unwrap();
        Arc::new(MetricsIngester::new(db, Limits::default()))
    };
    let err = rt.block_on(async { Scraper::start(cfgs, None, ingester).err() });
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(want), "{yaml}: {err:?} lacks {want:?}");
}

#[test]
fn config_refusals() {
    check_refused(
        "- {job_name: a, kubernetes_sd_configs: [{role: pod, api_server: 'https://x'}]}",
        "`api_server` is not supported",
    );
    check_refused(
        "- {job_name: a, kubernetes_sd_configs: [{role: pod, kubeconfig_file: /k}]}",
        "`kubeconfig_file` is not supported",
    );
    check_refused(
        "- {job_name: a, kubernetes_sd_configs: [{role: node, selectors: []}]}",
        "`selectors` is not supported",
    );
    check_refused(
        "- {job_name: a, kubernetes_sd_configs: [{role: endpoints}]}",
        "role \"endpoints\" is not supported",
    );
    check_refused("- {job_name: a, scheme: ftp}", "scheme \"ftp\"");
    check_refused(
        "- {job_name: a, bearer_token: x, bearer_token_file: /y}",
        "at most one of",
    );
    check_refused(
        "- {job_name: a, bearer_token: x, basic_auth: {username: u}}",
        "at most one of",
    );
    check_refused(
        "- {job_name: a, scheme: https, tls_config: {ca_file: /nonexistent/ca.crt}}",
        "ca_file /nonexistent/ca.crt",
    );
    check_refused("- {job_name: a, body_size_limit: 10XB}", "body_size_limit");
}

/// Final targets of the embedded in-cluster jobs over a view: (pool, labels, url) sorted, and
/// how many discovered targets relabeling dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_defaults_relabel() {
    let dir = tempfile::tempdir().unwrap();
    let db = MetricsDb::open(MetricsOptions::new(dir.path())).unwrap();
    let ingester = Arc::new(MetricsIngester::new(db, Limits::default()));
    let view = Arc::new(View::default());
    fn annotated(port: &str) -> Vec<(&str, &str)> {
        vec![
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", port),
            ("prometheus.io/path", "/custom"),
            ("prometheus.io/param_format", "prometheus"),
        ]
    }
    let mut done = pod(
        "batch",
        "job-1",
        "127.0.0.1",
        &annotated("1"),
        vec![container("c", false, vec![])],
    );
    done.phase = "Succeeded".into();
    view.set(
        vec![
            // Two ports, one port annotation: one target (the per-port targets collapse).
            pod(
                "shop",
                "web",
                "127.0.0.1",
                &annotated("1"),
                vec![container("app", false, vec![port("a", 8080), port("b", 8081)])],
            ),
            pod(
                "shop",
                "v6",
                "fd00::5",
                &[("prometheus.io/scrape", "true"), ("prometheus.io/port", "9")],
                vec![container("app", false, vec![])],
            ),
            pod(
                "shop",
                "plain",
                "127.0.0.1",
                &[],
                vec![container("app", false, vec![port("a", 8080)])],
            ),
            done,
        ],
        &[],
    );
    let mut n = node();
    n.addresses = vec![("InternalIP".into(), "127.0.0.1".into())];
    n.kubelet_port = 1;
    view.cluster.lock().unwrap().node = Some(Arc::new(n));
    let scraper = Scraper::start(
        in_cluster_defaults().unwrap(),
        Some(view.clone() as Arc<dyn ClusterView>),
        ingester,
    )
    .unwrap();
    let (mut got, dropped) = {
        let st = scraper.state();
        let st = st.lock();
        let got: Vec<String> = st
            .active
            .iter()
            .map(|t| {
                let t = t.lock();
                format!("{} {:?} {}", t.scrape_pool, t.labels, t.scrape_url)
            })
            .collect();
        (got, st.dropped.len())
    };
    got.sort();
    let web = r#"{"app_kubernetes_io_name": "web", "instance": "127.0.0.1:1", "job": "kubernetes-pods", "namespace": "shop", "node": "node-a", "pod": "web"}"#;
    let v6 = r#"{"app_kubernetes_io_name": "v6", "instance": "[fd00::5]:9", "job": "kubernetes-pods", "namespace": "shop", "node": "node-a", "pod": "v6"}"#;
    let kubelet = |job: &str| format!(r#"{{"instance": "node-a", "job": "{job}", "node": "node-a"}}"#);
    let mut want = vec![
        format!("kubernetes-pods {web} http://127.0.0.1:1/custom?format=prometheus"),
        format!("kubernetes-pods {v6} http://[fd00::5]:9/metrics"),
        format!("kubelet {} https://127.0.0.1:1/metrics", kubelet("kubelet")),
        format!(
            "kubelet-cadvisor {} https://127.0.0.1:1/metrics/cadvisor",
            kubelet("kubelet-cadvisor")
        ),
    ];
    want.sort();
    assert_eq!(got, want);
    // plain (not annotated) and job-1 (Succeeded): dropped, per discovered target.
    assert_eq!(dropped, 2);
    scraper.shutdown().await;
}

/// A target serving `up_here 1` for as long as the test runs.
fn serve() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let b = "here 1\n";
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
        }
    });
    port
}

/// Last sample of `here` per pod label: a number or "stale".
fn last_here(db: &MetricsDb) -> BTreeMap<String, String> {
    let m = [Matcher::new(MatchOp::Equal, "__name__", "here").unwrap()];
    db.select(&m, i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| {
            let pod = s
                .labels
                .iter()
                .find(|l| l.name == "pod")
                .map_or(String::new(), |l| l.value.to_string());
            let last = s.samples(i64::MIN, i64::MAX).last().map(|x| x.v);
            let v = match last {
                Some(v) if is_stale_nan(v) => "stale".to_string(),
                Some(v) => v.to_string(),
                None => "none".to_string(),
            };
            (pod, v)
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let db = MetricsDb::open(MetricsOptions::new(dir.path())).unwrap();
    let ingester = Arc::new(MetricsIngester::new(Arc::clone(&db), Limits::default()));
    let port = serve().to_string();
    let ann = [("prometheus.io/scrape", "true"), ("prometheus.io/port", port.as_str())];
    let p = |name: &str| pod("shop", name, "127.0.0.1", &ann, vec![container("app", false, vec![])]);
    let view = Arc::new(View::default());
    view.set(vec![p("a")], &[]);
    let mut cfgs = in_cluster_defaults().unwrap();
    cfgs.truncate(1);
    cfgs[0].scrape_interval = "100ms".into();
    let scraper = Scraper::start(cfgs, Some(view.clone() as Arc<dyn ClusterView>), ingester).unwrap();
    let state = scraper.state();
    let pods_up = |want: &[&str]| {
        let st = state.lock();
        let mut got: Vec<String> = st
            .active
            .iter()
            .filter(|t| t.lock().health == "up")
            .map(|t| t.lock().labels["pod"].clone())
            .collect();
        got.sort();
        got == want
    };
    wait_for("a up", || pods_up(&["a"]));
    let a_status = Arc::clone(&state.lock().active[0]);

    // b appears: a keeps its loop (same status object, still up), b starts.
    view.set(vec![p("a"), p("b")], &[]);
    wait_for("a and b up", || pods_up(&["a", "b"]));
    assert!(
        state.lock().active.iter().any(|t| Arc::ptr_eq(t, &a_status)),
        "a was restarted"
    );

    // a is deleted (kept in the view for its late log lines): its target goes, its series stale.
    view.set(vec![p("a"), p("b")], &["a"]);
    wait_for("a gone", || state.lock().active.len() == 1);
    wait_for("a stale", || last_here(&db).get("a").is_some_and(|v| v == "stale"));
    assert_eq!(last_here(&db).get("b").map(String::as_str), Some("1"));
    scraper.shutdown().await;
    assert_eq!(
        last_here(&db),
        BTreeMap::from([
            ("a".to_string(), "stale".to_string()),
            ("b".to_string(), "stale".to_string())
        ])
    );
}
