//! The rustls client configuration of the relay's HTTPS clients (webhooks, the OTLP trace
//! export): the ring provider, chosen explicitly so no process-wide provider has to be
//! installed, and the Mozilla root set from `webpki-roots`, HTTP/1.1 only.

use std::sync::Arc;

/// A client config for HTTPS to public endpoints.
pub fn https_client_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
