//! TLS plumbing shared by the gRPC server, the CLI and the router client: one rustls crypto
//! provider (ring) for the whole process, and PEM files read with errors that name them.
//!
//! tonic and reqwest both use rustls; reqwest (built without a provider of its own, to avoid a
//! second crypto library) needs the process-wide default installed before a client is built,
//! so every place that builds one calls [`install_crypto_provider`] first.

use std::path::Path;

use crate::error::{Error, Result};

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
