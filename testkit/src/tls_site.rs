//! A loopback HTTPS site with a certificate of the kit's own test CA
//! ([`TEST_CA_PEM`]; its key was thrown away once the site's certificate
//! was signed): the stand-in for an `https://` page, trusted only by a
//! crawler that is given the test CA (`CrawlerConfig::extra_roots_pem`).
//!
//! Every path answers `200` with `<title>Secure PATH</title>`; each
//! connection serves one request (`Connection: close`). The certificate
//! names `localhost` and `127.0.0.1` and is valid until 2126.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

/// The test CA's certificate (PEM): what a crawler must trust to fetch
/// from a [`TlsSite`].
pub const TEST_CA_PEM: &[u8] = include_bytes!("../tls/ca.pem");
const SITE_CERT_PEM: &[u8] = include_bytes!("../tls/site.pem");
const SITE_KEY_PEM: &[u8] = include_bytes!("../tls/site.key");

/// A running HTTPS site.
pub struct TlsSite {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
}

impl TlsSite {
    /// Serves on a free loopback port until the process ends.
    pub async fn start() -> Self {
        let cert = CertificateDer::from_pem_slice(SITE_CERT_PEM).expect("the site's certificate");
        let key = PrivateKeyDer::from_pem_slice(SITE_KEY_PEM).expect("the site's key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("the site's certificate and key match");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counted = served.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate hangs up here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(path) = request_path(&mut tls).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = format!("<!doctype html><title>Secure {path}</title>");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { addr, served }
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Requests answered so far (over TLS the client accepted).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Reads a request's head (at most 16 KiB) and returns its path.
async fn request_path<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).map(str::to_string)
}
