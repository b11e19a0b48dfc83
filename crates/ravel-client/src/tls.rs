//! HTTPS to a cluster controller: which certificate to trust, the controller's URL, and a
//! blocking TLS connection (rustls over a std `TcpStream`).
//!
//! Trust is either a pinned SHA-256 fingerprint of the controller's own certificate (what a
//! controller with a self-signed certificate prints at start: like an SSH host key, names,
//! chain and validity dates are not looked at, but the handshake's signatures are verified
//! against that certificate's key), or a CA certificate file checked the standard way (chain
//! and name). Only the ring provider is used, passed explicitly: nothing depends on a
//! process-wide default provider.

use crate::ClientError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme, StreamOwned,
};
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The longest wait for a TCP connection: a controller that does not answer is reported after
/// this, not after the (much longer) time a request may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SHA-256 of a DER certificate as uppercase hex pairs joined by `:`, the way
/// `openssl x509 -noout -fingerprint -sha256` prints it.
pub fn fingerprint(cert_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// A fingerprint as people paste it (upper or lower case, with or without colons, with an
/// optional `sha256:` prefix or openssl's `SHA256 Fingerprint=`) in the form of [`fingerprint`].
pub fn normalize_fingerprint(s: &str) -> Result<String, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let t = ["sha256 fingerprint=", "sha256:"]
        .iter()
        .find_map(|p| lower.starts_with(p).then(|| &t[p.len()..]))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "bad certificate fingerprint {s:?}: expected the 64 hex digits of a SHA-256 (e.g. AB:CD:..., as the controller prints it)"
        ));
    }
    let hex = hex.to_ascii_uppercase();
    Ok(hex.as_bytes().chunks(2).map(|p| std::str::from_utf8(p).unwrap_or_default()).collect::<Vec<_>>().join(":"))
}

/// Which certificate a client accepts from the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint (any format [`normalize_fingerprint`] takes).
    Fingerprint(String),
    /// Certificates that chain to a CA certificate in this PEM file and name the controller's host.
    CaFile(PathBuf),
}

/// A TLS client configuration (ring provider, safe default protocol versions) that trusts what
/// `trust` says.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let config = match trust {
        Trust::Fingerprint(f) => {
            let verifier = PinnedCertificate {
                fingerprint: normalize_fingerprint(f)?,
                algorithms: provider.signature_verification_algorithms,
            };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{} holds a certificate that cannot be a CA: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("no certificate (-----BEGIN CERTIFICATE-----) in {}", path.display()));
            }
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("cannot use the CA certificate {}: {e}", path.display()))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Accepts exactly one end-entity certificate, by fingerprint.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity.as_ref());
        if seen == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = FingerprintMismatch { seen, pinned: self.fingerprint.clone() };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The pinned verifier's refusal, carried through rustls's error to [`ClientError::CertificateMismatch`].
#[derive(Debug)]
struct FingerprintMismatch {
    seen: String,
    pinned: String,
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate fingerprint {} is not the pinned {}", self.seen, self.pinned)
    }
}

impl std::error::Error for FingerprintMismatch {}

