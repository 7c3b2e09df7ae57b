use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::ParsedExtension;

use super::cert::{self, host_of};
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

fn pem_root(pem: &str) -> reqwest::Certificate {
    reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()
}

fn der_root(der: &CertificateDer<'_>) -> reqwest::Certificate {
    reqwest::Certificate::from_der(der).unwrap()
}

/// Serves `config` on 127.0.0.1 and GETs `https://{name}:{port}/`, trusting only `roots`.
async fn fetch(
    config: RustlsConfig,
    roots: Vec<reqwest::Certificate>,
    name: &str,
) -> Result<String, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, config)
        .unwrap()
        .handle(handle.clone());
    tokio::spawn(server.serve(app.into_make_service()));
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
fn builds_outside_a_runtime() {
    assert!(load_rustls_config(&TlsConfig::default(), "hs1").is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_certificate_covers_the_server_name() {
    let made = cert::generate("hs1:8448", &[], None).unwrap();
    assert_eq!(made.chain.len(), 1);
    let leaf = made.chain[0].clone();
    let config = server_config(made).unwrap();
    assert_eq!(
        fetch(config.clone(), vec![der_root(&leaf)], "hs1")
            .await
            .unwrap(),
        "ok"
    );
    assert!(fetch(config, vec![der_root(&leaf)], "hs2").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_names_are_covered() {
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = cert::generate("hs1", &names, None).unwrap();
    let leaf = made.chain[0].clone();
    let config = server_config(made).unwrap();
    for name in ["hs1", "localhost", "127.0.0.1"] {
        let got = fetch(config.clone(), vec![der_root(&leaf)], name).await;
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
    let Ok(Source::Generated { ca: Some(ca), .. }) = tls.source() else {
        panic!("existing CA files are used");
    };
    let made = cert::generate("hs1", &[], Some(ca)).unwrap();
    let ca_der = CertificateDer::from_pem_slice(TEST_CA_CERT.as_bytes()).unwrap();
    assert_eq!(made.chain.len(), 2);
    assert_eq!(made.chain[1], ca_der, "the CA follows the leaf");
    // The leaf's issuer is the CA's subject byte for byte, and its authority key identifier
    // is the CA's subject key identifier (OpenSSL needs both).
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&made.chain[0]).unwrap();
    assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .expect("the test CA has a subjectKeyIdentifier");
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .expect("the leaf has an authorityKeyIdentifier");
    assert_eq!(aki.0, ski.as_slice());
    // Trusting only the CA is enough, for the server name only.
    let config = load_rustls_config(&tls, "hs1").unwrap();
    assert_eq!(
        fetch(config.clone(), vec![pem_root(TEST_CA_CERT)], "hs1")
            .await
            .unwrap(),
        "ok"
    );
    assert!(
        fetch(config, vec![pem_root(TEST_CA_CERT)], "hs2")
            .await
            .is_err()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_ca_files_fall_back_to_self_signed() {
    let dir = temp_dir("noca");
    let tls = TlsConfig {
        ca_cert: Some(dir.join("ca.crt")),
        ca_key: Some(dir.join("ca.key")),
        ..TlsConfig::default()
    };
    assert_eq!(
        tls.source(),
        Ok(Source::Generated {
            ca: None,
            extra_names: &[]
        })
    );
    assert!(load_rustls_config(&tls, "hs2").is_ok());
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
    let e = load_rustls_config(&tls, "hs1").unwrap_err();
    assert!(e.contains("ca.key"), "{e}");
    let tls = TlsConfig {
        ca_cert: Some(write(
            &dir,
            "ca2.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )),
        ca_key: Some(write(&dir, "ca2.key", TEST_CA_KEY_PKCS1)),
        ..TlsConfig::default()
    };
    let e = load_rustls_config(&tls, "hs1").unwrap_err();
    assert!(e.contains("ca2.crt"), "{e}");
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
    // Text around the PEM blocks is skipped, as in files written by other tools.
    let tls = TlsConfig {
        cert_file: Some(write(&dir, "cert.pem", &format!("leaf:\n{}", cert.pem()))),
        key_file: Some(write(&dir, "key.pem", &key.serialize_pem())),
        ..TlsConfig::default()
    };
    let config = load_rustls_config(&tls, "ignored.example").unwrap();
    assert_eq!(
        fetch(config, vec![pem_root(&cert.pem())], "example.org")
            .await
            .unwrap(),
        "ok"
    );
    // A PKCS#1 RSA key file works too.
    let rsa = TlsConfig {
        cert_file: Some(write(&dir, "ca.crt", TEST_CA_CERT)),
        key_file: Some(write(&dir, "ca.key", TEST_CA_KEY_PKCS1)),
        ..TlsConfig::default()
    };
    assert!(load_rustls_config(&rsa, "hs1").is_ok());
    // A key that does not belong to the certificate is refused.
    let other = KeyPair::generate().unwrap();
    let mismatched = TlsConfig {
        key_file: Some(write(&dir, "other.pem", &other.serialize_pem())),
        ..tls.clone()
    };
    assert!(load_rustls_config(&mismatched, "hs1").is_err());
    // Files without the expected blocks name the file.
    let empty = TlsConfig {
        cert_file: Some(write(&dir, "empty.pem", "nothing here\n")),
        ..tls.clone()
    };
    let e = load_rustls_config(&empty, "hs1").unwrap_err();
    assert!(e.contains("empty.pem"), "{e}");
    let no_key = TlsConfig {
        key_file: tls.cert_file.clone(),
        ..tls
    };
    let e = load_rustls_config(&no_key, "hs1").unwrap_err();
    assert!(e.contains("cert.pem"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn half_configurations_are_errors() {
    let only_cert = TlsConfig {
        cert_file: Some("/x.pem".into()),
        ..TlsConfig::default()
    };
    assert!(only_cert.source().is_err());
    let only_ca = TlsConfig {
        ca_cert: Some("/x.pem".into()),
        ..TlsConfig::default()
    };
    assert!(only_ca.source().is_err());
    let both = TlsConfig {
        cert_file: Some("/x.pem".into()),
        key_file: Some("/y.pem".into()),
        ca_cert: Some("/ca.pem".into()),
        ca_key: Some("/ca.key".into()),
        ..TlsConfig::default()
    };
    assert!(both.source().is_err());
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
