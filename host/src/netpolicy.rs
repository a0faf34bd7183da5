//! A plugin step's network as data: where it may send requests (`hosts:`), the headers the
//! host adds (`headers:`, secrets read from the environment), and its limits. Built once per
//! step from the plan's words, with pure methods the network capability asks; the tables of
//! tests below are the rules.
//!
//! The rules, in order: a request's scheme, host and port must match an entry; then every
//! address the name resolves to that is not public (loopback, private, link-local, unique
//! local, multicast, unspecified, carrier-grade NAT) must itself be listed as a literal IP.
//! So `http://localhost:8080` alone never reaches 127.0.0.1, a name that resolves to the
//! cloud metadata address 169.254.169.254 is denied, and `127.0.0.1` (or `http://127.0.0.1:8080`)
//! listed is the one way to reach a loopback service.

use std::net::IpAddr;

/// Requests a step may make when its plan sets no `http-limits.requests`.
pub const DEFAULT_MAX_REQUESTS: u64 = 1000;
/// Request body bytes a step may send by default (64 MiB).
pub const DEFAULT_MAX_BYTES_OUT: u64 = 64 << 20;
/// Response body bytes a step may receive by default (256 MiB).
pub const DEFAULT_MAX_BYTES_IN: u64 = 256 << 20;

/// Which scheme an entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// How to write a `hosts:` entry, for the message of one that is malformed.
pub const HOSTS_HINT: &str = "write `[http://|https://]host[:port]`, for example \
     `api.example.com`, `*.s3.amazonaws.com:443` or `http://127.0.0.1:8080`";

#[derive(Clone, Debug, PartialEq)]
enum HostPat {
    /// One name, lowercased.
    Name(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    Suffix(String),
    Ip(IpAddr),
}

/// One `hosts:` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRule {
    scheme: Scheme,
    host: HostPat,
    port: u16,
    /// As the plan wrote it, for messages.
    pub text: String,
}

impl HostRule {
    /// Parse `[scheme://]host[:port]`. Without a scheme the entry is `https`; without a port,
    /// the scheme's default.
    pub fn parse(text: &str) -> Result<HostRule, String> {
        HostRule::parse_entry(text).map_err(|why| format!("{why}; {HOSTS_HINT}"))
    }

    /// [`HostRule::parse`], its error saying only what is wrong with the entry (the plan
    /// checks before any step runs give [`HOSTS_HINT`] as the hint).
    pub fn parse_entry(text: &str) -> Result<HostRule, String> {
        let bad = |why: &str| format!("`{text}` in `hosts:` {why}");
        let (scheme, rest) = match text.split_once("://") {
            Some(("http", r)) => (Scheme::Http, r),
            Some(("https", r)) => (Scheme::Https, r),
            Some((s, _)) => return Err(bad(&format!("has the scheme `{s}`, not http or https"))),
            None => (Scheme::Https, text),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad("is not a host with an optional port"));
        }
        // `[::1]:8080`, `[::1]`, `host:port`, `host`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("has text after `]`")),
            };
            (ip, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(bad("has an IPv6 address without brackets")),
                None => (rest, None),
            }
        };
        let port =
            match port {
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    bad(&format!("has the port `{p}`, not a number from 1 to 65535"))
                })?,
                None => scheme.default_port(),
            };
        let host = host.to_ascii_lowercase();
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            HostPat::Ip(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("has a wildcard that is not `*.` before a domain"));
            }
            HostPat::Suffix(format!(".{domain}"))
        } else if host.contains('*') || host.is_empty() {
            return Err(bad("has a wildcard that is not `*.` before a domain"));
        } else {
            HostPat::Name(host)
        };
        Ok(HostRule {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }

    fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        match &self.host {
            HostPat::Name(n) => *n == host,
            HostPat::Suffix(s) => host.ends_with(s.as_str()),
            HostPat::Ip(ip) => host_ip(host) == Some(*ip),
        }
    }
}

/// A request's host as an IP address, when it is one (`[::1]` included).
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// One header the host adds to every request to a listed host.
#[derive(Clone)]
pub struct Header {
    pub name: String,
    pub value: String,
    /// Read from the environment: never shown anywhere.
    pub secret: bool,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret { "<secret>" } else { &self.value };
        write!(f, "{}: {value}", self.name)
    }
}

