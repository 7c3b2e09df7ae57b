//! TLS for listeners: serve a certificate from files, or make one at start.
//!
//! A listener's `tls` table takes one of two forms:
//! - `cert_file` + `key_file`: PEM files used as given (chain leaf first; PKCS#8, PKCS#1 or SEC1
//!   key).
//! - neither: a fresh ECDSA P-256 key and certificate are made at every start for the server name
//!   (port stripped) plus `extra_names`. The certificate is signed by the CA in `ca_cert` +
//!   `ca_key` when both files exist at start (Complement copies its per-run CA to
//!   `/complement/ca/ca.{crt,key}`, the key as PKCS#1 "RSA PRIVATE KEY"); otherwise it is
//!   self-signed. This is for tests and development; a deployment gives `cert_file`/`key_file`.
//!
//! The leaf signed by a CA carries the CA's subject as its issuer byte for byte and the CA's
//! subject key identifier as its authority key identifier, so OpenSSL, Go and webpki all build the
//! chain. Only rcgen and axum-server are used: PEM and the few DER fields needed are read here.

use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose,
};

/// TLS settings of one listener, as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first, served as given. Requires `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Without `cert_file`: PEM CA certificate that signs the certificate made at start.
    /// If this file or `ca_key` does not exist at start, the certificate is self-signed.
    pub ca_cert: Option<PathBuf>,
    /// PEM private key of `ca_cert`: PKCS#1 RSA ("RSA PRIVATE KEY") or PKCS#8 ("PRIVATE KEY").
    pub ca_key: Option<PathBuf>,
    /// Without `cert_file`: DNS names or IP addresses the certificate made at start covers
    /// besides the server name, e.g. `["localhost", "127.0.0.1"]`.
    #[serde(default)]
    pub extra_names: Vec<String>,
}

/// Builds the TLS configuration of a listener (ALPN h2 and http/1.1).
///
/// Call it from a multi-thread tokio runtime or from outside any runtime.
pub fn load_rustls_config(tls: &TlsConfig, server_name: &str) -> Result<RustlsConfig, String> {
    let (chain, key) = certified_pem(tls, server_name)?;
    rustls_config(chain, key)
}

/// Hands PEM to axum-server, whose loader is async (it parses on the blocking pool).
fn rustls_config(chain_pem: String, key_pem: String) -> Result<RustlsConfig, String> {
    let load = RustlsConfig::from_pem(chain_pem.into_bytes(), key_pem.into_bytes());
    let loaded = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => tokio::task::block_in_place(|| runtime.block_on(load)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| format!("TLS: {e}"))?
            .block_on(load),
    };
    loaded.map_err(|e| format!("TLS: cannot use the certificate and key: {e}"))
}

/// The PEM certificate chain (leaf first) and PEM private key that `tls` describes.
fn certified_pem(tls: &TlsConfig, server_name: &str) -> Result<(String, String), String> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            if tls.ca_cert.is_some() || tls.ca_key.is_some() || !tls.extra_names.is_empty() {
                return Err(
                    "TLS: ca_cert, ca_key and extra_names only apply without cert_file".into(),
                );
            }
            Ok((read(cert_file)?, read(key_file)?))
        }
        (None, None) => generate(tls, server_name),
        _ => Err("TLS: cert_file and key_file go together".into()),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("TLS: cannot read {}: {e}", path.display()))
}

/// Makes a key and a certificate for `server_name`, signed by the configured CA if its files
/// exist, else self-signed.
fn generate(tls: &TlsConfig, server_name: &str) -> Result<(String, String), String> {
    let ca = match (&tls.ca_cert, &tls.ca_key) {
        (Some(cert), Some(key)) if cert.exists() && key.exists() => Some((cert, key)),
        (Some(_), Some(_)) | (None, None) => None,
        _ => return Err("TLS: ca_cert and ca_key go together".into()),
    };
    let host = host_of(server_name);
    let mut names = vec![host.to_owned()];
    names.extend(
        tls.extra_names
            .iter()
            .filter(|n| n.as_str() != host)
            .cloned(),
    );
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
            let ca_pem = read(ca_cert_file)?;
            let bad_ca = |e: String| format!("TLS: CA certificate {}: {e}", ca_cert_file.display());
            let (_, ca_der) = pem_decode(&ca_pem, "CERTIFICATE").map_err(bad_ca)?;
            let ca_key = load_ca_key(ca_key_file)?;
            let issuer = issuer_of(&ca_der, ca_key).map_err(bad_ca)?;
            params.use_authority_key_identifier_extension = true;
            let leaf = params
                .signed_by(&key, &issuer)
                .map_err(|e| format!("TLS: cannot sign the certificate with the CA: {e}"))?;
            tracing::info!(ca = %ca_cert_file.display(), name = host, "TLS: made a CA-signed certificate");
            format!("{}{}", leaf.pem(), ca_pem)
        }
        None => {
            let cert = params
                .self_signed(&key)
                .map_err(|e| format!("TLS: cannot make a self-signed certificate: {e}"))?;
            tracing::info!(name = host, "TLS: made a self-signed certificate");
            cert.pem()
        }
    };
    Ok((chain, key.serialize_pem()))
}

