//! Support shared by the benchmarks that drive real servers as child processes: process guards,
//! readiness polling, a minimal HTTP/1.1 client over `std::net`, `/proc` readers, Python helpers.
//! Included with `#[path = "support.rs"] mod support;`; each benchmark uses a subset.
//!
//! Owns: nothing outside the child processes and paths its callers give it; loopback only.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

pub const PIP_TIMEOUT: Duration = Duration::from_secs(600);

pub const READY_POLL: Duration = Duration::from_millis(10);

pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Every wait is bounded; these are the bounds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);

pub fn env_u64(name: &str, default: u64) -> Res<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|e| format!("{name}={v}: {e}")),
    }
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

pub fn ensure_cramjam(tools: &Path) -> Res<()> {
    let mut check = Command::new("python3");
    check.args(["-c", "import cramjam"]);
    if run_to_end(check, "python3 -c 'import cramjam'", tools, HTTP_TIMEOUT).is_ok() {
        return Ok(());
    }
    println!("python3 cannot import cramjam: running `python3 -m pip install cramjam`");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "cramjam"]);
    run_to_end(pip, "pip install cramjam", tools, PIP_TIMEOUT)?;
    Ok(())
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|f| fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A child process that is killed (SIGKILL) and reaped when dropped, on every exit path; it also gets SIGKILL
/// from the kernel if this benchmark dies first (PR_SET_PDEATHSIG).
pub struct Proc {
    pub child: Child,
    pub label: String,
    pub log: PathBuf,
    pub spawned: Instant,
}

impl Proc {
    /// Stdout goes to `stdout` if given, else to the `log` file along with stderr.
    pub fn spawn(mut cmd: Command, label: String, stdout: Option<&Path>, log: &Path) -> Res<Proc> {
        let err = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let out = match stdout {
            Some(path) => fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?,
            None => err.try_clone().map_err(|e| format!("cloning {}: {e}", log.display()))?,
        };
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
        // async-signal-safe and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {label} ({}): {e}", cmd.get_program().display()))?;
        Ok(Proc {
            child,
            label,
            log: log.to_path_buf(),
            spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to STOP_TIMEOUT; SIGKILL and an error if it does not exit by then.
    pub fn terminate(&mut self) -> Res<ExitStatus> {
        if let Some(s) = self.exited() {
            return Err(format!("{} had already exited ({s}){}", self.label, self.tail()));
        }
        let pid = libc::pid_t::try_from(self.pid()).map_err(|e| format!("pid: {e}"))?;
        // SAFETY: kill(2) on our own child, which has not been reaped yet (try_wait above saw it running).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match self.wait_timeout(STOP_TIMEOUT) {
            Some(s) => Ok(s),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!(
                    "{} did not exit within {} s of SIGTERM",
                    self.label,
                    STOP_TIMEOUT.as_secs()
                ))
            }
        }
    }

    pub fn kill9(&mut self) -> Res<()> {
        self.child.kill().map_err(|e| format!("kill -9 {}: {e}", self.label))?;
        self.child.wait().map_err(|e| format!("wait {}: {e}", self.label))?;
        Ok(())
    }

