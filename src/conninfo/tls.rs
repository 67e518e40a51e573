//! The TLS side of [`super::ConnInfo`]: the root certificates and the certificate verifiers
//! behind each `sslmode`, in the one `rustls::ClientConfig` both connection planes use.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{ConnInfoError, SslMode};

/// ring explicitly, so no process-wide default provider has to be installed first.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn load_roots(path: Option<&Path>) -> Result<RootCertStore, ConnInfoError> {
    let Some(path) = path else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let pem = std::fs::read(path).map_err(|source| ConnInfoError::ReadRootCert {
        path: path.to_owned(),
        source,
    })?;
    // Sections of other kinds (a key, a CRL) are skipped; a malformed section is an error.
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ConnInfoError::BadRootCert {
            path: path.to_owned(),
            reason: pem_error(&error),
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnInfoError::NoRootCert {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// `error` in words: the PEM parser prints the lines it means as byte lists.
fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a section has no \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// The one place `sslmode` becomes certificate checks (see the module table).
///
/// For `disable` the result is never used for a handshake (see `ConnInfo::tls`).
pub(super) fn build_tls_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<Arc<ClientConfig>, ConnInfoError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::Disable, _) => Arc::new(NoCertificateVerification {
            provider: Arc::clone(&provider),
        }),
        // libpq: with a root certificate, prefer/require verify the chain like verify-ca.
        (SslMode::Prefer | SslMode::Require, Some(path)) => {
            Arc::new(ChainOnlyVerifier::new(load_roots(Some(path))?, &provider)?)
        }
        (SslMode::Prefer | SslMode::Require, None) => Arc::new(NoCertificateVerification {
            provider: Arc::clone(&provider),
        }),
        (SslMode::VerifyCa, path) => {
            Arc::new(ChainOnlyVerifier::new(load_roots(path)?, &provider)?)
        }
        (SslMode::VerifyFull, path) => WebPkiServerVerifier::builder_with_provider(
            Arc::new(load_roots(path)?),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| ConnInfoError::Tls(rustls::Error::General(e.to_string())))?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ConnInfoError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `sslmode=require` without a CA: encryption against passive eavesdroppers only, as in
/// libpq. Handshake signatures are still checked so the session keys belong to the
/// presented certificate.
#[derive(Debug)]
pub(super) struct NoCertificateVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoCertificateVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the full webpki chain check, minus the host name. webpki checks the name
/// last, after chain, validity and usage, so forgiving only the name error forgives
/// nothing else.
#[derive(Debug)]
pub(super) struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ChainOnlyVerifier {
    fn new(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> Result<Self, ConnInfoError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                .build()
                .map_err(|e| ConnInfoError::Tls(rustls::Error::General(e.to_string())))?;
        Ok(ChainOnlyVerifier { inner })
    }
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
