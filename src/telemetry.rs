//! The process's own observability: tracing (log) setup and the registry behind `/metrics`.
//!
//! Owns: the text exposition of self-metrics and the log subscriber. Never touches: storage or
//! request handling; other parts expose their counters as atomics and `app` registers a renderer
//! for each here, so no module below `app` depends on this one.

use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::Arc;

/// Installs the global tracing subscriber (stderr, compact). `level` is an `EnvFilter` directive.
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MONITORING_RS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests starting several apps in one process) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

type Renderer = Box<dyn Fn(&mut MetricsWriter) + Send + Sync>;

/// Families are rendered in registration order by closures that read their owners' atomics.
#[derive(Default, Clone)]
pub struct Registry {
    renderers: Arc<Mutex<Vec<Renderer>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, f: impl Fn(&mut MetricsWriter) + Send + Sync + 'static) {
        self.renderers.lock().push(Box::new(f));
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut w = MetricsWriter {
            out: String::with_capacity(8192),
        };
        process_metrics(&mut w);
        for r in self.renderers.lock().iter() {
            r(&mut w);
        }
        w.out
    }
}

/// Writes metric families in the text exposition format.
pub struct MetricsWriter {
    out: String,
}

impl MetricsWriter {
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    /// One family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// `process_*` metrics from /proc/self, as client libraries export them.
fn process_metrics(w: &mut MetricsWriter) {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the `comm` field (which may contain spaces) start after the last ')'.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = clock_ticks();
            if f.len() > 13 {
                let utime: f64 = f[11].parse().unwrap_or(0.0);
                let stime: f64 = f[12].parse().unwrap_or(0.0);
                w.single(
                    "process_cpu_seconds_total",
                    "counter",
                    "Total user and system CPU time spent in seconds.",
                    (utime + stime) / tick,
                );
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for (key, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            (
                "VmHWM:",
                "process_resident_memory_peak_bytes",
                "Peak resident memory size in bytes.",
            ),
        ] {
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
            {
                w.single(name, "gauge", help, kb * 1024.0);
            }
        }
    }
    malloc_metrics(w);
}

/// glibc's own account of its heap (mallinfo2(3)): bytes handed out, and bytes it holds free. RSS
/// alone cannot tell a leak (in use grows) from memory the allocator keeps but cannot give back
/// (free grows); the soak bench reads both. Walking the free lists costs ~0.1 ms per scrape.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_metrics(w: &mut MetricsWriter) {
    // SAFETY: mallinfo2(3) takes the allocator's own locks and returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    w.single(
        "monitoring_rs_malloc_in_use_bytes",
        "gauge",
        "Bytes allocated through malloc and not freed (mallinfo2 uordblks + hblkhd).",
        (m.uordblks + m.hblkhd) as f64,
    );
    w.single(
        "monitoring_rs_malloc_free_bytes",
        "gauge",
        "Free bytes malloc holds in its heaps (mallinfo2 fordblks), resident or not.",
        m.fordblks as f64,
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_metrics(_: &mut MetricsWriter) {}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let r = Registry::new();
        r.register(|w| {
            w.header("x_total", "counter", "Things.");
            w.sample("x_total", &[("reason", "a\"b")], 3.0);
            w.sample("x_total", &[], f64::INFINITY);
        });
        let text = r.render();
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(text.contains("x_total{reason=\"a\\\"b\"} 3\n"), "{text}");
        assert!(text.contains("x_total +Inf\n"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let in_use = |t: &str| -> f64 {
                let l = t
                    .lines()
                    .find(|l| l.starts_with("monitoring_rs_malloc_in_use_bytes "))
                    .unwrap();
                l.split(' ').nth(1).unwrap().parse().unwrap()
            };
            // Other tests allocate and free on their own threads meanwhile (CI saw 26 KiB
            // freed elsewhere within one 8 MiB check), so hold 64 MiB and ask for half of it.
            let before = in_use(&r.render());
            let held = std::hint::black_box(vec![1u8; 64 << 20]);
            let after = in_use(&r.render());
            assert!(after - before >= (32 << 20) as f64, "{before} -> {after}");
            drop(held);
        }
    }
}
