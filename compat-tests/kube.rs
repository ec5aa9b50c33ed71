//! Kubernetes metadata and events end to end: the real binary against a fake Kubernetes API server
//! (plain HTTP/1.1 over `std::net`, in this process; not a mocked client trait) that speaks what
//! kube-runtime's watcher relies on: lists with `resourceVersion`, `limit`/`continue` paging,
//! chunked NDJSON watch streams, BOOKMARK events, an ERROR 410 Gone when the requested version is
//! older than the kept history, watches closed early, deletions while no watch is open (seen only
//! as absence at the re-list), pod names reused with a new UID, realistic pod JSON (owner
//! references, container statuses with `containerd://` IDs, a static mirror pod).
//!
//! What the test checks, through the binary's public surfaces only (`/loki/api/v1/query_range`,
//! `/metrics`): pod-log files under a temp `/var/log/pods` get their pod's labels, also a pod's first
//! lines written before the watch delivered the pod; a deleted pod's
//! files still get them within `deleted_pod_grace`, not after; the API down means path labels and
//! the error counter, and it recovers by itself; events are stored as `{job="kubernetes-events"}`
//! streams, once, across a 410 re-list and a process restart.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The fake API server.

/// One resource's watch channel: lines to send, `None` to end the stream (the server closing it).
type WatchTx = Sender<Option<String>>;

#[derive(Default)]
struct ApiState {
    rv: u64,
    /// resource ("pods", "nodes", "events") -> uid -> object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// (rv, resource, type, object): what a watch from an older version replays.
    history: Vec<(u64, &'static str, &'static str, Value)>,
    /// Watches from a version below this get 410 Gone (history compacted).
    min_rv: u64,
    watchers: Vec<(&'static str, String, WatchTx)>,
    /// Every request's path and query, in order.
    requests: Vec<String>,
    /// Items per list page at most when a `limit` is asked (a server may return fewer). Our client
    /// never pages (cached lists are unpaged), the fake still answers a paged list as the API does.
    page: usize,
    down: bool,
}

#[derive(Clone)]
struct FakeApi {
    st: Arc<Mutex<ApiState>>,
    addr: SocketAddr,
}

fn resource_of(path: &str) -> Option<&'static str> {
    match path {
        "/api/v1/pods" => Some("pods"),
        "/api/v1/nodes" => Some("nodes"),
        "/api/v1/events" => Some("events"),
        _ => None,
    }
}

fn query_param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3D", "=").replace("%2F", "/").replace("%2C", ","))
    })
}

/// `spec.nodeName=node-a` or `metadata.name=node-a` against an object.
fn selected(obj: &Value, selector: &Option<String>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| {
        let Some((path, want)) = term.split_once('=') else {
            return true;
        };
        let ptr = format!("/{}", path.replace('.', "/"));
        obj.pointer(&ptr).and_then(Value::as_str) == Some(want)
    })
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "nodes" => "Node",
        _ => "Event",
    }
}