    /// The last 20 lines of the log, for error messages.
    pub fn tail(&self) -> String {
        let text = fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return format!("\n  ({} is empty)", self.log.display());
        }
        let last = lines[lines.len().saturating_sub(20)..].join("\n  ");
        format!(
            "\n  last lines of {} (BENCH_KEEP=1 keeps it):\n  {last}",
            self.log.display()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a helper to completion (bounded); its stdout on success, an error with its stderr tail otherwise.
pub fn run_to_end(cmd: Command, label: &str, dir: &Path, timeout: Duration) -> Res<String> {
    let slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let out_path = dir.join(format!("{slug}.stdout"));
    let log = dir.join(format!("{slug}.stderr"));
    let mut proc = Proc::spawn(cmd, label.to_string(), Some(&out_path), &log)?;
    match proc.wait_timeout(timeout) {
        None => Err(format!(
            "{label} did not finish within {} s{}",
            timeout.as_secs(),
            proc.tail()
        )),
        Some(s) if !s.success() => Err(format!("{label} failed ({s}){}", proc.tail())),
        Some(_) => fs::read_to_string(&out_path).map_err(|e| format!("reading {}: {e}", out_path.display())),
    }
}

pub fn wait_ready(srv: &mut Proc, port: u16) -> Res<Duration> {
    loop {
        if let Some(s) = srv.exited() {
            return Err(format!("{} exited ({s}) before it was ready{}", srv.label, srv.tail()));
        }
        if matches!(http_get(port, "/-/ready", PROBE_TIMEOUT), Ok((200, _))) {
            return Ok(srv.spawned.elapsed());
        }
        if srv.spawned.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "{} not ready within {} s{}",
                srv.label,
                READY_TIMEOUT.as_secs(),
                srv.tail()
            ));
        }
        sleep(READY_POLL);
    }
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, release it.
pub fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("local_addr: {e}"))
}

/// A minimal HTTP/1.1 GET on loopback: status and body (de-chunked), whole exchange bounded by `timeout`.
pub fn http_get(port: u16, target: &str, timeout: Duration) -> Res<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let req = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "GET {target}: no complete answer within {} s",
                timeout.as_secs()
            ));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("GET {target}: {e}")),
        }
    }
    parse_response(&raw)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn parse_response(raw: &[u8]) -> Res<(u16, Vec<u8>)> {
    let end = find(raw, b"\r\n\r\n").ok_or("truncated HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = &raw[end + 4..];
    // With `Connection: close` the body runs to EOF unless it is chunked.
    Ok((status, if chunked { dechunk(body)? } else { body.to_vec() }))
}

pub fn dechunk(mut b: &[u8]) -> Res<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(b, b"\r\n").ok_or("truncated chunk header")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `key=value` words of a line such as rwload's `requests=.. failed=.. samples=..`.
pub fn parse_kv(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Res<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("bad {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("bad {path}"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf(3) only reads a system configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

pub fn vm_hwm_kib(pid: u32) -> Res<u64> {
    status_kib(pid, "VmHWM")
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`.
pub fn status_kib(pid: u32, field: &str) -> Res<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} in {path}"))
}

/// The two servers the Prometheus-side benchmarks compare.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum System {
    Prometheus,
    Ours,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Prometheus => "prometheus",
            System::Ours => "monitoring-rs",
        }
    }

    /// `BENCH_ONLY=prometheus|monitoring-rs` runs one side only; unset or empty runs both.
    pub fn only_from_env() -> Res<Option<System>> {
        match std::env::var("BENCH_ONLY").ok().as_deref() {
            None | Some("") => Ok(None),
            Some("prometheus") => Ok(Some(System::Prometheus)),
            Some("monitoring-rs") => Ok(Some(System::Ours)),
            Some(o) => Err(format!("BENCH_ONLY={o}: expected `prometheus` or `monitoring-rs`")),
        }
    }
}

/// The servers to run, Prometheus first (its version printed; a note when it is not installed),
/// then ours (`ours_bin`), minus the one `only` excludes.
pub fn bench_targets(only: Option<System>, tools: &Path, ours_bin: &str) -> Vec<(System, PathBuf)> {
    let mut targets = Vec::new();
    if only != Some(System::Ours) {
        match find_on_path("prometheus") {
            Some(bin) => {
                let mut version = Command::new(&bin);
                version.arg("--version");
                if let Ok(out) = run_to_end(version, "prometheus --version", tools, HTTP_TIMEOUT) {
                    println!(
                        "reference: {}",
                        out.lines().next().unwrap_or("prometheus (version unknown)")
                    );
                }
                targets.push((System::Prometheus, bin));
            }
            None => println!("reference: prometheus not found (apt-get install prometheus)"),
        }
    }
    if only != Some(System::Prometheus) {
        targets.push((System::Ours, PathBuf::from(ours_bin)));
    }
    targets
}
