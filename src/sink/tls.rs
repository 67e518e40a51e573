//! CA bundles for the sinks that take one (nats, redis): read a PEM file and check that it
//! holds at least one certificate, so a wrong path or file is a configuration error at
//! startup rather than a failed handshake on every delivery.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// Reads the PEM bundle at `path`; fails with a lower-case reason when it cannot be read or
/// holds no certificate.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}