impl FakeApi {
    fn start(addr: Option<SocketAddr>) -> FakeApi {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))).unwrap();
        let addr = listener.local_addr().unwrap();
        let api = FakeApi {
            st: Arc::new(Mutex::new(ApiState {
                rv: 100,
                page: 2,
                ..Default::default()
            })),
            addr,
        };
        let a = api.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if a.st.lock().unwrap().down {
                    // Stopped: nothing more is accepted; the listener goes with this thread.
                    return;
                }
                let a = a.clone();
                std::thread::spawn(move || a.serve(conn));
            }
        });
        api
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and ends every open watch: the API is gone.
    fn stop(&self) {
        self.st.lock().unwrap().down = true;
        self.close_watches();
        // Wake the accept loop so it sees `down`.
        let _ = TcpStream::connect(self.addr);
    }

    fn serve(&self, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut out = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let target = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            if self.st.lock().unwrap().down {
                return;
            }
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            self.st.lock().unwrap().requests.push(target.clone());
            let Some(res) = resource_of(path) else {
                let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            if query_param(query, "watch").as_deref() == Some("true") {
                self.watch(out, res, query);
                return;
            }
            let body = self.list(res, query);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }

    fn list(&self, res: &'static str, query: &str) -> String {
        let st = self.st.lock().unwrap();
        let sel = query_param(query, "fieldSelector");
        let items: Vec<&Value> = st
            .objects
            .get(res)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|o| selected(o, &sel))
            .collect();
        let from: usize = query_param(query, "continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit = query_param(query, "limit")
            .and_then(|l| l.parse().ok())
            .map_or(usize::MAX, |l: usize| l.min(st.page));
        let page: Vec<&Value> = items.iter().skip(from).take(limit).copied().collect();
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        if from + page.len() < items.len() {
            meta["continue"] = json!((from + page.len()).to_string());
        }
        json!({"kind": format!("{}List", kind_of(res)), "apiVersion": "v1", "metadata": meta, "items": page})
            .to_string()
    }

    fn watch(&self, mut out: TcpStream, res: &'static str, query: &str) {
        let sel = query_param(query, "fieldSelector");
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let timeout = query_param(query, "timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290u64);
        let (tx, rx): (WatchTx, Receiver<Option<String>>) = channel();
        let mut first = Vec::new();
        {
            let mut st = self.st.lock().unwrap();
            if from < st.min_rv {
                first.push(
                    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": format!("too old resource version: {from} ({})", st.min_rv),
                        "reason": "Expired", "code": 410}})
                    .to_string(),
                );
            } else {
                for (rv, r, ty, obj) in &st.history {
                    if *rv > from && *r == res && selected(obj, &sel) {
                        first.push(json!({"type": ty, "object": obj}).to_string());
                    }
                }
                st.watchers.push((res, sel.clone().unwrap_or_default(), tx));
            }
        }
        if write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err()
        {
            return;
        }
        let chunk = |out: &mut TcpStream, line: &str| -> bool {
            let data = format!("{line}\n");
            write!(out, "{:x}\r\n{data}\r\n", data.len()).is_ok() && out.flush().is_ok()
        };
        let gone = first.first().is_some_and(|l| l.contains("\"ERROR\""));
        for l in &first {
            if !chunk(&mut out, l) {
                return;
            }
        }
        if !gone {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                    Ok(Some(l)) => {
                        if !chunk(&mut out, &l) {
                            return;
                        }
                    }
                    Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
        let _ = write!(out, "0\r\n\r\n");
        let _ = out.flush();
        let _ = out.shutdown(std::net::Shutdown::Both);
    }

    /// Adds, replaces or (with `ty` "DELETED") removes an object, and tells the open watches.
    fn change(&self, res: &'static str, ty: &'static str, mut obj: Value) {
        let mut st = self.st.lock().unwrap();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
        if ty == "DELETED" {
            st.objects.entry(res).or_default().remove(&uid);
        } else {
            st.objects.entry(res).or_default().insert(uid, obj.clone());
        }
        let rv = st.rv;
        st.history.push((rv, res, ty, obj.clone()));
        let line = json!({"type": ty, "object": obj}).to_string();
        st.watchers.retain(|(r, sel, tx)| {
            let sel = (!sel.is_empty()).then(|| sel.clone());
            *r != res || !selected(&obj, &sel) || tx.send(Some(line.clone())).is_ok()
        });
    }

    /// A change nobody hears of: made while the watches are down, and history compacted past it, so
    /// a re-watch gets 410 Gone and only the re-list shows it.
    fn change_unseen(&self, res: &'static str, ty: &'static str, obj: Value) {
        self.close_watches();
        let mut st = self.st.lock().unwrap();
        let watchers = std::mem::take(&mut st.watchers);
        drop(st);
        self.change(res, ty, obj);
        let mut st = self.st.lock().unwrap();
        st.min_rv = st.rv + 1;
        st.history.clear();
        st.watchers = watchers;
    }

    /// A BOOKMARK on every open watch; returns its version.
    fn bookmark(&self) -> u64 {
        let mut st = self.st.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        for (res, _, tx) in &st.watchers {
            let line = json!({"type": "BOOKMARK", "object": {"kind": kind_of(res), "apiVersion": "v1",
                "metadata": {"resourceVersion": rv.to_string()}}})
            .to_string();
            let _ = tx.send(Some(line));
        }
        rv
    }

    /// Ends every open watch stream cleanly (as the server does at `timeoutSeconds`).
    fn close_watches(&self) {
        let mut st = self.st.lock().unwrap();
        for (_, _, tx) in st.watchers.drain(..) {
            let _ = tx.send(None);
        }
    }

    fn requests(&self) -> Vec<String> {
        self.st.lock().unwrap().requests.clone()
    }

    fn wait_request(&self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !self.requests().iter().any(|r| pred(r)) {
            assert!(
                Instant::now() < deadline,
                "no request {what}; got {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Realistic objects.

fn hex64(seed: &str) -> String {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{h:016x}").repeat(4)
}

/// A pod IP of its own per UID: discovery keeps one target per distinct label set, as Prometheus does.
fn pod_ip(uid: &str) -> String {
    format!("10.244.0.{}", uid.bytes().map(u32::from).sum::<u32>() % 250 + 2)
}

fn pod(ns: &str, name: &str, uid: &str, node: &str, labels: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": ns, "uid": uid, "resourceVersion": "1",
            "creationTimestamp": "2026-11-21T08:00:00Z",
            "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-'),
                                 "uid": format!("owner-{uid}"), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-21T08:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "nginx:1.27",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
            "initContainers": [{"name": "init", "image": "busybox:1.36"}]
        },
        "status": {
            "phase": "Running", "podIP": pod_ip(uid), "hostIP": "192.168.1.10",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "containerID": format!("containerd://{}", hex64(uid)),
                                   "restartCount": 1, "ready": true, "image": "docker.io/library/nginx:1.27",
                                   "imageID": "docker.io/library/nginx@sha256:abc",
                                   "state": {"running": {"startedAt": "2026-11-21T08:00:05Z"}},
                                   "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                                 "containerID": format!("containerd://{}", hex64(&format!("{uid}-0")))}}}],
            "initContainerStatuses": [{"name": "init", "containerID": format!("containerd://{}", hex64(&format!("{uid}-i"))),
                                       "restartCount": 0, "ready": false, "image": "busybox:1.36", "imageID": "",
                                       "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
        }
    })
}

fn mirror_pod(node: &str, hash: &str) -> Value {
    let mut p = pod(
        "kube-system",
        &format!("kube-apiserver-{node}"),
        "mirror-uid-1",
        node,
        json!({"component": "kube-apiserver", "tier": "control-plane"}),
    );
    p["metadata"]["annotations"] = json!({
        "kubernetes.io/config.hash": hash, "kubernetes.io/config.mirror": hash,
        "kubernetes.io/config.source": "file", "kubernetes.io/config.seen": "2026-11-21T08:00:00Z"});
    p["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": "node-uid", "controller": true}]);
    p
}