/// A controller: where it is, how to authenticate, what to trust.
pub(crate) struct Remote {
    /// `https://HOST[:PORT]` as given, without a trailing `/`.
    pub(crate) url: String,
    host: String,
    port: u16,
    /// `Host:` and `Authorization:` header lines, ready to send.
    headers: String,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Remote {
    // Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Remote {
    pub(crate) fn new(url: &str, token: Option<String>, trust: Trust) -> Result<Remote, ClientError> {
        let (url, host, port, authority) = parse_url(url).map_err(ClientError::Config)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ClientError::Config(format!("bad host name {host:?} in the controller URL {url}")))?;
        let mut headers = format!("host: {authority}\r\n");
        if let Some(token) = token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Config(
                    "the token has spaces or control characters: check that it was copied whole".into(),
                ));
            }
            headers.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        let config = client_config(&trust).map_err(ClientError::Config)?;
        Ok(Remote { url, host, port, headers, server_name, config })
    }

    pub(crate) fn headers(&self) -> &str {
        &self.headers
    }

    /// A TCP connection with `timeout` on reads and writes, and the TLS handshake done, so a
    /// failure says which step failed.
    pub(crate) fn connect(&self, timeout: Duration) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable { url: self.url.clone(), message };
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", self.host)))?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout.min(CONNECT_TIMEOUT)) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(format!("{addr}: {e}")),
            }
        }
        let Some(mut tcp) = tcp else {
            return Err(unreachable(last.unwrap_or_else(|| format!("{} has no address", self.host))));
        };
        let io = |e: std::io::Error| ClientError::Io {
            target: format!("the controller at {}", self.url),
            message: e.to_string(),
        };
        tcp.set_read_timeout(Some(timeout)).map_err(io)?;
        tcp.set_write_timeout(Some(timeout)).map_err(io)?;
        // Requests are written whole, then answered: no reason to wait for more to send.
        tcp.set_nodelay(true).map_err(io)?;
        let mut conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| ClientError::Tls { url: self.url.clone(), message: e.to_string() })?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| self.handshake_error(e, timeout))?;
        }
        Ok(StreamOwned::new(conn, tcp))
    }

    fn handshake_error(&self, e: std::io::Error, timeout: Duration) -> ClientError {
        let tls = |message: String| ClientError::Tls { url: self.url.clone(), message };
        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) = rustls_error
            && let Some(m) = other.downcast_ref::<FingerprintMismatch>()
        {
            return ClientError::CertificateMismatch {
                url: self.url.clone(),
                seen: m.seen.clone(),
                pinned: m.pinned.clone(),
            };
        }
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                tls(format!("no TLS answer within {}s: is this the controller's HTTPS port?", timeout.as_secs()))
            }
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => {
                tls("the connection was closed during the handshake: is this the controller's HTTPS port?".into())
            }
            _ if rustls_error.is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_))) => {
                tls(format!("{e}: the server does not speak TLS here"))
            }
            _ => tls(e.to_string()),
        }
    }
}

/// `https://HOST[:PORT][/]` → (the URL without a trailing `/`, host, port (default 443), the
/// authority for `Host:`). Plain `http://` is refused: the controller serves TLS only.
fn parse_url(url: &str) -> Result<(String, String, u16, String), String> {
    let trimmed = url.trim().trim_end_matches('/');
    let scheme_end = trimmed.find("://");
    let scheme = scheme_end.map(|i| trimmed[..i].to_ascii_lowercase());
    let authority = match (scheme.as_deref(), scheme_end) {
        (Some("https"), Some(i)) => &trimmed[i + 3..],
        (Some("http"), _) => {
            return Err(format!(
                "the controller URL {url} is plain http: use https:// (the controller serves its API over TLS only)"
            ));
        }
        _ => return Err(format!("bad controller URL {url:?}: use https://HOST[:PORT]")),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) || authority.contains(char::is_whitespace) {
        return Err(format!("bad controller URL {url:?}: use https://HOST[:PORT], with no path"));
    }
    let bad_port = || format!("bad port in the controller URL {url:?}");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: [::1] or [::1]:8443.
        let (ip, after) = rest.split_once(']').ok_or_else(|| format!("bad controller URL {url:?}: unclosed ["))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad_port)?),
        };
        (ip.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad_port)?,
        None => 443,
    };
    if host.is_empty() {
        return Err(format!("bad controller URL {url:?}: no host"));
    }
    Ok((format!("https://{authority}"), host, port, authority.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let f = fingerprint(b"not really a certificate");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.chars().all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));
        let bare: String = f.chars().filter(|c| *c != ':').collect();
        for s in
            [f.clone(), f.to_lowercase(), bare.clone(), format!("sha256:{bare}"), format!("SHA256 Fingerprint={f}")]
        {
            assert_eq!(normalize_fingerprint(&s).as_deref(), Ok(f.as_str()), "{s}");
        }
        for bad in ["", "AB:CD", &bare[1..], &format!("{}G", &bare[1..]), &format!("md5:{bare}")] {
            assert!(normalize_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let p = parse_url;
        assert_eq!(
            p("https://ctl.lab:8443/"),
            Ok(("https://ctl.lab:8443".into(), "ctl.lab".into(), 8443, "ctl.lab:8443".into()))
        );
        assert_eq!(p("HTTPS://ctl").map(|t| (t.1, t.2)), Ok(("ctl".into(), 443)));
        assert_eq!(p("https://[::1]:9000").map(|t| (t.1, t.2, t.3)), Ok(("::1".into(), 9000, "[::1]:9000".into())));
        assert!(p("http://ctl:8443").unwrap_err().contains("use https://"));
        for bad in
            ["ctl:8443", "https://", "https://ctl:0", "https://ctl:x", "https://ctl/api", "https://u@ctl", "ftp://x"]
        {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
