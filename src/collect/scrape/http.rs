//! A minimal HTTP/1.1 GET client over a tokio `TcpStream`, plain or TLS (rustls), with the
//! scrape's authentication and `gzip` decoding.
//!
//! Why not hyper: `hyper`/`hyper-util` are compiled only with their server features (through
//! axum); the client side (`hyper-util`'s `client-legacy`) would add features and build time for
//! one GET with `Connection: close`. This reads the whole response (identity or chunked body) and
//! is bounded by `max_body` so a runaway exporter cannot grow memory. TLS is rustls with the
//! `ring` provider, the stack `kube` brings anyway (see Cargo.toml).

use super::ScrapeError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use std::io::Read;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub struct Response {
    pub status: u16,
    /// Code and reason as sent (`401 Unauthorized`): Go's `resp.Status`, which Prometheus puts
    /// in its error text.
    pub status_text: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// `tls_config` of a scrape config (Prometheus's `common/config.TLSConfig`, file forms only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `authorization` of a scrape config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub credentials: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<String>,
}

/// `basic_auth` of a scrape config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
}

/// Where the `Authorization` header comes from.
#[derive(Debug, Clone)]
enum Auth {
    None,
    /// `<type> <credentials>`.
    Inline(String),
    /// `<type> <contents of file>`, trimmed. The file is read on every scrape, as Prometheus's
    /// credentials-file round tripper does, so a rotated service-account token is picked up by
    /// the next scrape (kube-client re-reads at least every 60 s; a read is a few µs per scrape).
    File {
        kind: String,
        path: String,
    },
    Basic {
        user: String,
        password: Option<String>,
        password_file: Option<String>,
    },
}

/// One job's connection settings, built once from its config.
pub struct Client {
    job: String,
    tls_config: TlsConfig,
    /// Built at start for https jobs and jobs with a `tls_config` (so a bad file is a config
    /// error), else on the first https scrape (a relabeled `__scheme__`): loading the system
    /// roots costs memory a plain-http job does not need. Built again when one of the CA, cert
    /// and key files changed (see [`TlsFiles`]).
    tls: parking_lot::Mutex<Option<(TlsFiles, Result<tokio_rustls::TlsConnector, ScrapeError>)>>,
    auth: Auth,
}

fn cfg_err(job: &str, m: String) -> ScrapeError {
    ScrapeError::Config(format!("job {job}: {m}"))
}

/// Bundles where Debian/Ubuntu/Alpine and RHEL/Fedora keep the system roots (what Go's
/// `crypto/x509` reads too), for https targets without a `ca_file`.
const SYSTEM_ROOTS: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

