//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS:
//! the hash of the server's certificate, with the hash taken from the certificate's
//! signature algorithm and MD5/SHA-1 upgraded to SHA-256. Pure; `None` when the
//! algorithm has no defined hash (e.g. Ed25519, RSA-PSS), in which case we do not bind.

use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::Certificate;

const MD5_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.4");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

/// The channel binding data for the server certificate `der`, if it can be defined.
pub(crate) fn tls_server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let certificate = Certificate::from_der(der).ok()?;
    let algorithm = certificate.signature_algorithm.oid;
    if [
        MD5_WITH_RSA,
        SHA1_WITH_RSA,
        SHA256_WITH_RSA,
        ECDSA_WITH_SHA1,
        ECDSA_WITH_SHA256,
    ]
    .contains(&algorithm)
    {
        Some(Sha256::digest(der).to_vec())
    } else if [SHA384_WITH_RSA, ECDSA_WITH_SHA384].contains(&algorithm) {
        Some(Sha384::digest(der).to_vec())
    } else if [SHA512_WITH_RSA, ECDSA_WITH_SHA512].contains(&algorithm) {
        Some(Sha512::digest(der).to_vec())
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_an_ecdsa_p256_certificate_with_sha256() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let data = tls_server_end_point(cert.der()).unwrap();
        assert_eq!(data, Sha256::digest(cert.der()).to_vec());
    }

    #[test]
    fn hashes_an_ecdsa_p384_certificate_with_sha384() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(tls_server_end_point(cert.der()).unwrap().len(), 48);
    }

    #[test]
    fn gives_nothing_for_garbage_or_ed25519() {
        assert!(tls_server_end_point(b"not a certificate").is_none());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(tls_server_end_point(cert.der()).is_none());
    }
}