/// The host part of a server name: without a port, IPv6 literals without brackets.
fn host_of(server_name: &str) -> &str {
    if let Some(rest) = server_name.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match server_name.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => server_name,
    }
}

/// Loads a CA private key for rcgen, which (with its ring backend) reads PKCS#8 only: a PKCS#1
/// RSA key is rewrapped as PKCS#8.
fn load_ca_key(path: &Path) -> Result<KeyPair, String> {
    let bad = |e: String| format!("TLS: CA key {}: {e}", path.display());
    let (label, der) = pem_decode(&read(path)?, "PRIVATE KEY").map_err(bad)?;
    let pkcs8 = match label.as_str() {
        "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&der),
        "PRIVATE KEY" => der,
        other => {
            return Err(bad(format!(
                "{other} is not supported; use PKCS#8 or PKCS#1 RSA"
            )));
        }
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| bad(e.to_string()))
}

/// The label and contents of the first PEM block whose label ends with `label_suffix`.
fn pem_decode(text: &str, label_suffix: &str) -> Result<(String, Vec<u8>), String> {
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after.find("-----").ok_or("malformed PEM")?;
        let label = &after[..label_end];
        let body = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let body_end = body.find(&end_marker).ok_or("malformed PEM: no END line")?;
        if label.ends_with(label_suffix) {
            let der = base64_decode(&body[..body_end]).ok_or("malformed PEM: bad base64")?;
            return Ok((label.to_owned(), der));
        }
        rest = &body[body_end + end_marker.len()..];
    }
    Err(format!("no PEM block ending in \"{label_suffix}\""))
}

/// Standard base64 (RFC 4648) with padding; whitespace is skipped.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Wraps a PKCS#1 RSAPrivateKey in a PKCS#8 PrivateKeyInfo (RFC 5208):
/// SEQUENCE { INTEGER 0, SEQUENCE { OID rsaEncryption, NULL }, OCTET STRING pkcs1 }.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    const VERSION_AND_ALGORITHM: &[u8] = &[
        0x02, 0x01, 0x00, // INTEGER 0
        0x30, 0x0d, // SEQUENCE, 13 bytes
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, // 1.2.840.113549.1.1.1
        0x05, 0x00, // NULL
    ];
    let mut body = VERSION_AND_ALGORITHM.to_vec();
    der_write(&mut body, 0x04, pkcs1);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_write(&mut out, 0x30, &body);
    out
}

fn der_write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// An rcgen issuer with the subject and subject key identifier of the CA certificate `ca` (DER).
fn issuer_of(ca: &[u8], key: KeyPair) -> Result<Issuer<'static, KeyPair>, String> {
    let mut tbs = tbs_certificate(ca)?;
    let mut next = |what: &str| der_next(&mut tbs).ok_or(format!("truncated certificate ({what})"));
    if next("version")?.0 == 0xa0 {
        next("serial")?; // [0] version was present; this was the serial number
    }
    next("signature")?;
    next("issuer")?;
    next("validity")?;
    let (subject_tag, subject) = next("subject")?;
    next("subject public key")?;
    if subject_tag != 0x30 {
        return Err("certificate subject is not a SEQUENCE".into());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = parse_name(subject)?;
    // [3] EXPLICIT Extensions: look for subjectKeyIdentifier (2.5.29.14).
    while let Some((tag, content)) = der_next(&mut tbs) {
        if tag != 0xa3 {
            continue;
        }
        let mut extensions = der_one(content, 0x30)?;
        while let Some((_, mut extension)) = der_next(&mut extensions) {
            let (_, oid) = der_next(&mut extension).ok_or("truncated extension")?;
            let mut value = der_next(&mut extension).ok_or("truncated extension")?;
            if value.0 == 0x01 {
                value = der_next(&mut extension).ok_or("truncated extension")?; // critical flag
            }
            if oid == [0x55, 0x1d, 0x0e] {
                let key_id = der_one(value.1, 0x04)?;
                params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.to_vec());
            }
        }
    }
    Ok(Issuer::new(params, key))
}