/// A step's network.
#[derive(Clone, Debug, Default)]
pub struct NetPolicy {
    pub rules: Vec<HostRule>,
    pub headers: Vec<Header>,
    pub max_requests: u64,
    pub max_bytes_out: u64,
    pub max_bytes_in: u64,
}

impl NetPolicy {
    /// No network: every request is denied.
    pub fn none() -> Self {
        NetPolicy {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_bytes_out: DEFAULT_MAX_BYTES_OUT,
            max_bytes_in: DEFAULT_MAX_BYTES_IN,
            ..NetPolicy::default()
        }
    }

    /// The policy for a step's `hosts:`, `headers:` and `http-limits:`; `env` reads an
    /// environment variable (for `env:NAME` values).
    pub fn build(
        hosts: &[String],
        headers: &[(String, String)],
        limits: [Option<u64>; 3],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let rules = hosts
            .iter()
            .map(|h| HostRule::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        if !headers.is_empty() && rules.is_empty() {
            return Err(
                "`headers:` needs `hosts:`: they are added to requests to the listed \
                        hosts only"
                    .into(),
            );
        }
        let mut out = Vec::new();
        for (name, value) in headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "`headers:` has `{name}`, which is not a header name"
                ));
            }
            let (value, secret) = match value.strip_prefix("env:") {
                Some(var) => match env(var) {
                    Some(v) => (v, true),
                    None => {
                        return Err(format!(
                            "`headers: {{{name}: env:{var}}}` reads the environment variable \
                             {var}, which is not set; set it in the job's environment"
                        ));
                    }
                },
                None => (value.clone(), false),
            };
            if http::HeaderValue::from_str(&value).is_err() {
                let shown = if secret { "its value" } else { value.as_str() };
                return Err(format!(
                    "`headers:` `{name}`: {shown} is not a valid header value (no newlines or \
                     control characters)"
                ));
            }
            out.push(Header {
                name: name.to_ascii_lowercase(),
                value,
                secret,
            });
        }
        let [requests, bytes_out, bytes_in] = limits;
        Ok(NetPolicy {
            rules,
            headers: out,
            max_requests: requests.unwrap_or(DEFAULT_MAX_REQUESTS),
            max_bytes_out: bytes_out.unwrap_or(DEFAULT_MAX_BYTES_OUT),
            max_bytes_in: bytes_in.unwrap_or(DEFAULT_MAX_BYTES_IN),
        })
    }

    /// The entry that allows `scheme://host:port`, if any (`host` lowercased).
    pub fn rule_for(&self, scheme: Scheme, host: &str, port: u16) -> Option<&HostRule> {
        self.rules.iter().find(|r| r.matches(scheme, host, port))
    }

    /// Whether a connection may go to `ip`: a public address, or one listed literally.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.rules.iter().any(|r| r.host == HostPat::Ip(ip))
    }

    /// The plan's words for the entries, for messages.
    pub fn listed(&self) -> String {
        if self.rules.is_empty() {
            "none: the step has no `hosts:`, so no network".into()
        } else {
            self.rules
                .iter()
                .map(|r| r.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// Every secret value, to strip from anything shown.
    pub fn secrets(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|h| h.secret && !h.value.is_empty())
            .map(|h| h.value.clone())
            .collect()
    }
}

/// Whether `ip` is an address on the public internet (what a name may resolve to without
/// being listed as a literal IP).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A URL as shown in reports and the journal: values of query parameters that look like
/// credentials, and any secret value, replaced by `<redacted>`.
pub fn shown_url(url: &str, secrets: &[String]) -> String {
    let mut out = match url.split_once('?') {
        None => url.to_owned(),
        Some((base, query)) => {
            let parts: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if looks_secret(k) => format!("{k}=<redacted>"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", parts.join("&"))
        }
    };
    for s in secrets {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token", "key", "secret", "pass", "sig", "auth", "cred", "session", "x-amz-", "code",
    ]
    .iter()
    .any(|w| k.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> NetPolicy {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        NetPolicy::build(&hosts, &[], [None; 3], |_| None).unwrap()
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        use Scheme::*;
        let p = policy(&[
            "api.example.com",
            "*.s3.amazonaws.com:443",
            "http://127.0.0.1:8080",
            "http://[::1]:9000",
        ]);
        // (scheme, host, port, allowed)
        let table: &[(Scheme, &str, u16, bool)] = &[
            (Https, "api.example.com", 443, true),
            (Http, "api.example.com", 80, false),
            (Https, "api.example.com", 8443, false),
            (Https, "evil.example.com", 443, false),
            (Https, "bucket.s3.amazonaws.com", 443, true),
            (Https, "s3.amazonaws.com", 443, false),
            (Https, "bucket.s3.amazonaws.com.evil.io", 443, false),
            (Http, "127.0.0.1", 8080, true),
            (Http, "127.0.0.1", 8081, false),
            (Https, "127.0.0.1", 8080, false),
            (Http, "localhost", 8080, false),
            (Http, "[::1]", 9000, true),
        ];
        for (scheme, host, port, allowed) in table {
            assert_eq!(
                p.rule_for(*scheme, host, *port).is_some(),
                *allowed,
                "{scheme:?} {host} {port}"
            );
        }
    }

    #[test]
    fn non_public_addresses_need_a_literal_entry() {
        let named = policy(&["http://localhost:8080", "metadata.example.com"]);
        let literal = policy(&["http://127.0.0.1:8080", "169.254.169.254"]);
        let table: &[(&str, bool, bool)] = &[
            // (address, allowed by `named`, allowed by `literal`)
            ("127.0.0.1", false, true),
            ("169.254.169.254", false, true),
            ("10.1.2.3", false, false),
            ("192.168.0.1", false, false),
            ("100.64.0.1", false, false),
            ("0.0.0.0", false, false),
            ("::1", false, false),
            ("fd00::1", false, false),
            ("fe80::1", false, false),
            ("::ffff:127.0.0.1", false, false),
            ("93.184.216.34", true, true),
            ("2606:4700::1", true, true),
        ];
        for (ip, by_name, by_literal) in table {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(named.address_allowed(ip), *by_name, "{ip} by name");
            assert_eq!(literal.address_allowed(ip), *by_literal, "{ip} literal");
        }
    }

    #[test]
    fn bad_entries_and_headers_are_refused_with_the_input_named() {
        for bad in [
            "ftp://x",
            "x:0",
            "x:99999",
            "x:65536",
            "a/b",
            "*x.com",
            "a.*.com",
            "::1",
            "",
            "http://",
            "*.",
            "https://*.",
            "http://a.example.com/v1",
        ] {
            let e = HostRule::parse(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        let hosts = vec!["api.example.com".to_string()];
        let h = |n: &str, v: &str| vec![(n.to_string(), v.to_string())];
        let e = NetPolicy::build(&hosts, &h("Authorization", "env:NOPE"), [None; 3], |_| None)
            .unwrap_err();
        assert!(e.contains("NOPE") && e.contains("not set"), "{e}");
        let e = NetPolicy::build(&[], &h("X", "y"), [None; 3], |_| None).unwrap_err();
        assert!(e.contains("needs `hosts:`"), "{e}");
        let p = NetPolicy::build(
            &hosts,
            &h("Authorization", "env:T"),
            [Some(3), None, None],
            |_| Some("s3cret".into()),
        )
        .unwrap();
        assert_eq!(p.secrets(), ["s3cret"]);
        assert_eq!(p.max_requests, 3);
        assert_eq!(p.max_bytes_in, DEFAULT_MAX_BYTES_IN);
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn shown_urls_hide_credentials() {
        let s = vec!["s3cret".to_string()];
        assert_eq!(
            shown_url("https://a/x?page=2&access_token=abc&X-Amz-Signature=q", &s),
            "https://a/x?page=2&access_token=<redacted>&X-Amz-Signature=<redacted>"
        );
        assert_eq!(
            shown_url("https://a/s3cret/y", &s),
            "https://a/<redacted>/y"
        );
    }
}
