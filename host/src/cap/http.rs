//! The network capability: `wasi:http/outgoing-handler` for plugin steps, through
//! wasmtime-wasi-http with idem's own `send_request` hook, so every request a plugin makes
//! (whatever its language's HTTP client) passes the step's [`NetPolicy`] before a connection
//! is made.
//!
//! It owns the step's counters (requests, bytes out, bytes in), the denials it made (for the
//! step's error message), the requests a dry run declined to send and those an apply sent,
//! as [`Change`]s. The checks, in order: the request count; scheme, host and port against
//! `hosts:`; under a dry run, a method other than GET, HEAD and OPTIONS is not sent but
//! recorded, and answered `202` with `idem-dry-run: 1`; the name is resolved here and every
//! address that is not public must be listed literally; the connection goes to the address
//! that was checked (no second lookup); body bytes are counted both ways and the step's
//! deadline bounds every wait (connect, TLS, first byte, each body read). Redirects are never
//! followed here: the plugin sees the 3xx, and a request to where it points is checked like
//! any other.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::change::{Change, ChangeKind, HttpInfo};
use crate::netpolicy::{NetPolicy, Scheme, host_ip, shown_url};

/// What the step's requests did, shared with the futures that send them.
#[derive(Default)]
pub struct NetRecord {
    pub requests: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Why requests were denied, in the user's words.
    pub denials: Vec<String>,
    /// Non-safe requests: planned (dry run) or sent with their status (apply).
    changes: Vec<Change>,
    /// For requests sent under apply, by index in `changes`: the digest of their body as it
    /// streams out, which may end after the response has come.
    digests: Vec<(usize, Arc<Mutex<BodyDigest>>)>,
    /// A wait on the network ran into the step's deadline.
    pub timed_out: bool,
    /// The tasks reading away the bodies of denied requests; they end with the step.
    discards: Vec<wasmtime_wasi::runtime::AbortOnDropJoinHandle<()>>,
}

impl NetRecord {
    /// The step's non-safe requests, each with its body's SHA-256 and size (as far as it was
    /// sent), leaving none behind.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut changes = std::mem::take(&mut self.changes);
        for (i, digest) in std::mem::take(&mut self.digests) {
            let d = digest.lock().unwrap_or_else(|e| e.into_inner());
            let sha = format!("{:x}", d.hasher.clone().finalize());
            if let Some(c) = changes.get_mut(i) {
                c.after = Some(sha.clone());
                if let Some(h) = &mut c.http {
                    h.body_sha256 = Some(sha);
                    h.body_bytes = Some(d.bytes);
                }
            }
        }
        changes
    }
}

/// The SHA-256 and size of a request body, taken as its frames go out.
#[derive(Default)]
struct BodyDigest {
    hasher: Sha256,
    bytes: u64,
}

/// One plugin step's network: its policy, mode and deadline, and the record of its requests.
pub struct NetCap {
    policy: Arc<NetPolicy>,
    dry_run: bool,
    deadline: Option<std::time::Instant>,
    record: Arc<Mutex<NetRecord>>,
}

type Sent = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type Pending = Box<dyn Future<Output = Result<(http::Response<WasiBody>, Sent), HttpError>> + Send>;

impl NetCap {
    pub fn new(policy: NetPolicy, dry_run: bool, deadline: Option<std::time::Instant>) -> Self {
        NetCap {
            policy: Arc::new(policy),
            dry_run,
            deadline,
            record: Arc::default(),
        }
    }

