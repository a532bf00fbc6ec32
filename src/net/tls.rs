//! TLS with rustls (ring provider): the coordinator's server configuration
//! from PEM files, a party's client configuration trusting one certificate
//! or CA, and a self-signed certificate for trying things out.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read the {what}: {e}", path.display()))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, "certificate")?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    // The PEM text is wiped once parsed; rustls owns the key from here.
    let pem = zeroize::Zeroizing::new(read(path, "private key")?);
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: not a PEM private key file: {e}", path.display()))?
        .ok_or_else(|| format!("{}: holds no PEM private key", path.display()))
}

/// The names a request may address this coordinator by: those its
/// certificate (the first in the file, the leaf) is valid for.
pub fn coordinator_names(cert: &Path) -> Result<crate::net::auth::CoordinatorNames, String> {
    let leaf = load_certs(cert)?.swap_remove(0);
    Ok(crate::net::auth::CoordinatorNames::Certificate(leaf))
}

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client that trusts the certificates in `ca` (the coordinator's own
/// self-signed certificate, or the CA that issued it).
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable as a trust anchor: {e}", ca.display()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client configuration that trusts nobody: for plain-HTTP clients, which
/// still need one (this build carries no process-wide TLS provider).
pub fn client_config_trusting_none() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A self-signed certificate and its key, PEM, for `names` (DNS names or
/// IP addresses).
pub fn self_signed(names: &[String]) -> Result<(String, zeroize::Zeroizing<String>), String> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
    Ok((
        ck.cert.pem(),
        zeroize::Zeroizing::new(ck.key_pair.serialize_pem()),
    ))
}
