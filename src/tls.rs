//! TLS plumbing shared by the gRPC server, the CLI and the router client: one rustls crypto
//! provider (ring) for the whole process, and PEM files read with errors that name them.
//!
//! tonic and reqwest both use rustls; reqwest (built without a provider of its own, to avoid a
//! second crypto library) needs the process-wide default installed before a client is built,
//! so every place that builds one calls [`install_crypto_provider`] first.

use std::path::Path;

use crate::error::{Error, Result};

/// How long a client has to finish its TLS handshake (either door); a connection that has
/// not by then is closed (held-open half handshakes would otherwise pin a socket and a task
/// each, forever).
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Installs ring as the process-wide rustls provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The contents of a PEM file; an unreadable or non-PEM file is an error naming it.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(Error::invalid(format!(
            "{what} {} is not a PEM file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Server TLS (`[tls]`, `--tls-cert`, `--tls-key`, `--tls-client-ca`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain the server presents; with `key`, the server speaks TLS only.
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsSettings {
    /// Whether TLS is on; a certificate without a key (or the reverse), or a client CA without
    /// both, is an error.
    pub fn enabled(&self) -> Result<bool> {
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(true),
            (None, None) if self.client_ca.is_none() => Ok(false),
            (None, None) => Err(Error::invalid(
                "tls.client_ca needs tls.cert and tls.key (mutual TLS is on top of TLS)",
            )),
            _ => Err(Error::invalid("tls.cert and tls.key go together")),
        }
    }
}

/// The rustls server configuration `settings` describe, for listeners that run their own
/// TLS (the HTTP/JSON API; tonic builds its own from the same files), or none when TLS is
/// off. ALPN offers HTTP/2 and HTTP/1.1; with `client_ca`, clients must present a
/// certificate it signed.
pub fn server_config(
    settings: &TlsSettings,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if !settings.enabled()? {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        return Ok(None);
    };
    install_crypto_provider();
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::invalid(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(cert, "TLS certificate")?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("TLS certificate", cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key, "TLS key")?)
        .map_err(|e| bad("TLS key", key, &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read_pem(ca, "TLS client CA")?) {
                let c = c.map_err(|e| bad("TLS client CA", ca, &e))?;
                roots.add(c).map_err(|e| bad("TLS client CA", ca, &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
                    .build()
                    .map_err(|e| bad("TLS client CA", ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("TLS certificate", cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(std::sync::Arc::new(config)))
}