fn node(name: &str) -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "uid": "node-uid", "resourceVersion": "1", "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": name}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}
    })
}

/// `obj` is the involved object (kind, namespace, name); `rt` the reason and type.
fn event(uid: &str, obj: (&str, &str, &str), rt: (&str, &str), count: i64, last: &str, msg: &str) -> Value {
    let (kind, ns, name) = obj;
    let (reason, ty) = rt;
    json!({
        "kind": "Event", "apiVersion": "v1",
        "metadata": {"name": format!("{name}.{uid}"), "namespace": if ns.is_empty() { "default" } else { ns },
                     "uid": uid, "resourceVersion": "1", "creationTimestamp": "2026-11-21T08:00:00Z"},
        "involvedObject": {"kind": kind, "namespace": ns, "name": name, "apiVersion": "v1"},
        "reason": reason, "type": ty, "count": count, "message": msg,
        "source": {"component": "kubelet", "host": "node-a"},
        "firstTimestamp": "2026-11-21T08:00:00Z", "lastTimestamp": last
    })
}

// ---------------------------------------------------------------------------------------------
// The binary, the log tree, and what the store holds.

fn spawn(s: &mut Server) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log)
        .unwrap();
    s.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.data_dir)
        .arg("--listen")
        .arg(s.addr.to_string())
        .arg("--config")
        .arg(s.config.as_ref().unwrap())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    s.child = Some(child);
    s.wait_ready();
}