    /// What the step's requests did so far.
    pub fn record(&self) -> std::sync::MutexGuard<'_, NetRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deny(&self, why: String, body: WasiBody) -> Pending {
        tracing::warn!("{why}");
        let mut r = self.record();
        r.denials.push(why);
        r.discards.push(discard(body));
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// A denied request's body, read and dropped as the plugin writes it, so its writes succeed
/// and it learns of the denial from the response, as from any failed request. (Dropping the
/// body at once fails those writes, and StarlingMonkey's `fetch`, componentize-js's, then
/// aborts its whole event loop instead of rejecting the promise the plugin catches.)
fn discard(mut body: WasiBody) -> wasmtime_wasi::runtime::AbortOnDropJoinHandle<()> {
    wasmtime_wasi::runtime::spawn(async move { while let Some(Ok(_)) = body.frame().await {} })
}

/// `e`, for a request that fails before its body is handed to the connection: the body is
/// [discarded](discard) meanwhile, for the same reason as a denied request's.
fn discard_then(record: &Mutex<NetRecord>, body: WasiBody, e: HttpError) -> HttpError {
    let task = discard(body);
    record
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .discards
        .push(task);
    e
}

fn is_safe(m: &http::Method) -> bool {
    *m == http::Method::GET || *m == http::Method::HEAD || *m == http::Method::OPTIONS
}

impl WasiHttpHooks for NetCap {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Sent,
    ) -> Pending {
        let secrets = self.policy.secrets();
        let url = shown_url(&request.uri().to_string(), &secrets);
        let method = request.method().clone();
        {
            let mut r = self.record();
            r.requests += 1;
            if r.requests > self.policy.max_requests {
                let max = self.policy.max_requests;
                drop(r);
                return self.deny(
                    format!(
                        "{method} {url}: the step's limit of {max} requests is spent (raise \
                         it with `http-limits: {{requests: N}}`)"
                    ),
                    request.into_body(),
                );
            }
        }
        let scheme = match request.uri().scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => {
                return self.deny(
                    format!("{method} {url}: only http and https are allowed"),
                    request.into_body(),
                );
            }
        };
        let Some(host) = request.uri().host().map(|h| h.to_ascii_lowercase()) else {
            return self.deny(
                format!("{method} {url}: the request names no host"),
                request.into_body(),
            );
        };
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if scheme == Scheme::Https { 443 } else { 80 });
        if self.policy.rule_for(scheme, &host, port).is_none() {
            return self.deny(
                format!(
                    "{method} {url}: {}://{host}:{port} is not in the step's `hosts:` ({})",
                    scheme.as_str(),
                    self.policy.listed()
                ),
                request.into_body(),
            );
        }
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        let record = self.record.clone();
        let policy = self.policy.clone();
        if self.dry_run && !is_safe(&method) {
            return Box::new(bounded(
                deadline,
                record.clone(),
                planned(request, method, url, policy, record),
            ));
        }
        // The host's headers replace any of the same name the plugin set.
        for h in &self.policy.headers {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_str(&h.value),
            ) else {
                continue;
            };
            let mut value = value;
            value.set_sensitive(h.secret);
            request.headers_mut().insert(name, value);
        }
        let target = Target {
            scheme,
            host,
            port,
            method,
            url,
        };
        Box::new(bounded(
            deadline,
            record.clone(),
            send(request, target, policy, record, deadline),
        ))
    }
}

/// Stop `work` at the step's deadline, recording that the network held the step.
async fn bounded<T>(
    deadline: Option<tokio::time::Instant>,
    record: Arc<Mutex<NetRecord>>,
    work: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    let Some(d) = deadline else {
        return work.await;
    };
    match tokio::time::timeout_at(d, work).await {
        Ok(r) => r,
        Err(_) => {
            record.lock().unwrap_or_else(|e| e.into_inner()).timed_out = true;
            Err(HttpError::ConnectionTimeout)
        }
    }
}

/// A dry run's non-safe request: its body read (within the limit), hashed and recorded; a
/// synthetic answer the plugin can tell apart.
async fn planned(
    request: http::Request<WasiBody>,
    method: http::Method,
    url: String,
    policy: Arc<NetPolicy>,
    record: Arc<Mutex<NetRecord>>,
) -> Result<(http::Response<WasiBody>, Sent), HttpError> {
    let body = Counted::new(
        request.into_body(),
        Dir::Out,
        policy.max_bytes_out,
        record.clone(),
        None,
        None,
    );
    let bytes = body.collect().await?.to_bytes();
    let sha = format!("{:x}", Sha256::digest(&bytes));
    let mut change = Change::new(ChangeKind::HttpRequest, format!("{method} {url}"));
    change.after = Some(sha.clone());
    change.http = Some(HttpInfo {
        method: method.to_string(),
        url,
        body_sha256: Some(sha),
        body_bytes: Some(bytes.len() as u64),
        status: None,
    });
    record
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .changes
        .push(change);
    let response = http::Response::builder()
        .status(202)
        .header("idem-dry-run", "1")
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
    Ok((response, Box::new(async { Ok(()) })))
}

struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    method: http::Method,
    url: String,
}

/// Resolve `t`'s host, check each address against the policy and connect to a checked one.
async fn connect(
    t: &Target,
    policy: &NetPolicy,
    record: &Mutex<NetRecord>,
) -> Result<tokio::net::TcpStream, HttpError> {
    let deny = |why: String| {
        tracing::warn!("{why}");
        record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .denials
            .push(why);
        HttpError::HttpRequestDenied
    };
    let addrs: Vec<SocketAddr> = match host_ip(&t.host) {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|_| HttpError::DnsError {
                rcode: Some("address not found".into()),
                info_code: None,
            })?
            .collect(),
    };
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
        .into_iter()
        .partition(|a| policy.address_allowed(a.ip()));
    if allowed.is_empty() {
        let ips: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
        return Err(deny(format!(
            "{} {}: {} resolves to {}, which is not a public address; idem reaches a \
             private, loopback or link-local address only when `hosts:` lists that address \
             itself (for example `{}://{}:{}`)",
            t.method,
            t.url,
            t.host,
            ips.join(", "),
            t.scheme.as_str(),
            ips.first().map_or("127.0.0.1", String::as_str),
            t.port
        )));
    }
    let mut stream = None;
    let mut last = None;
    for a in &allowed {
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    stream.ok_or_else(|| match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            HttpError::ConnectionRefused
        }
        Some(e) => HttpError::Connect(e),
        None => HttpError::DestinationUnavailable,
    })
}

