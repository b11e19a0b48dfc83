//! The client against an in-test HTTPS server (rustls over a std `TcpListener`, certificate from
//! rcgen): pinned fingerprints, a CA file, the bearer token, refusals, and a streamed answer.

use ravel_client::tls::{Trust, fingerprint};
use ravel_client::{Client, ClientError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

struct Server {
    port: u16,
    fingerprint: String,
    cert_pem: String,
    /// Each request's head (or what went wrong with the connection), in order.
    seen: mpsc::Receiver<String>,
}

/// Serves one connection per answer: each answer is a list of writes, sent with a pause
/// between them (so a chunked answer arrives in pieces).
fn serve(names: &[&str], answers: Vec<Vec<&'static str>>) -> Server {
    let key = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert_der = CertificateDer::from(key.cert.der().to_vec());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut s = StreamOwned::new(ServerConnection::new(config.clone()).unwrap(), tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            let outcome = loop {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    Ok(_) => break Err("closed before the request ended".to_string()),
                    Err(e) => break Err(format!("error: {e}")),
                }
                if head.ends_with(b"\r\n\r\n") {
                    break Ok(String::from_utf8_lossy(&head).into_owned());
                }
            };
            let ok = outcome.is_ok();
            tx.send(outcome.unwrap_or_else(|e| e)).unwrap();
            if !ok {
                continue;
            }
            for part in answer {
                s.write_all(part.as_bytes()).unwrap();
                s.flush().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    Server { port, fingerprint: fingerprint(&cert_der), cert_pem: key.cert.pem(), seen }
}

const STATUS: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

#[test]
fn a_pinned_fingerprint_is_trusted_and_the_token_is_sent() {
    // Names are not checked with a pin: the certificate names another host.
    let server = serve(&["ravel-controller.example"], vec![vec![STATUS]]);
    let url = format!("https://127.0.0.1:{}", server.port);
    let client =
        Client::remote(&url, Some("xyz".into()), Trust::Fingerprint(server.fingerprint.to_lowercase())).unwrap();
    assert!(client.is_remote());
    assert_eq!(client.target(), url);
    let v: serde_json::Value = client.get("/v1/status").unwrap();
    assert_eq!(v["ok"], true);
    let head = server.seen.recv().unwrap();
    assert!(head.starts_with("GET /v1/status HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nauthorization: Bearer xyz\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)), "{head}");
}

#[test]
fn another_certificate_than_the_pinned_one_is_refused() {
    let server = serve(&["localhost"], vec![vec![STATUS]]);
    let pinned = fingerprint(b"some other certificate");
    let url = format!("https://127.0.0.1:{}", server.port);
    let client = Client::remote(&url, Some("xyz".into()), Trust::Fingerprint(pinned.clone())).unwrap();
    let err = client.get::<serde_json::Value>("/v1/status").unwrap_err();
    assert!(matches!(err, ClientError::CertificateMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "the controller's certificate has fingerprint {}, not the pinned {pinned}",
            server.fingerprint
        )),
        "{text}"
    );
    // The token never left: the server saw no request.
    assert!(!server.seen.recv().unwrap().contains("authorization"));
}

#[test]
fn a_ca_file_is_trusted_for_the_names_it_certifies() {
    let server = serve(&["localhost"], vec![vec![STATUS], vec![STATUS]]);
    let dir = std::env::temp_dir().join(format!("ravel-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &server.cert_pem).unwrap();
    let client =
        Client::remote(&format!("https://localhost:{}/", server.port), None, Trust::CaFile(ca.clone())).unwrap();
    let v: serde_json::Value = client.get("/v1/status").unwrap();
    assert_eq!(v["ok"], true);
    let head = server.seen.recv().unwrap();
    assert!(!head.contains("authorization"), "no token, no header: {head}");
    // The same CA, but a name the certificate does not carry.
    let client = Client::remote(&format!("https://127.0.0.1:{}", server.port), None, Trust::CaFile(ca)).unwrap();
    let err = client.get::<serde_json::Value>("/v1/status").unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS with the controller at https://127.0.0.1:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    // A CA file that is not one.
    let err = Client::remote("https://localhost:1", None, Trust::CaFile(dir.join("missing.pem"))).unwrap_err();
    assert!(err.to_string().contains("cannot read the CA certificate"), "{err}");
}

#[test]
fn plain_http_and_bad_settings_are_refused() {
    let trust = Trust::Fingerprint(fingerprint(b"x"));
    let err = Client::remote("http://ctl.lab:8443", Some("t".into()), trust.clone()).unwrap_err();
    assert!(matches!(err, ClientError::Config(_)));
    assert!(err.to_string().contains("use https://"), "{err}");
    let err = Client::remote("https://ctl.lab:8443", Some("a b".into()), trust).unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    let err = Client::remote("https://ctl.lab", None, Trust::Fingerprint("AB:CD".into())).unwrap_err();
    assert!(err.to_string().contains("bad certificate fingerprint"), "{err}");
}

#[test]
fn a_controller_that_does_not_answer_is_named() {
    // A port nobody listens on: bind one, then free it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let client = Client::remote(&url, None, Trust::Fingerprint(fingerprint(b"x"))).unwrap();
    let err = client.get::<serde_json::Value>("/v1/status").unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }) && !err.is_not_running(), "{err:?}");
    assert!(err.to_string().starts_with(&format!("the controller at {url} does not answer")), "{err}");
}

#[test]
fn answers_stream_over_tls_and_errors_come_back_as_api_errors() {
    let chunked = vec![
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        "6\r\none\ntw\r\n",
        "4\r\no\nth\r\n",
        "4\r\nree\n\r\n",
        "0\r\n\r\n",
    ];
    let events = vec![
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        "1c\r\n: keep-alive\nid: 7\ndata: a\n\n\r\n",
        "18\r\nid: 8\nevent: x\ndata: b\n\n\r\n",
        "0\r\n\r\n",
    ];
    let denied = vec![
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 47\r\n\r\n",
        "{\"code\":\"unauthorized\",\"error\":\"unknown token\"}",
    ];
    let server = serve(&["localhost"], vec![chunked, events, denied]);
    let url = format!("https://127.0.0.1:{}", server.port);
    let client = Client::remote(&url, Some("xyz".into()), Trust::Fingerprint(server.fingerprint.clone())).unwrap();

    let mut lines = vec![];
    client
        .stream_lines("/v1/jobs?all=true&format=ndjson", Duration::from_secs(10), |l| {
            lines.push(String::from_utf8_lossy(l).into_owned());
            true
        })
        .unwrap();
    assert_eq!(lines, ["one", "two", "three"]);
    assert!(server.seen.recv().unwrap().contains("\r\nauthorization: Bearer xyz\r\n"));

    let mut seen = vec![];
    client
        .events("/v1/events", Some("6"), Duration::from_secs(10), |e| {
            seen.push((e.id, e.event, e.data));
            true
        })
        .unwrap();
    assert_eq!(seen, [(Some("7".into()), "message".into(), "a".into()), (Some("8".into()), "x".into(), "b".into())]);
    let head = server.seen.recv().unwrap();
    assert!(head.contains("\r\nlast-event-id: 6\r\n") && head.contains("authorization: Bearer xyz"), "{head}");

    let err = client.raw("DELETE", "/v1/nodes/gpu1", None).unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 401, .. }), "{err:?}");
    assert_eq!((err.code(), err.to_string().as_str()), (Some("unauthorized"), "unknown token"));
    assert!(server.seen.recv().unwrap().starts_with("DELETE /v1/nodes/gpu1 HTTP/1.1\r\n"));
}