/// The content of the TBSCertificate, the first field of a Certificate.
fn tbs_certificate(cert: &[u8]) -> Result<&[u8], String> {
    let mut fields = der_one(cert, 0x30)?;
    match der_next(&mut fields) {
        Some((0x30, tbs)) => Ok(tbs),
        _ => Err("malformed certificate".into()),
    }
}

/// Name: SEQUENCE OF SET OF AttributeTypeAndValue, one attribute per set (as rcgen writes them).
fn parse_name(mut name: &[u8]) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    while let Some((tag, set)) = der_next(&mut name) {
        if tag != 0x31 {
            return Err("bad name in certificate".into());
        }
        let mut attribute = der_one(set, 0x30)?;
        let (oid_tag, oid) = der_next(&mut attribute).ok_or("truncated name")?;
        let (value_tag, value) = der_next(&mut attribute).ok_or("truncated name")?;
        if oid_tag != 0x06 {
            return Err("bad name attribute in certificate".into());
        }
        let text = || std::str::from_utf8(value).map_err(|_| "name is not text".to_string());
        let bad = |e: rcgen::Error| format!("name attribute: {e}");
        let value = match value_tag {
            0x0c => DnValue::Utf8String(text()?.to_owned()),
            0x13 => DnValue::PrintableString(text()?.try_into().map_err(bad)?),
            0x16 => DnValue::Ia5String(text()?.try_into().map_err(bad)?),
            0x14 => DnValue::TeletexString(text()?.try_into().map_err(bad)?),
            0x1e => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(value.to_vec()).map_err(bad)?,
            ),
            0x1c => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(value.to_vec()).map_err(bad)?,
            ),
            other => return Err(format!("name attribute of unsupported type 0x{other:02x}")),
        };
        dn.push(DnType::from_oid(&decode_oid(oid)?), value);
    }
    Ok(dn)
}

fn decode_oid(bytes: &[u8]) -> Result<Vec<u64>, String> {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for &b in bytes {
        acc = acc.checked_mul(128).ok_or("OID arc too large")? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    if acc != 0 || arcs.is_empty() {
        return Err("bad OID".into());
    }
    Ok(arcs)
}

/// Reads one DER TLV (definite length) from the front of `input`: (tag, content).
fn der_next<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    *input = after;
    Some((tag, content))
}