/// Resolve, check the addresses, connect to a checked one, and send.
async fn send(
    mut request: http::Request<WasiBody>,
    t: Target,
    policy: Arc<NetPolicy>,
    record: Arc<Mutex<NetRecord>>,
    deadline: Option<tokio::time::Instant>,
) -> Result<(http::Response<WasiBody>, Sent), HttpError> {
    let stream = match connect(&t, &policy, &record).await {
        Ok(s) => s,
        Err(e) => return Err(discard_then(&record, request.into_body(), e)),
    };
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(
            request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        )
        .build()
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
    let digest: Arc<Mutex<BodyDigest>> = Arc::default();
    let request = request.map(|b| {
        Counted::new(
            b,
            Dir::Out,
            policy.max_bytes_out,
            record.clone(),
            None,
            Some(digest.clone()),
        )
        .boxed_unsync()
    });
    let response = match t.scheme {
        Scheme::Http => exchange(stream, request).await?,
        Scheme::Https => match tls(&t, stream).await {
            Ok(tls) => exchange(tls, request).await?,
            Err(e) => return Err(discard_then(&record, request.into_body(), e)),
        },
    };
    let (response, conn) = response;
    if !is_safe(&t.method) {
        let mut change = Change::new(ChangeKind::HttpRequest, format!("{} {}", t.method, t.url));
        change.http = Some(HttpInfo {
            method: t.method.to_string(),
            url: t.url.clone(),
            body_sha256: None,
            body_bytes: None,
            status: Some(response.status().as_u16()),
        });
        // The body's digest is read when the step's changes are taken: it may still be going
        // out now (a server may answer before it has read the whole body).
        let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
        let i = r.changes.len();
        r.changes.push(change);
        r.digests.push((i, digest));
    }
    let response = response.map(|b| {
        Counted::new(
            b.map_err(HttpError::from),
            Dir::In,
            policy.max_bytes_in,
            record.clone(),
            deadline,
            None,
        )
        .boxed_unsync()
    });
    Ok((response, conn))
}

/// A TLS session over `stream` with `t`'s host, checked against the Mozilla roots.
async fn tls(
    t: &Target,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| HttpError::InternalError(Some(e.to_string())))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = match host_ip(&t.host) {
        Some(ip) => rustls::pki_types::ServerName::from(ip),
        None => rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(HttpError::Tls)
}

/// One HTTP/1.1 exchange on `io`: the connection driven by a task that ends with the
/// response's body (or the store).
async fn exchange<I>(
    io: I,
    request: http::Request<WasiBody>,
) -> Result<(http::Response<hyper::body::Incoming>, Sent), HttpError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(io)).await?;
    let conn = wasmtime_wasi::runtime::spawn(conn);
    let response = sender.send_request(request).await?;
    Ok((
        response,
        Box::new(async move { conn.await.map_err(HttpError::from) }),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Out,
    In,
}

/// A body whose bytes count against the step's limit in one direction, and (for responses)
/// whose reads end at the step's deadline.
struct Counted<B> {
    inner: B,
    dir: Dir,
    limit: u64,
    record: Arc<Mutex<NetRecord>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// For a request sent under apply: its body's digest, for the journal.
    digest: Option<Arc<Mutex<BodyDigest>>>,
}

impl<B> Counted<B> {
    fn new(
        inner: B,
        dir: Dir,
        limit: u64,
        record: Arc<Mutex<NetRecord>>,
        deadline: Option<tokio::time::Instant>,
        digest: Option<Arc<Mutex<BodyDigest>>>,
    ) -> Self {
        Counted {
            inner,
            dir,
            limit,
            record,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            digest,
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .timed_out = true;
                    return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                }
                return Poll::Pending;
            }
            Poll::Ready(f) => f,
        };
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            if let Some(d) = &this.digest {
                let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                d.hasher.update(data);
                d.bytes += data.len() as u64;
            }
            let mut r = this.record.lock().unwrap_or_else(|e| e.into_inner());
            let (total, why) = match this.dir {
                Dir::Out => (&mut r.bytes_out, "sent (bytes-out)"),
                Dir::In => (&mut r.bytes_in, "received (bytes-in)"),
            };
            *total += data.len() as u64;
            if *total > this.limit {
                let why = format!(
                    "the step's limit of {} bytes {why} is spent (raise it with \
                     `http-limits: {{{}: N}}`)",
                    this.limit,
                    if this.dir == Dir::Out {
                        "bytes-out"
                    } else {
                        "bytes-in"
                    }
                );
                r.denials.push(why);
                return Poll::Ready(Some(Err(match this.dir {
                    Dir::Out => HttpError::HttpRequestBodySize(Some(this.limit)),
                    Dir::In => HttpError::HttpResponseBodySize(Some(this.limit)),
                })));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
