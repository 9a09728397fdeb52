//! Value parsers that keep etcd's (Go's) syntax: booleans, durations and listener URLs.

use std::time::Duration;

use url::Url;

/// A boolean as Go's `strconv.ParseBool` reads it (etcd's flags do).
pub(super) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// A duration in Go's `time.ParseDuration` syntax: `0`, or numbers with units `ns`, `us`
/// (or `µs`), `ms`, `s`, `m`, `h`, e.g. `1h30m`, `1.5s`, `100ms`. Negative durations are refused.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 100ms, 10s, 30m or 1h30m";
    let mut rest = text.trim();
    if let Some(unsigned) = rest.strip_prefix('+') {
        rest = unsigned;
    }
    if rest.starts_with('-') {
        return Err("duration must not be negative".to_owned());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after_whole) = rest.split_at(whole_len);
        let (fraction, after_number) = match after_whole.strip_prefix('.') {
            Some(after_dot) => {
                let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(fraction_len)
            }
            None => ("", after_whole),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(EXPECTED.to_owned());
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(format!("missing unit; {EXPECTED}")),
            other => return Err(format!("unknown unit {other:?}; {EXPECTED}")),
        };
        let too_long = || "duration is too long".to_owned();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part_ns = whole.checked_mul(unit_ns).ok_or_else(too_long)?;
        // Digits past the 18th cannot matter at nanosecond resolution.
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| EXPECTED.to_owned())?;
            let scale = 10u128.pow(u32::try_from(fraction.len()).expect("at most 18 digits"));
            part_ns += digits * unit_ns / scale;
        }
        total_ns = total_ns.checked_add(part_ns).ok_or_else(too_long)?;
        rest = after_unit;
    }
    let total_ns = u64::try_from(total_ns).map_err(|_| "duration is too long".to_owned())?;
    Ok(Duration::from_nanos(total_ns))
}

/// A listener or advertised URL: http, https or unix, with a host and an explicit port, no path.
/// As in etcd, `unix://host:port` names the unix socket `host:port`, a file in the working
/// directory (etcd's `unixs://`, TLS over a unix socket, is refused).
pub(super) fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("not a URL: {err}"))?;
    match url.scheme() {
        "http" | "https" | "unix" => {}
        "unixs" => {
            return Err(
                "scheme \"unixs\" (TLS over a unix socket) is not supported; use unix, or https"
                    .to_owned(),
            );
        }
        other => {
            return Err(format!(
                "scheme {other:?} is not supported; use http, https or unix"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host; expected scheme://host:port".to_owned());
    }
    if !has_explicit_port(text) {
        return Err("the URL has no port; expected scheme://host:port".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a path, query or fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".to_owned());
    }
    Ok(url)
}

/// Whether the authority of a URL names a port (the `url` crate hides a scheme's default port).
fn has_explicit_port(text: &str) -> bool {
    let Some((_, after_scheme)) = text.split_once("://") else {
        return false;
    };
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .map(|(_, after)| after)
            .and_then(|after| after.strip_prefix(':')),
        None => host_port.rsplit_once(':').map(|(_, port)| port),
    };
    port.is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// TLS 1.2 cipher suites by Go/IANA name that rustls (ring provider) implements, with the name
/// rustls gives each. Go's short ChaCha20 names are accepted too.
const TLS12_CIPHER_SUITES: &[(&str, &str)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// TLS 1.3 suites: Go accepts their names in the list but never lets them be turned off.
const TLS13_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Names Go knows that rustls does not implement (CBC, RC4, 3DES, static RSA key exchange).
const GO_ONLY_CIPHER_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// One `--cipher-suites` entry, returned as the canonical name (rustls's spelling); TLS 1.3
/// names are kept as written.
pub(super) fn parse_cipher_suite(name: &str) -> Result<String, String> {
    if let Some((_, canonical)) = TLS12_CIPHER_SUITES.iter().find(|(go, _)| *go == name) {
        return Ok((*canonical).to_owned());
    }
    if TLS13_CIPHER_SUITES.contains(&name) {
        return Ok(name.to_owned());
    }
    if GO_ONLY_CIPHER_SUITES.contains(&name) {
        return Err(format!(
            "cipher suite {name} is not supported by rustls (only ECDHE with AES-GCM or \
             ChaCha20-Poly1305)"
        ));
    }
    Err(format!("unknown cipher suite {name}"))
}