impl Client {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &str,
        https: bool,
        tls: Option<&TlsConfig>,
        authorization: Option<&Authorization>,
        bearer_token: Option<&str>,
        bearer_token_file: Option<&str>,
        basic_auth: Option<&BasicAuth>,
    ) -> Result<Client, ScrapeError> {
        let n = [
            authorization.is_some(),
            bearer_token.is_some() || bearer_token_file.is_some(),
            basic_auth.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n > 1 {
            return Err(cfg_err(
                job,
                "at most one of basic_auth, authorization and bearer_token(_file) must be configured".into(),
            ));
        }
        let auth = if let Some(a) = authorization {
            let kind = a.kind.clone().unwrap_or_else(|| "Bearer".into());
            if kind.eq_ignore_ascii_case("basic") {
                return Err(cfg_err(
                    job,
                    "authorization type cannot be set to \"basic\", use \"basic_auth\" instead".into(),
                ));
            }
            match (&a.credentials, &a.credentials_file) {
                (Some(_), Some(_)) => {
                    return Err(cfg_err(
                        job,
                        "authorization: at most one of credentials and credentials_file must be configured".into(),
                    ));
                }
                (Some(c), None) => Auth::Inline(format!("{kind} {c}")),
                (None, Some(f)) => Auth::File { kind, path: f.clone() },
                (None, None) => Auth::None,
            }
        } else if let Some(t) = bearer_token {
            if bearer_token_file.is_some() {
                return Err(cfg_err(
                    job,
                    "at most one of bearer_token and bearer_token_file must be configured".into(),
                ));
            }
            Auth::Inline(format!("Bearer {t}"))
        } else if let Some(f) = bearer_token_file {
            Auth::File {
                kind: "Bearer".into(),
                path: f.to_string(),
            }
        } else if let Some(b) = basic_auth {
            if b.password.is_some() && b.password_file.is_some() {
                return Err(cfg_err(
                    job,
                    "basic_auth: at most one of password and password_file must be configured".into(),
                ));
            }
            Auth::Basic {
                user: b.username.clone(),
                password: b.password.clone(),
                password_file: b.password_file.clone(),
            }
        } else {
            Auth::None
        };
        let c = Client {
            job: job.to_string(),
            tls_config: tls.cloned().unwrap_or_default(),
            tls: parking_lot::Mutex::new(None),
            auth,
        };
        if https || tls.is_some() {
            c.connector()?;
        }
        Ok(c)
    }

    /// The TLS connector, built again when the CA, cert or key file changed since it was: as
    /// Prometheus, whose TLS round tripper compares the files' hashes on every request, so that
    /// a rotated certificate (a Kubernetes secret's new version) is used without a restart.
    fn connector(&self) -> Result<tokio_rustls::TlsConnector, ScrapeError> {
        let files = TlsFiles::of(&self.tls_config);
        let mut g = self.tls.lock();
        if let Some((seen, c)) = g.as_ref()
            && *seen == files
        {
            return c.clone();
        }
        let c = connector(&self.job, &self.tls_config);
        *g = Some((files, c.clone()));
        c
    }

    /// The `Authorization` header value for this scrape, if any.
    fn authorization(&self) -> Result<Option<String>, ScrapeError> {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| ScrapeError::Http(format!("unable to read authorization credentials file {p}: {e}")))
        };
        Ok(match &self.auth {
            Auth::None => None,
            Auth::Inline(h) => Some(h.clone()),
            Auth::File { kind, path } => Some(format!("{kind} {}", read(path)?)),
            Auth::Basic {
                user,
                password,
                password_file,
            } => {
                let pw = match (password, password_file) {
                    (Some(p), _) => p.clone(),
                    (None, Some(f)) => read(f)?,
                    (None, None) => String::new(),
                };
                Some(format!("Basic {}", base64(format!("{user}:{pw}").as_bytes())))
            }
        })
    }

    /// GETs `path_and_query` from `host:port` with the given extra headers (`Accept-Encoding:
    /// gzip` is added and the body decoded). `max_body` bounds the decoded body: over it the
    /// error is Prometheus's "body size limit exceeded".
    pub async fn get(
        &self,
        https: bool,
        address: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        max_body: usize,
    ) -> Result<Response, ScrapeError> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| ScrapeError::Http(format!("dial {address}: {e}")))?;
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: monitoring-rs\r\nAccept-Encoding: gzip\r\nConnection: close\r\n"
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(a) = self.authorization()? {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        let raw = if !https {
            exchange(tcp, &req, max_body).await?
        } else {
            let tls = self.connector()?;
            {
                let host = match &self.tls_config.server_name {
                    Some(s) => s.clone(),
                    None => host_of(address).to_string(),
                };
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| ScrapeError::Http(format!("invalid TLS server name {host:?}")))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ScrapeError::Http(format!("tls: {e}")))?;
                exchange(stream, &req, max_body).await?
            }
        };
        let mut r = parse_response(&raw)?;
        if r.gzip {
            let mut out = Vec::with_capacity(r.body.len() * 4);
            let n = flate2::read::GzDecoder::new(&r.body[..])
                .take(max_body as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ScrapeError::Http(format!("gzip: {e}")))?;
            if n > max_body {
                return Err(ScrapeError::BodySizeLimit);
            }
            r.body = out;
        } else if r.body.len() > max_body {
            return Err(ScrapeError::BodySizeLimit);
        }
        Ok(Response {
            status: r.status,
            status_text: r.status_text,
            content_type: r.content_type,
            body: r.body,
        })
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(address: &str) -> &str {
    if let Some(r) = address.strip_prefix('[') {
        return r.split(']').next().unwrap_or(r);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// The identity of a `tls_config`'s files: (device, inode, length, modification time) of each
/// of `ca_file`, `cert_file`, `key_file` that is set (`None` when it cannot be read). A stat per
/// file and scrape; a secret volume's update swaps a symlink, so the inode changes.
#[derive(Debug, PartialEq, Eq)]
struct TlsFiles([Option<(u64, u64, u64, std::time::SystemTime)>; 3]);

impl TlsFiles {
    fn of(t: &TlsConfig) -> TlsFiles {
        use std::os::unix::fs::MetadataExt;
        let stat = |f: &Option<String>| {
            let m = std::fs::metadata(f.as_deref()?).ok()?;
            Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
        };
        TlsFiles([stat(&t.ca_file), stat(&t.cert_file), stat(&t.key_file)])
    }
}

fn connector(job: &str, t: &TlsConfig) -> Result<tokio_rustls::TlsConnector, ScrapeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(job, format!("tls: {e}")))?;
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let files: Vec<&str> = match &t.ca_file {
            Some(f) => vec![f.as_str()],
            None => SYSTEM_ROOTS
                .iter()
                .copied()
                .filter(|p| std::path::Path::new(p).exists())
                .collect(),
        };
        for f in files {
            let certs = CertificateDer::pem_file_iter(f)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| cfg_err(job, format!("tls_config ca_file {f}: {e}")))?;
            let (ok, _) = roots.add_parsable_certificates(certs);
            if ok == 0 && t.ca_file.is_some() {
                return Err(cfg_err(job, format!("tls_config ca_file {f}: no certificate found")));
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_file_iter(c)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| cfg_err(job, format!("tls_config cert_file {c}: {e}")))?;
            let key =
                PrivateKeyDer::from_pem_file(k).map_err(|e| cfg_err(job, format!("tls_config key_file {k}: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| cfg_err(job, format!("tls_config client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(cfg_err(
                job,
                "tls_config: cert_file and key_file must be set together".into(),
            ));
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `insecure_skip_verify`: any certificate is accepted, but handshake signatures are still
/// checked (so the session is at least bound to the presented key).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Standard base64 with padding (basic auth only: not worth a dependency).
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                o.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// Writes the request and reads the whole response. The raw bound is `max_body` plus room for
/// headers and chunk framing; a compressed body is bounded again after decoding.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &str,
    max_body: usize,
) -> Result<Vec<u8>, ScrapeError> {
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ScrapeError::Http(format!("write: {e}")))?;
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify (common) end the body like EOF.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => 0,
            Err(e) => return Err(ScrapeError::Http(format!("read: {e}"))),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > max_body.saturating_add(64 * 1024) {
            return Err(ScrapeError::BodySizeLimit);
        }
    }
    Ok(raw)
}

struct Raw {
    status: u16,
    status_text: String,
    content_type: Option<String>,
    gzip: bool,
    body: Vec<u8>,
}

fn parse_response(raw: &[u8]) -> Result<Raw, ScrapeError> {
    let bad = |m: &str| ScrapeError::Http(format!("malformed response: {m}"));
    let end = memchr::memmem::find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("status line"))?;
    let mut content_type = None;
    let mut chunked = false;
    let mut length = None;
    let mut gzip = false;
    for l in lines {
        let Some((n, v)) = l.split_once(':') else { continue };
        let v = v.trim();
        if n.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.to_string());
        } else if n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if n.eq_ignore_ascii_case("content-encoding") && v.eq_ignore_ascii_case("gzip") {
            gzip = true;
        } else if n.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(l) = length {
        rest.get(..l)
            .ok_or_else(|| bad("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Raw {
        status,
        status_text: status_line.split_once(' ').map_or("", |(_, r)| r).trim().to_string(),
        content_type,
        gzip,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let eol = memchr::memmem::find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, want: Result<(u16, Option<&str>, &str), ()>) {
        let got = parse_response(raw.as_bytes())
            .map(|r| (r.status, r.content_type, String::from_utf8(r.body).unwrap()))
            .map_err(|_| ());
        let want = want.map(|(s, c, b)| (s, c.map(str::to_string), b.to_string()));
        assert_eq!(got, want, "{raw:?}");
    }

    #[test]
    fn base64_encodes() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn responses() {
        check(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\na 1xx",
            Ok((200, Some("text/plain"), "a 1")),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na 1\r\n2;x=y\r\n\n \r\n0\r\n\r\n",
            Ok((200, None, "a 1\n ")),
        );
        check("HTTP/1.0 503 Unavailable\r\n\r\nbusy", Ok((503, None, "busy")));
        check("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Err(()));
        check("garbage", Err(()));
        check("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", Err(()));
    }
}