/// The content of `input`, which must be exactly one TLV with tag `tag`.
fn der_one(mut input: &[u8], tag: u8) -> Result<&[u8], String> {
    match der_next(&mut input) {
        Some((t, content)) if t == tag && input.is_empty() => Ok(content),
        _ => Err(format!("malformed DER (expected tag 0x{tag:02x})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA made like Complement's (RSA-4096 key as PKCS#1 "RSA PRIVATE KEY", a subject with
    /// several attributes, a subjectKeyIdentifier), with `openssl genrsa -traditional 4096` and
    /// `openssl req -x509 -new -sha256 -days 36500 -subj "/C=GB/ST=London/L=London/street=123
    /// Street/postalCode=12345/O=matrix.org/CN=Complement Test CA" -addext
    /// basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,digitalSignature,
    /// cRLSign -addext extendedKeyUsage=serverAuth`.
    const TEST_CA_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIGFjCCA/6gAwIBAgIUGFmnVPB7X1BICemtPCADd5mOezkwDQYJKoZIhvcNAQEL
BQAwgYYxCzAJBgNVBAYTAkdCMQ8wDQYDVQQIDAZMb25kb24xDzANBgNVBAcMBkxv
bmRvbjETMBEGA1UECQwKMTIzIFN0cmVldDEOMAwGA1UEEQwFMTIzNDUxEzARBgNV
BAoMCm1hdHJpeC5vcmcxGzAZBgNVBAMMEkNvbXBsZW1lbnQgVGVzdCBDQTAgFw0y
NjExMjIwMzUzMTlaGA8yMTI2MTAyOTAzNTMxOVowgYYxCzAJBgNVBAYTAkdCMQ8w
DQYDVQQIDAZMb25kb24xDzANBgNVBAcMBkxvbmRvbjETMBEGA1UECQwKMTIzIFN0
cmVldDEOMAwGA1UEEQwFMTIzNDUxEzARBgNVBAoMCm1hdHJpeC5vcmcxGzAZBgNV
BAMMEkNvbXBsZW1lbnQgVGVzdCBDQTCCAiIwDQYJKoZIhvcNAQEBBQADggIPADCC
AgoCggIBAJeUmAQx7LDz9GQYvhese3v50sLUOkfmfBX73TlMr1SmBeGfymF814x6
n+qJJKu2zCoLJqdXd47N2fWwKAFT8+9dD0NmZ6PxX+IQL1qQGqAaCsFn6hkGZcOH
Q8vbrvLnYza7VgPH3rl2rM+V9CZtGE4aTeBduNWylSYVINI/qeIafZvVZungdXIZ
6JIQPcl6xShbJqmCpyWBXpw06AOUoeqn/k8A9pD5G68U3rRHyqVX0OUnn11a9APf
GTAJ5bV+pG1kFM801QtmUaaXxnN2TBuJfKHbqCf9LfnPBEYnureyOQPp2XIbJjjw
mmYvh87B0Oa8WDTPyTqZwXmokSGC2Ld/LE9CJGa5Y6rdy6yBWgZATPXEZZLV1R0A
mwbs0+bxD1OdCexN0q4WzrrIGUEIy7iy/8MDCt9fEazZ22zKMAUavkbapWqIucsV
4ZOvXJoWwxxDptebCND8hbNtsGDAbexZ/YN5ZbqpnUdVH8lJxh9t7zywS58Kurgy
5J26KqC5UeIa8KB/rP0RqE5GHq1QXQApUBK/LOgnfanA43u619EwKHykJLMdJGv9
0UY8VC9B8BcGW8gHrJu4LzivlDJkA6Qc4U1h2zoCJ/gYAiDNvyTTsjIx53kzbZwA
2Gc6n/UMzBVWrDU15+0KL/GQAFOQcG1Q64G1YWtB1MM9Za35pIKTAgMBAAGjeDB2
MB0GA1UdDgQWBBTzKua30KEtiAOx1q/g5ZR1fv8K6TAfBgNVHSMEGDAWgBTzKua3
0KEtiAOx1q/g5ZR1fv8K6TAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIB
hjATBgNVHSUEDDAKBggrBgEFBQcDATANBgkqhkiG9w0BAQsFAAOCAgEAdI49oVHg
W44mJ1Inb9weSkh5ecoZyGWKoCXVY8V1NagjwSSH4ppYot/PlikIX5lgfSirNExW
TvFIlnuiib3XtSftVS6OWcGiFvfqm6a+1ewZz51wWMDP91OM/yJyoGJhIiP3JR92
j11tR3IGaQQxjT9qVNokO2rgXxnEGGSUJu4JsWIi+S0CSUX5D68NNdzEb+muetA5
QbKir/AuJqJZE6BZIh16h4Fv3gPZ3rEP4i1XaVohMfRnJrJovTO+stp4m8Wp5ld8
/5rTdqkuRDWCvXrBifkyrZuNhyti/0CU35rdzRICgnL2WeFFVuoZfqfjphhMIclE
N4eVOCu7/SRyy1ubrZ1scb4BcFPoG2MAlD5fbLDJSra8ul3BLiQJOo97byIbo9mE
7oNq6W+PccWhiIH6tvAUnaGwkfGyyLdrjFPS348BYgE4LAMH7o1huZErGNE7OYpj
9wzRamkc5yJeaCDv4pkafmWG+iKad2oD8HqX8iRTQmVfyri8bW96Itcx6esNGjps
KHDdnO4QlsIDQ2zoYdlgLDrAnWQwbI/gorb8B5unK+nMrFfxFWsOLAezgUkvf8n7
e0tMXEtbeaRaxNdnq7SdKK/qy0Aki/9btMuY2w0G5kuaFDR3qnFfX8nMCyQ6KoFO
508A47X5OfZvkN9r9LgFklcyn32YQJZ1tEY=
-----END CERTIFICATE-----
";

    const TEST_CA_KEY_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----
MIIJJwIBAAKCAgEAl5SYBDHssPP0ZBi+F6x7e/nSwtQ6R+Z8FfvdOUyvVKYF4Z/K
YXzXjHqf6okkq7bMKgsmp1d3js3Z9bAoAVPz710PQ2Zno/Ff4hAvWpAaoBoKwWfq
GQZlw4dDy9uu8udjNrtWA8feuXasz5X0Jm0YThpN4F241bKVJhUg0j+p4hp9m9Vm
6eB1chnokhA9yXrFKFsmqYKnJYFenDToA5Sh6qf+TwD2kPkbrxTetEfKpVfQ5Sef
XVr0A98ZMAnltX6kbWQUzzTVC2ZRppfGc3ZMG4l8oduoJ/0t+c8ERie6t7I5A+nZ
chsmOPCaZi+HzsHQ5rxYNM/JOpnBeaiRIYLYt38sT0IkZrljqt3LrIFaBkBM9cRl
ktXVHQCbBuzT5vEPU50J7E3SrhbOusgZQQjLuLL/wwMK318RrNnbbMowBRq+Rtql
aoi5yxXhk69cmhbDHEOm15sI0PyFs22wYMBt7Fn9g3lluqmdR1UfyUnGH23vPLBL
nwq6uDLknboqoLlR4hrwoH+s/RGoTkYerVBdAClQEr8s6Cd9qcDje7rX0TAofKQk
sx0ka/3RRjxUL0HwFwZbyAesm7gvOK+UMmQDpBzhTWHbOgIn+BgCIM2/JNOyMjHn
eTNtnADYZzqf9QzMFVasNTXn7Qov8ZAAU5BwbVDrgbVha0HUwz1lrfmkgpMCAwEA
AQKCAgABIb3jl4G9ngNkDvXcI6egYrKgmTLHpe+14HnCKhj55k4Tj2azBhMeu91e
RjFiKmOc2slQHdbprdPv8yvSeqaN5MroanwVybfUSKbI8n11Y1SFwOkskTf06Nhe
4PGajZetyuAaju0qYqjjZ/pHmct94J8Xc9mZTELqWEXYVXz3NgSr/A6GEpCWU4Rx
mVBltb9b10HerZ/zQMH4tnQny5tdcBlBY7pBOTjZPJtYPXVRRs0siNsKOqeYXuMZ
OfDGOvj+elYbNhmdEbfK0QsrtJ3+Xufgzeg3sAZUvksRUbj78Tu21V97Ob9LFeAK
cHexp0r9bpYQckuOc9XxkO89ZsBJIY77p3TVAdItcbaAiJtGrfZJeJfaWben/jkA
ZBhjXWwEOfucAcGh90HBRjJyUFHWokob+Rhmetsfek0fNTKpPjYXWRYw7kPHh15b
wDm1HQmS6mSGr5FVRcyN4Y7VypfnKCoFqMLC1lnjqik2DIna5HR61X4V6VJswvOi
m+fCInujbDJP/p++3QVP4SE9EO8iShrNqD5OcpCl9wM9zGJxV6EjqZLl5rbxqBWb
FF+GTjrhUiiKwwH4tK6PmT59/QNRl6PFMjHZTjrYk8XSf7PUs8XIAG0VWicBWSBV
7xKpjFzZFr1H1i/bbooDZV89MV2Obviwa9RnOWX/kaSazsTKYQKCAQEAynSeh2CE
pfhhYH1Toe5Kn5JvQPr40CJwguUlHYMgHqdXgQjrTQ1Lg9Q6FCUrmKIymQ30X969
yYL2LjUcEWey3iM3gaf7WJfhGohC/8PDt+h93a1571+H8EYPWbeimaMNLOrHOhTl
r/l3J60zsT5VOs7fwvHUXH3e4jNM+v9d+65lmIndMMloro15z17MAkRlRklu+w9v
7feAs3KQWiK3T/1+qUgM9ezKh0rKXUd+AH8uPj6XdQvj4yMnhP9NB5N30e+ijpcz
KlKKWT54h5q1IClKteXX9ddctebybQUhQf+FPyxLss/WkbfKhQi3Q2baz2EkV8Ic
sY/5PZyD9qdSuQKCAQEAv6txmgqQ4K4Ri0vVgWeuWx2ngAfkp35JkVghuqsGBmj5
kjfy0ufEQUXvjMTezSJwO9OIdED832IqaFatF4PtRGGJzNJAp7U5YVPgGceL2RmX
vlgIL2qVF7YTA0AuFBoTO55//jDqasHj6SswY+fQtbXbsrSvfsXEcOLS/EMvP9vH
T82YOo/i/YWqJAEpod3naFiZN/bo45mtUhsX3Gv8Z4GE7CBZkHxNs4/tH2Xsqaxs
S4E0V3rgFxcajDwAf3LXQ6ChenPi2bW0CbwAonkPfrWrjFnbnZc6nCL8mX4ZEPw9
8RLY5T8AEWqRQ3YFIQtBaFtKT/dqm86vmb2tJNXJqwKCAQBnKPlGXgX5VBC6S+H7
lyJrIQCTic6Sr5nI+N3qpdAODpLl6xeK0YVzDQbzEOWgBrXli1jEKQlnztWGQgWl
UMOxsRwtctz+DZXkIR6SmLv3z/2ioSyKrpDj+68CtjGiO5URGCigDdnjyyfODdFT
NUHUj2kxOmxNHM4fUKifFNRc1EZsbYNJwrcWinxRECq/1P4NzIlCYGFWTlFEHtIz
O5FQrwiFVXNVNG0WdyOaWD16H1P+34HpYD+kk1slx7kGbTwWuxaHtb+ahyh7xPtB
jbFRS/kHqrBaUnypK57Hsl9586t/vyBrYsAgzBfjpcdMDvLbzNHp7b0VNRl5LXGI
k0XxAoIBADnWQjF5fr5NyH2AJK0n3DUifajkuNrSAOEa9xKdCPRmOOkmeN+rkE0i
DWctAQ5llfh3nHV4JtZBiQpzHUg7Rx2bUTm9OEVjKi10Yetli423a1LEvbORNewx
xQr2EvF97M/QxE6v9AzC9UMnBTMggJpUhjcmzs4yX1SxHXmBzIA4kaxDHeyN/rEB
5JV4xFdT3sBd+94nY59KgEKGamzZKRESxEl8eYpf+BJ3G9adqwyIOyWNl33OVlCh
aCFo+b17qfl+Pzv0PD/11J4bXRWp8kMKDvoLI3oqaEU1SYQHyQiXFRnp1glXOW4H
+k2hD2spOlODOKlov4LEm7iIw/aZjIECggEAAu+KgustomTimpbDr9NygKU4i14j
qq2m9XyUUHs3L+Br06YxyQpyEgSEvBvyPt5Q/I2Y0y9ka3BVaLGSUtVEjMj4creQ
Ya8p2/N+RiOpjCcBO76ryx5UVUu9mgnJybLN0y1iu0boh8mtX/qpTqhdT/KtGPQd
dDuN1MQzmH8YJ560s6rp15ac9bpnY5qZTzlNrdrxDj7vk6Fqj7WV/GmcQa+EFllr
Rl+JgiGwvSraDOgJ+e/t8K44DM5P8VPdoOFNVFbVdMNHpn3wqzbuRXZziZpVH4ch
LGBCVGgaGL8w4Clq9OfGzQTcmRyCzm62L08Y8Xn5Nb7dbhpmwzB9iOQ5ag==
-----END RSA PRIVATE KEY-----
";

    /// A fresh directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pulse-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Serves `config` on 127.0.0.1 and GETs `https://{name}:{port}/`, trusting only `roots`.
    async fn fetch(config: RustlsConfig, roots: &[&str], name: &str) -> Result<String, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        let roots = roots
            .iter()
            .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        let client = reqwest::Client::builder()
            .tls_certs_only(roots)
            .resolve(name, addr)
            .build()
            .unwrap();
        let response = client
            .get(format!("https://{name}:{}/", addr.port()))
            .send()
            .await;
        handle.shutdown();
        match response {
            Ok(r) => Ok(r.text().await.unwrap()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let ok: TlsConfig = toml::from_str(
            r#"ca_cert = "/complement/ca/ca.crt"
               ca_key = "/complement/ca/ca.key"
               extra_names = ["localhost"]"#,
        )
        .unwrap();
        assert_eq!(
            ok.ca_cert.as_deref(),
            Some(Path::new("/complement/ca/ca.crt"))
        );
        assert_eq!(
            toml::from_str::<TlsConfig>("").unwrap(),
            TlsConfig::default()
        );
        assert!(toml::from_str::<TlsConfig>(r#"cert = "x.pem""#).is_err());
    }

    #[test]
    fn loads_outside_a_runtime() {
        assert!(load_rustls_config(&TlsConfig::default(), "hs1").is_ok());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn self_signed_certificate_covers_the_server_name() {
        let (chain, key) = certified_pem(&TlsConfig::default(), "hs1:8448").unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 1);
        let config = rustls_config(chain.clone(), key).unwrap();
        assert_eq!(fetch(config.clone(), &[&chain], "hs1").await.unwrap(), "ok");
        assert!(fetch(config, &[&chain], "hs2").await.is_err());
        // And through the public entry point.
        assert!(load_rustls_config(&TlsConfig::default(), "hs1").is_ok());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn extra_names_are_covered() {
        let tls = TlsConfig {
            extra_names: vec!["localhost".into(), "127.0.0.1".into()],
            ..TlsConfig::default()
        };
        let (chain, key) = certified_pem(&tls, "hs1").unwrap();
        let config = rustls_config(chain.clone(), key).unwrap();
        for name in ["hs1", "localhost", "127.0.0.1"] {
            let got = fetch(config.clone(), &[&chain], name).await;
            assert_eq!(got.as_deref(), Ok("ok"), "{name}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn complement_ca_signs_the_certificate() {
        let dir = temp_dir("ca");
        let tls = TlsConfig {
            ca_cert: Some(write(&dir, "ca.crt", TEST_CA_CERT)),
            ca_key: Some(write(&dir, "ca.key", TEST_CA_KEY_PKCS1)),
            ..TlsConfig::default()
        };
        let (chain, key) = certified_pem(&tls, "hs1").unwrap();
        assert!(chain.ends_with(TEST_CA_CERT));
        let config = rustls_config(chain.clone(), key).unwrap();
        // Trusting only the CA is enough, for the server name only.
        assert_eq!(
            fetch(config.clone(), &[TEST_CA_CERT], "hs1").await.unwrap(),
            "ok"
        );
        assert!(fetch(config, &[TEST_CA_CERT], "hs2").await.is_err());
        // The leaf's issuer is the CA's subject byte for byte, and its authority key identifier
        // is the CA's subject key identifier (OpenSSL needs both).
        let (_, ca) = pem_decode(TEST_CA_CERT, "CERTIFICATE").unwrap();
        let (_, leaf) = pem_decode(&chain, "CERTIFICATE").unwrap();
        let (ca_subject, ca_ski, _) = name_fields(&ca);
        let (_, _, leaf_issuer) = name_fields(&leaf);
        assert_eq!(leaf_issuer, ca_subject);
        let ski = ca_ski.expect("the test CA has a subjectKeyIdentifier");
        assert!(
            leaf.windows(ski.len()).any(|w| w == ski.as_slice()),
            "AKI is not the CA's SKI"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// (subject, subjectKeyIdentifier, issuer) of a DER certificate, raw.
    fn name_fields(cert: &[u8]) -> (Vec<u8>, Option<Vec<u8>>, Vec<u8>) {
        let mut tbs = tbs_certificate(cert).unwrap();
        let mut fields = Vec::new();
        while let Some(field) = der_next(&mut tbs) {
            fields.push(field);
        }
        let offset = usize::from(fields[0].0 == 0xa0);
        let issuer = fields[offset + 2].1.to_vec();
        let subject = fields[offset + 4].1.to_vec();
        let ski = fields.iter().find(|f| f.0 == 0xa3).and_then(|ext| {
            let pos = ext.1.windows(3).position(|w| w == [0x55, 0x1d, 0x0e])?;
            let mut rest = &ext.1[pos + 3..];
            let (_, wrapped) = der_next(&mut rest)?;
            Some(der_one(wrapped, 0x04).ok()?.to_vec())
        });
        (subject, ski, issuer)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn missing_ca_files_fall_back_to_self_signed() {
        let dir = temp_dir("noca");
        let tls = TlsConfig {
            ca_cert: Some(dir.join("ca.crt")),
            ca_key: Some(dir.join("ca.key")),
            ..TlsConfig::default()
        };
        let (chain, key) = certified_pem(&tls, "hs2").unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 1);
        let config = rustls_config(chain.clone(), key).unwrap();
        assert_eq!(fetch(config, &[&chain], "hs2").await.unwrap(), "ok");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unusable_ca_is_an_error() {
        let dir = temp_dir("badca");
        let tls = TlsConfig {
            ca_cert: Some(write(&dir, "ca.crt", TEST_CA_CERT)),
            ca_key: Some(write(&dir, "ca.key", "not a key")),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&tls, "hs1").is_err());
        let tls = TlsConfig {
            ca_cert: Some(write(
                &dir,
                "ca2.crt",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            )),
            ca_key: Some(write(&dir, "ca2.key", TEST_CA_KEY_PKCS1)),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&tls, "hs1").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn certificate_files_are_used_as_given() {
        let dir = temp_dir("files");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["example.org".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = TlsConfig {
            cert_file: Some(write(&dir, "cert.pem", &cert.pem())),
            key_file: Some(write(&dir, "key.pem", &key.serialize_pem())),
            ..TlsConfig::default()
        };
        let config = load_rustls_config(&tls, "ignored.example").unwrap();
        assert_eq!(
            fetch(config, &[&cert.pem()], "example.org").await.unwrap(),
            "ok"
        );
        // A PKCS#1 RSA key file works too.
        let rsa = TlsConfig {
            cert_file: Some(write(&dir, "ca.crt", TEST_CA_CERT)),
            key_file: Some(write(&dir, "ca.key", TEST_CA_KEY_PKCS1)),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&rsa, "hs1").is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn half_configurations_are_errors() {
        let only_cert = TlsConfig {
            cert_file: Some("/x.pem".into()),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&only_cert, "hs1").is_err());
        let only_ca = TlsConfig {
            ca_cert: Some("/x.pem".into()),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&only_ca, "hs1").is_err());
        let both = TlsConfig {
            cert_file: Some("/x.pem".into()),
            key_file: Some("/y.pem".into()),
            ca_cert: Some("/ca.pem".into()),
            ca_key: Some("/ca.key".into()),
            ..TlsConfig::default()
        };
        assert!(load_rustls_config(&both, "hs1").is_err());
    }

    #[test]
    fn server_name_host_part() {
        assert_eq!(host_of("hs1"), "hs1");
        assert_eq!(host_of("example.org:8448"), "example.org");
        assert_eq!(host_of("[::1]:8448"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
        assert_eq!(host_of("1.2.3.4:80"), "1.2.3.4");
    }

    #[test]
    fn pem_and_base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a*b").is_none());
        let text = "junk\n-----BEGIN CERTIFICATE-----\naGk=\n-----END CERTIFICATE-----\n\
                    -----BEGIN RSA PRIVATE KEY-----\naGVsbG8=\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            pem_decode(text, "CERTIFICATE").unwrap(),
            ("CERTIFICATE".into(), b"hi".to_vec())
        );
        let key = pem_decode(text, "PRIVATE KEY").unwrap();
        assert_eq!(key, ("RSA PRIVATE KEY".into(), b"hello".to_vec()));
        assert!(pem_decode("no pem here", "CERTIFICATE").is_err());
    }

    #[test]
    fn pkcs1_is_rewrapped_as_pkcs8() {
        let (label, pkcs1) = pem_decode(TEST_CA_KEY_PKCS1, "PRIVATE KEY").unwrap();
        assert_eq!(label, "RSA PRIVATE KEY");
        let pair = KeyPair::try_from(pkcs1_to_pkcs8(&pkcs1).as_slice()).unwrap();
        assert!(pair.is_compatible(&rcgen::PKCS_RSA_SHA256));
        let mut out = Vec::new();
        der_write(&mut out, 0x04, &[1, 2, 3]);
        assert_eq!(out, [0x04, 3, 1, 2, 3]);
        let mut out = Vec::new();
        der_write(&mut out, 0x04, &[0; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
