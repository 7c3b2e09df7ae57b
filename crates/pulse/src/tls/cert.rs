//! Certificates: read from PEM files (rustls-pki-types), or made at start (rcgen), self-signed
//! or signed by a CA.
//!
//! A leaf signed by a CA carries the CA's subject as its issuer and the CA's subject key
//! identifier as its authority key identifier (rcgen's `Issuer::from_ca_cert_der` reads both),
//! so OpenSSL, Go and webpki all build the chain.

use std::path::Path;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain (leaf first) and the leaf's private key.
pub(super) struct Certified {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

/// Reads a PEM chain and its PEM private key.
pub(super) fn from_files(cert_file: &Path, key_file: &Path) -> Result<Certified, String> {
    Ok(Certified {
        chain: read_chain(cert_file)?,
        key: read_key(key_file)?,
    })
}

/// Makes a key and a certificate for `server_name` (port stripped) and `extra_names`, signed by
/// `ca` (certificate file, key file) when given, else self-signed.
pub(super) fn generate(
    server_name: &str,
    extra_names: &[String],
    ca: Option<(&Path, &Path)>,
) -> Result<Certified, String> {
    let host = host_of(server_name);
    let mut names = vec![host.to_owned()];
    names.extend(extra_names.iter().filter(|n| n.as_str() != host).cloned());
    let mut params =
        CertificateParams::new(names).map_err(|e| format!("TLS: bad certificate name: {e}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, host);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| format!("TLS: cannot make a key: {e}"))?;

    let chain = match ca {
        Some((ca_cert_file, ca_key_file)) => {
            let ca_cert = read_chain(ca_cert_file)?.swap_remove(0);
            let ca_key = KeyPair::try_from(&read_key(ca_key_file)?)
                .map_err(|e| format!("TLS: CA key {}: {e}", ca_key_file.display()))?;
            let issuer = Issuer::from_ca_cert_der(&ca_cert, ca_key)
                .map_err(|e| format!("TLS: CA certificate {}: {e}", ca_cert_file.display()))?;
            params.use_authority_key_identifier_extension = true;
            let leaf = params
                .signed_by(&key, &issuer)
                .map_err(|e| format!("TLS: cannot sign the certificate with the CA: {e}"))?;
            tracing::info!(ca = %ca_cert_file.display(), name = host, "TLS: made a CA-signed certificate");
            vec![leaf.der().clone(), ca_cert]
        }
        None => {
            let cert = params
                .self_signed(&key)
                .map_err(|e| format!("TLS: cannot make a self-signed certificate: {e}"))?;
            tracing::info!(name = host, "TLS: made a self-signed certificate");
            vec![cert.der().clone()]
        }
    };
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(Certified { chain, key })
}

/// The `CERTIFICATE` blocks of a PEM file, in order; at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: String| format!("TLS: certificate file {}: {e}", path.display());
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 RSA or SEC1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("TLS: key file {}: {e}", path.display()))
}

/// The host part of a server name: without a port, IPv6 literals without brackets.
pub(super) fn host_of(server_name: &str) -> &str {
    if let Some(rest) = server_name.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server_name.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => server_name,
    }
}