fn start(tmp: &Path, api: &str, pods: &Path, grace: &str) -> Server {
    let config = tmp.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            // Queries span from 2001 (events carry fixed dates): no `max_query_length` (Loki's 721h).
            "limits:\n  logs:\n    max_query_length: 0\nscrape_configs:\n  - job_name: pods\n    scrape_interval: 1h\n    scrape_timeout: 1s\n    kubernetes_sd_configs: [{{role: pod}}]\ncollect:\n  logs:\n    pod_logs_dir: {}\n    node_name: node-a\n    pod_labels: [app, tier]\n  kube:\n    api_url: {api}\n    deleted_pod_grace: {grace}\n",
            pods.display()
        ),
    )
    .unwrap();
    let mut s = Server {
        child: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: tmp.join("data"),
        config: Some(config),
        log: tmp.join("server.log"),
    };
    spawn(&mut s);
    s
}

fn wait_metric(s: &Server, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = s.metric(series);
        if pred(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stuck at {v}; log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Writes one CRI line into `<pods>/<dir>/<container>/0.log` (a new directory per check, so the
/// tailer asks the cache for labels at that moment).
/// The scraper's `kubernetes_sd_configs` (role `pod`) reads the same cache: `/api/v1/targets` lists
/// exactly the wanted pods of this node (one target per declared container port, one per
/// container without ports), within 10 s of a change.
fn check_targets(s: &Server, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = s.get("/api/v1/targets").json();
        let mut got: Vec<String> = v["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["labels"]["job"] == "pods")
            .map(|t| {
                t["discoveredLabels"]["__meta_kubernetes_pod_name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        got.sort();
        got.dedup();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "discovered pods {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_line(pods: &Path, dir: &str, container: &str, msg: &str) {
    let p: PathBuf = pods.join(dir).join(container);
    std::fs::create_dir_all(&p).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.join("0.log"))
        .unwrap();
    let ts = monitoring_rs::model::text::format_rfc3339_ns(now_ms() * 1_000_000);
    writeln!(f, "{ts} stdout F {msg}").unwrap();
}

fn query(s: &Server, logql: &str) -> Vec<(BTreeMap<String, String>, Vec<String>)> {
    let q: String = logql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let end = (now_ms() + 60_000) * 1_000_000;
    let r = s.get(&format!(
        "/loki/api/v1/query_range?query={q}&start=1000000000000000000&end={end}&limit=5000&direction=forward"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            let labels = st["stream"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let lines = st["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e[1].as_str().unwrap().to_string())
                .collect();
            (labels, lines)
        })
        .collect()
}

/// The labels a pod-log line got: writes `msg` under `dir/container`, waits for it in the store,
/// and compares the stream's labels (without `node`, `stream`, `namespace`, `pod`, `container`,
/// which come from the path and are checked once) with `want`.
fn check_labels(s: &Server, pods: &Path, dir: &str, container: &str, msg: &str, want: &[(&str, &str)]) {
    write_line(pods, dir, container, msg);
    wait_labels(s, dir, container, msg, want);
}

/// As [`check_labels`], for a line already written.
fn wait_labels(s: &Server, dir: &str, container: &str, msg: &str, want: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let got = query(s, &format!("{{node=\"node-a\"}} |= \"{msg}\""));
        if let Some((labels, lines)) = got.into_iter().next() {
            assert_eq!(lines, [msg.to_string()], "{msg}");
            break labels;
        }
        assert!(Instant::now() < deadline, "{msg} not stored; log:\n{}", s.log_text());
        std::thread::sleep(Duration::from_millis(25));
    };
    let (ns, rest) = dir.split_once('_').unwrap();
    let pod = rest.rsplit_once('_').unwrap().0;
    assert_eq!(found["namespace"], ns);
    assert_eq!(found["pod"], pod);
    assert_eq!(found["container"], container);
    let extra: BTreeMap<String, String> = found
        .into_iter()
        .filter(|(k, _)| {
            ![
                "node",
                "stream",
                "namespace",
                "pod",
                "container",
                "service_name",
                "detected_level",
            ]
            .contains(&k.as_str())
        })
        .collect();
    let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(extra, want, "labels of {dir}/{container}");
}

const PODS_SEEN: &str = "monitoring_rs_kube_objects_total{resource=\"pods\"}";

const PULLED: &str = "name=web-0 kind=Pod objectAPIversion=v1 sourcecomponent=kubelet sourcehost=node-a reason=Pulled type=Normal count=1 msg=\"Container image \\\"nginx:1.27\\\" already present on machine\"";
const BACKOFF2: &str = "name=db-0 kind=Pod objectAPIversion=v1 sourcecomponent=kubelet sourcehost=node-a reason=BackOff type=Warning count=2 msg=\"Back-off restarting failed container db in pod db-0_default(u-db)\"";
const BACKOFF3: &str = "name=db-0 kind=Pod objectAPIversion=v1 sourcecomponent=kubelet sourcehost=node-a reason=BackOff type=Warning count=3 msg=\"Back-off restarting failed container db in pod db-0_default(u-db)\"";
const NODE_READY: &str = "name=node-a kind=Node objectAPIversion=v1 sourcecomponent=kubelet sourcehost=node-a reason=NodeReady type=Normal count=1 msg=\"Node node-a status is now: NodeReady\"";

/// `eventRV=` is the fake server's counter: drop it before comparing.
fn strip_rv(line: &str) -> String {
    line.split(' ')
        .filter(|f| !f.starts_with("eventRV="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every `{job="kubernetes-events"}` stream (labels without `job`) and line (without `eventRV=`)
/// in the store must be exactly `want`; more lines than wanted fail at once (duplicates).
/// One expected events stream: its labels (without `job`) and its lines.
type WantStream<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

fn check_events(s: &Server, want: &[WantStream<'_>]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<(BTreeMap<String, String>, Vec<String>)> = query(s, "{job=\"kubernetes-events\"}")
            .into_iter()
            .map(|(mut l, lines)| {
                l.remove("service_name");
                l.remove("detected_level");
                l.remove("job");
                (l, lines.iter().map(|x| strip_rv(x)).collect())
            })
            .collect();
        let got: BTreeMap<_, _> = got.into_iter().collect();
        let want_map: BTreeMap<BTreeMap<String, String>, Vec<String>> = want
            .iter()
            .map(|(l, lines)| {
                (
                    l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    lines.iter().map(|x| x.to_string()).collect(),
                )
            })
            .collect();
        if got == want_map {
            return;
        }
        let n: usize = got.values().map(Vec::len).sum();
        let m: usize = want_map.values().map(Vec::len).sum();
        assert!(
            n <= m,
            "more event lines than expected (duplicates?):\n{got:#?}\nwant {want_map:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "events:\n{got:#?}\nwant {want_map:#?}\nlog:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn kube_metadata_and_events_end_to_end() {
    let tmp = tempdir();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let api = FakeApi::start(None);
    api.change("nodes", "ADDED", node("node-a"));
    api.change("nodes", "ADDED", {
        let mut n = node("node-b");
        n["metadata"]["uid"] = json!("node-b-uid");
        n
    });
    api.change(
        "pods",
        "ADDED",
        pod(
            "default",
            "web-0",
            "u-web0-a",
            "node-a",
            json!({"app": "web", "tier": "frontend"}),
        ),
    );
    api.change(
        "pods",
        "ADDED",
        pod("default", "db-0", "u-db", "node-a", json!({"app": "db"})),
    );
    api.change("pods", "ADDED", mirror_pod("node-a", "hash123"));
    api.change(
        "pods",
        "ADDED",
        pod("default", "other-0", "u-other", "node-b", json!({"app": "other"})),
    );
    api.change(
        "pods",
        "ADDED",
        pod("default", "cache-0", "u-cache", "node-a", json!({"app": "cache"})),
    );
    // Event times two hours back from now, on a whole minute (the state keeps live events
    // whatever their age, but the store's 30-day retention would drop fixed dates one day).
    let t0 = (now_ms() / 60_000 * 60_000 - 7_200_000) * 1_000_000;
    let at = |min: i64| monitoring_rs::model::text::format_rfc3339_ns(t0 + min * 60_000_000_000);
    let t = at(0);
    let t = t.as_str();
    api.change(
        "events",
        "ADDED",
        event(
            "e1",
            ("Pod", "default", "web-0"),
            ("Pulled", "Normal"),
            1,
            t,
            "Container image \"nginx:1.27\" already present on machine",
        ),
    );
    let backoff = |count| {
        event(
            "e2",
            ("Pod", "default", "db-0"),
            ("BackOff", "Warning"),
            count,
            &at(if count == 2 { 1 } else { 2 }),
            "Back-off restarting failed container db in pod db-0_default(u-db)",
        )
    };
    api.change("events", "ADDED", backoff(2));
    api.change(
        "events",
        "ADDED",
        event(
            "e3",
            ("Node", "", "node-a"),
            ("NodeReady", "Normal"),
            1,
            t,
            "Node node-a status is now: NodeReady",
        ),
    );

    let mut s = start(tmp.path(), &api.url(), &pods, "8s");
    wait_metric(&s, "monitoring_rs_kube_cache_synced{resource=\"pods\"}", |v| v == 1.0);
    wait_metric(&s, "monitoring_rs_kube_cache_synced{resource=\"nodes\"}", |v| v == 1.0);
    // The request shapes the design depends on: node-scoped, served from the watch cache, paged.
    let reqs = api.requests();
    // (kube drops resourceVersion=0 from a paged list, so the cached list is unpaged: no `limit`.)
    let lists: Vec<&String> = reqs.iter().filter(|r| !r.contains("watch=true")).collect();
    assert_eq!(lists.len(), 3, "one list per resource: {lists:?}");
    for l in &lists {
        assert!(
            l.contains("resourceVersion=0&resourceVersionMatch=NotOlderThan") && !l.contains("limit="),
            "{l}"
        );
    }
    assert!(
        lists
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?") && r.contains("fieldSelector=spec.nodeName%3Dnode-a"))
    );
    assert!(
        lists
            .iter()
            .any(|r| r.starts_with("/api/v1/nodes?") && r.contains("fieldSelector=metadata.name%3Dnode-a"))
    );
    assert!(
        lists
            .iter()
            .any(|r| r.starts_with("/api/v1/events?") && !r.contains("fieldSelector"))
    );
    // This node's pods only (other-0 runs on node-b).
    check_targets(&s, &["cache-0", "db-0", "kube-apiserver-node-a", "web-0"]);
    api.wait_request("pods watch with bookmarks", |r| {
        r.starts_with("/api/v1/pods?") && r.contains("watch=true") && r.contains("allowWatchBookmarks=true")
    });

    // Labels by feature: pod labels (app -> job, selected labels), a static pod by its config hash,
    // an unknown pod (path labels only), a pod of another node (not in the cache).
    check_labels(
        &s,
        &pods,
        "default_web-0_u-web0-a",
        "app",
        "web first",
        &[("job", "default/web"), ("app", "web"), ("tier", "frontend")],
    );
    check_labels(
        &s,
        &pods,
        "kube-system_kube-apiserver-node-a_hash123",
        "kube-apiserver",
        "static pod line",
        &[("job", "kube-system/kube-apiserver"), ("tier", "control-plane")],
    );
    check_labels(
        &s,
        &pods,
        "default_ghost-0_u-ghost",
        "c",
        "unknown pod line",
        &[("job", "default/c")],
    );
    check_labels(
        &s,
        &pods,
        "default_other-0_u-other",
        "app",
        "other node line",
        &[("job", "default/app")],
    );
    // A new pod's log directory can appear before the watch delivers the pod: its first line waits
    // for the pod's labels (the tailer's pod_wait, 5 s) instead of taking the path's.
    write_line(&pods, "default_late-0_u-late0", "app", "late pod first line");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        query(&s, "{node=\"node-a\"} |= \"late pod first line\"").is_empty(),
        "read before its pod was known"
    );
    api.change(
        "pods",
        "ADDED",
        pod("default", "late-0", "u-late0", "node-a", json!({"app": "late"})),
    );
    wait_labels(
        &s,
        "default_late-0_u-late0",
        "app",
        "late pod first line",
        &[("job", "default/late"), ("app", "late")],
    );

    // Events as streams.
    let pulled_l: &[(&str, &str)] = &[
        ("namespace", "default"),
        ("kind", "Pod"),
        ("name", "web-0"),
        ("reason", "Pulled"),
        ("type", "Normal"),
    ];
    let backoff_l: &[(&str, &str)] = &[
        ("namespace", "default"),
        ("kind", "Pod"),
        ("name", "db-0"),
        ("reason", "BackOff"),
        ("type", "Warning"),
    ];
    let node_l: &[(&str, &str)] = &[
        ("kind", "Node"),
        ("name", "node-a"),
        ("reason", "NodeReady"),
        ("type", "Normal"),
    ];
    check_events(
        &s,
        &[(pulled_l, &[PULLED]), (backoff_l, &[BACKOFF2]), (node_l, &[NODE_READY])],
    );
    // An occurrence more (count 3) is a new line.
    api.change("events", "MODIFIED", backoff(3));
    check_events(
        &s,
        &[
            (pulled_l, &[PULLED]),
            (backoff_l, &[BACKOFF2, BACKOFF3]),
            (node_l, &[NODE_READY]),
        ],
    );

    // A bookmark moves the watch's version; the stream then ends early: the re-watch starts from the
    // bookmark (no re-list), and a pod added meanwhile arrives through it.
    let lists_before = s.metric("monitoring_rs_kube_lists_total{resource=\"pods\"}");
    let b = api.bookmark();
    std::thread::sleep(Duration::from_millis(300));
    api.close_watches();
    let seen = s.metric(PODS_SEEN);
    api.change(
        "pods",
        "ADDED",
        pod("default", "web-1", "u-web1", "node-a", json!({"app": "web1"})),
    );
    api.wait_request("re-watch from the bookmark", |r| {
        r.starts_with("/api/v1/pods?") && r.contains("watch=true") && r.contains(&format!("resourceVersion={b}"))
    });
    // The kubelet creates a pod's log directory only after it learnt of the pod (and pulled images,
    // started a sandbox); the test writes the files once the cache has the change, as that order has it.
    wait_metric(&s, PODS_SEEN, |v| v >= seen + 1.0);
    check_labels(
        &s,
        &pods,
        "default_web-1_u-web1",
        "app",
        "web-1 line",
        &[("job", "default/web1"), ("app", "web1")],
    );
    assert_eq!(
        s.metric("monitoring_rs_kube_lists_total{resource=\"pods\"}"),
        lists_before,
        "re-watch, not re-list"
    );

    // db-0 deleted while no watch is open, history compacted: the re-watch gets 410 Gone, the
    // watcher re-lists and sees db-0 gone. Its files still get its labels within the grace.
    let errors_before = s.metric("monitoring_rs_kube_watch_errors_total{resource=\"pods\"}");
    let deleted_at = Instant::now();
    api.change_unseen(
        "pods",
        "DELETED",
        pod("default", "db-0", "u-db", "node-a", json!({"app": "db"})),
    );
    wait_metric(&s, "monitoring_rs_kube_lists_total{resource=\"pods\"}", |v| {
        v > lists_before
    });
    // The server's grace starts when its re-list shows db-0 gone, at most this late (the watcher's
    // backoff before the re-list varies with load).
    let noticed_by = Instant::now();
    assert!(
        s.metric("monitoring_rs_kube_watch_errors_total{resource=\"pods\"}") > errors_before,
        "410 counted"
    );
    // The events watch re-listed too: every live event replayed, none stored twice.
    wait_metric(&s, "monitoring_rs_kube_lists_total{resource=\"events\"}", |v| v >= 2.0);
    check_events(
        &s,
        &[
            (pulled_l, &[PULLED]),
            (backoff_l, &[BACKOFF2, BACKOFF3]),
            (node_l, &[NODE_READY]),
        ],
    );
    assert!(s.metric("monitoring_rs_kube_events_duplicate_total") >= 3.0);
    check_labels(
        &s,
        &pods,
        "default_db-0_u-db",
        "sidecar",
        "db late line",
        &[("job", "default/db"), ("app", "db")],
    );
    // Discovery drops the deleted pod at once (the grace is for late log lines only).
    check_targets(&s, &["cache-0", "kube-apiserver-node-a", "late-0", "web-0", "web-1"]);

    // Name reuse: web-0 deleted and created again with a new UID and other labels. Files of the new
    // pod get the new labels, files of the old one (within the grace) the old ones.
    let seen = s.metric(PODS_SEEN);
    api.change(
        "pods",
        "DELETED",
        pod(
            "default",
            "web-0",
            "u-web0-a",
            "node-a",
            json!({"app": "web", "tier": "frontend"}),
        ),
    );
    api.change(
        "pods",
        "ADDED",
        pod("default", "web-0", "u-web0-b", "node-a", json!({"app": "web-v2"})),
    );
    wait_metric(&s, PODS_SEEN, |v| v >= seen + 2.0);
    check_labels(
        &s,
        &pods,
        "default_web-0_u-web0-b",
        "app",
        "web-0 new uid",
        &[("job", "default/web-v2"), ("app", "web-v2")],
    );
    check_labels(
        &s,
        &pods,
        "default_web-0_u-web0-a",
        "late",
        "web-0 old uid",
        &[("job", "default/web"), ("app", "web"), ("tier", "frontend")],
    );
    assert!(
        deleted_at.elapsed() < Duration::from_secs(8),
        "grace checks took too long to mean anything"
    );

    // After the grace, the deleted pod is gone: path labels only.
    // (Grace 8 s from `noticed_by`, plus the 1 s prune tick and a margin.)
    std::thread::sleep(Duration::from_secs(8).saturating_sub(noticed_by.elapsed()) + Duration::from_millis(2500));
    check_labels(
        &s,
        &pods,
        "default_db-0_u-db",
        "after-grace",
        "db after grace",
        &[("job", "default/after-grace")],
    );

    // A restart: the first list replays every live event; none is stored again.
    s.stop();
    spawn(&mut s);
    wait_metric(&s, "monitoring_rs_kube_lists_total{resource=\"events\"}", |v| v >= 1.0);
    wait_metric(&s, "monitoring_rs_kube_events_duplicate_total", |v| v >= 3.0);
    assert_eq!(s.metric("monitoring_rs_kube_events_stored_total"), 0.0);
    check_events(
        &s,
        &[
            (pulled_l, &[PULLED]),
            (backoff_l, &[BACKOFF2, BACKOFF3]),
            (node_l, &[NODE_READY]),
        ],
    );

    // The API goes away: errors counted, the synced gauge drops, new files carry path labels.
    api.stop();
    wait_metric(&s, "monitoring_rs_kube_watch_errors_total{resource=\"pods\"}", |v| {
        v >= 1.0
    });
    wait_metric(&s, "monitoring_rs_kube_cache_synced{resource=\"pods\"}", |v| v == 0.0);
    s.stop();
}

/// Started while the API is unreachable: the binary serves, tails with path labels, counts the
/// errors; when the API comes up at that address, the cache fills by itself.
#[test]
fn api_down_then_recovers() {
    let tmp = tempdir();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = start(tmp.path(), &format!("http://{addr}"), &pods, "5m");
    wait_metric(&s, "monitoring_rs_kube_watch_errors_total{resource=\"pods\"}", |v| {
        v >= 1.0
    });
    assert_eq!(s.metric("monitoring_rs_kube_cache_synced{resource=\"pods\"}"), 0.0);
    check_labels(
        &s,
        &pods,
        "default_web-0_u-1",
        "app",
        "while down",
        &[("job", "default/app")],
    );
    let api = FakeApi::start(Some(addr));
    api.change(
        "pods",
        "ADDED",
        pod("default", "web-0", "u-1", "node-a", json!({"app": "web"})),
    );
    wait_metric(&s, "monitoring_rs_kube_cache_synced{resource=\"pods\"}", |v| v == 1.0);
    // The directory found while the API was down gets the pod's labels now (the tailer derives
    // labels again when the cache changes).
    check_labels(
        &s,
        &pods,
        "default_web-0_u-1",
        "app",
        "after recovery",
        &[("job", "default/web"), ("app", "web")],
    );
}
