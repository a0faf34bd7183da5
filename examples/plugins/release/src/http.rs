//! A small blocking HTTP client on the raw `wasi:http` 0.2 API: one request, its whole
//! response, redirects followed by the plugin (each hop is a new request the host checks).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

use crate::fail;
use crate::idem::plugin::report::StepError;

/// A response, whole.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The host answered for the server: a dry run does not send this method.
    pub dry_run: bool,
    what: String,
}

impl Response {
    pub fn expect_success(&self, doing: &str) -> Result<(), StepError> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        Err(fail(format!(
            "{doing}: {} answered {}: {}",
            self.what,
            self.status,
            String::from_utf8_lossy(&self.body)
        )))
    }
}

/// Send `method url` with `body`, following up to 5 redirects.
pub fn send(method: &str, url: &str, body: Option<&[u8]>) -> Result<Response, StepError> {
    let mut url = url.to_owned();
    for _ in 0..=5 {
        let r = once(method, &url, body)?;
        if let (301 | 302 | 303 | 307 | 308, Some(to)) = (r.0.status, r.1) {
            url = if to.starts_with('/') {
                let (scheme, rest) = url.split_once("://").unwrap_or(("https", &url));
                let host = rest.split('/').next().unwrap_or("");
                format!("{scheme}://{host}{to}")
            } else {
                to
            };
            continue;
        }
        return Ok(r.0);
    }
    Err(fail(format!("{method} {url}: more than 5 redirects")))
}

fn once(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Result<(Response, Option<String>), StepError> {
    let what = format!("{method} {url}");
    let err = |m: String| fail(format!("{what}: {m}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("not an absolute URL".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    if let Some(b) = body {
        let len = b.len().to_string();
        for (name, value) in [
            ("content-type", &b"application/octet-stream"[..]),
            ("content-length", len.as_bytes()),
        ] {
            headers
                .append(name, value)
                .map_err(|e| err(format!("{e:?}")))?;
        }
    }
    let req = OutgoingRequest::new(headers);
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        other => Method::Other(other.into()),
    };
    let scheme = match scheme {
        "http" => Scheme::Http,
        _ => Scheme::Https,
    };
    let bad = |_| err("invalid request".into());
    req.set_method(&m).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let out = req.body().map_err(bad)?;
    let future = outgoing_handler::handle(req, None).map_err(|e| err(format!("{e:?}")))?;
    if let Some(bytes) = body {
        let stream = out.write().map_err(bad)?;
        for chunk in bytes.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| err(format!("sending the body: {e:?}")))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(out, None).map_err(|e| err(format!("{e:?}")))?;
    future.subscribe().block();
    let resp = future
        .get()
        .ok_or_else(|| err("no response".into()))?
        .map_err(|_| err("response taken twice".into()))?
        .map_err(|e| err(format!("{e:?}")))?;
    let status = resp.status();
    let headers = resp.headers();
    let dry_run = !headers.get("idem-dry-run").is_empty();
    let location = headers
        .get("location")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    drop(headers);
    let incoming = resp.consume().map_err(|_| err("no body".into()))?;
    let stream = incoming.stream().map_err(|_| err("no body".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(err(format!("reading the response: {e:?}"))),
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(incoming);
    Ok((
        Response {
            status,
            body,
            dry_run,
            what,
        },
        location,
    ))
}
