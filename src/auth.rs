//! API keys and what each may do: the policy, independent of the transport.
//!
//! Three kinds of key, all optional: an admin key (everything), a read-only key (searches,
//! answers, evaluations and every Get / List call, on every collection) and scoped keys, each
//! with a role (`read`, `write`: read plus document writes, `admin`: write plus creating and
//! deleting collections) limited to named collections. With no key configured, auth is off.
//!
//! Keys are never stored or compared in the clear: each configured key (or its SHA-256, given
//! as `sha256:<hex>` so the config file need not hold the secret) is kept as a SHA-256 digest,
//! and a presented key is hashed and compared with every configured digest in constant time,
//! so neither timing nor the order of the keys says which part matched. Keys never appear in
//! logs or messages; a key's `name` (when given) does.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{quote, Error, Result};

/// What a call needs, and what a key's role grants (each includes the ones before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Search, Answer, Eval, Get and List calls.
    Read,
    /// Read, plus upserting and deleting documents.
    Write,
    /// Write, plus creating and deleting collections.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A key limited to a role and, optionally, to some collections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    /// The key, or `sha256:<64 hex digits>` of it.
    pub key: String,
    pub role: Role,
    /// Collections the key may use; empty: all.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Shown in logs and errors instead of the key.
    #[serde(default)]
    pub name: String,
}

/// `[auth]` in the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Admin key (or `sha256:<hex>`); env `QUARRY_API_KEY`, flag `--api-key`.
    pub api_key: Option<String>,
    /// Read-only key (or `sha256:<hex>`); env `QUARRY_READ_ONLY_API_KEY`,
    /// flag `--read-only-api-key`.
    pub read_only_api_key: Option<String>,
    /// Scoped keys (`[[auth.keys]]`).
    pub keys: Vec<ScopedKey>,
}

/// Who a request is, once its key matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name (never the key).
    pub name: String,
    pub role: Role,
    /// `None`: every collection.
    pub collections: Option<BTreeSet<String>>,
}

impl Principal {
    /// Everything, for a server without keys.
    pub fn anonymous_admin() -> Principal {
        Principal {
            name: "anonymous".into(),
            role: Role::Admin,
            collections: None,
        }
    }

    /// Whether this key may use `collection` at all.
    pub fn may_use(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.contains(collection))
    }

    /// `Ok` when the key has `needed` (on `collection`, when the call names one); otherwise
    /// the reason, naming the missing right.
    pub fn allows(
        &self,
        needed: Role,
        collection: Option<&str>,
    ) -> std::result::Result<(), String> {
        if self.role < needed {
            return Err(format!(
                "key {} has the {} role; this call needs the {} right",
                quote(&self.name),
                self.role.as_str(),
                needed.as_str()
            ));
        }
        if let Some(c) = collection {
            if !self.may_use(c) {
                return Err(format!(
                    "key {} may not use collection {}",
                    quote(&self.name),
                    quote(c)
                ));
            }
        }
        Ok(())
    }
}

/// The configured keys, as digests.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], Principal)>,
}

fn digest_of(spec: &str, what: &str) -> Result<[u8; 32]> {
    if let Some(hex) = spec.strip_prefix("sha256:") {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        return bytes.try_into().map_err(|_| {
            Error::invalid(format!("{what}: sha256: must be followed by 64 hex digits"))
        });
    }
    if spec.len() < 16 {
        return Err(Error::invalid(format!(
            "{what} is shorter than 16 characters: use a long random key"
        )));
    }
    Ok(Sha256::digest(spec.as_bytes()).into())
}

impl Keys {
    pub fn from_settings(s: &AuthSettings) -> Result<Keys> {
        let mut entries = Vec::new();
        if let Some(k) = &s.api_key {
            entries.push((
                digest_of(k, "auth.api_key")?,
                Principal {
                    name: "admin".into(),
                    role: Role::Admin,
                    collections: None,
                },
            ));
        }
        if let Some(k) = &s.read_only_api_key {
            entries.push((
                digest_of(k, "auth.read_only_api_key")?,
                Principal {
                    name: "read-only".into(),
                    role: Role::Read,
                    collections: None,
                },
            ));
        }
        for (i, k) in s.keys.iter().enumerate() {
            let name = if k.name.is_empty() {
                format!("keys[{i}]")
            } else {
                k.name.clone()
            };
            entries.push((
                digest_of(&k.key, &format!("auth.keys[{i}].key"))?,
                Principal {
                    name,
                    role: k.role,
                    collections: (!k.collections.is_empty())
                        .then(|| k.collections.iter().cloned().collect()),
                },
            ));
        }
        for (i, (a, _)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(b, _)| a == b) {
                return Err(Error::invalid("the same API key is configured twice"));
            }
        }
        Ok(Keys { entries })
    }

    /// No key configured: auth is off.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose key `presented` is. Every configured digest is compared, in
    /// constant time, whatever matches.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (d, p) in &self.entries {
            if constant_time_eq(d, &digest) {
                found = Some(p);
            }
        }
        found.cloned()
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-key-0123456789";
    const READER: &str = "reader-key-0123456789";
    const SCOPED: &str = "scoped-key-0123456789";

    fn keys() -> Keys {
        let hashed: String = Sha256::digest(SCOPED.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Keys::from_settings(&AuthSettings {
            api_key: Some(ADMIN.into()),
            read_only_api_key: Some(READER.into()),
            keys: vec![ScopedKey {
                key: format!("sha256:{hashed}"),
                role: Role::Write,
                collections: vec!["docs".into()],
                name: "ingester".into(),
            }],
        })
        .unwrap()
    }

    #[test]
    fn roles_and_scopes() {
        let k = keys();
        assert!(k.authenticate("nope").is_none());
        assert!(k
            .authenticate(ADMIN)
            .unwrap()
            .allows(Role::Admin, Some("x"))
            .is_ok());
        let reader = k.authenticate(READER).unwrap();
        assert!(reader.allows(Role::Read, Some("x")).is_ok());
        let e = reader.allows(Role::Write, Some("x")).unwrap_err();
        assert!(e.contains("needs the write right"), "{e}");
        let scoped = k.authenticate(SCOPED).unwrap();
        assert_eq!(scoped.name, "ingester");
        assert!(scoped.allows(Role::Write, Some("docs")).is_ok());
        assert!(scoped
            .allows(Role::Write, Some("other"))
            .unwrap_err()
            .contains("may not use"));
        assert!(scoped.allows(Role::Admin, Some("docs")).is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let short = AuthSettings {
            api_key: Some("short".into()),
            ..Default::default()
        };
        assert!(Keys::from_settings(&short).is_err());
        let bad_hash = AuthSettings {
            api_key: Some("sha256:abc".into()),
            ..Default::default()
        };
        assert!(Keys::from_settings(&bad_hash).is_err());
        let twice = AuthSettings {
            api_key: Some(ADMIN.into()),
            read_only_api_key: Some(ADMIN.into()),
            ..Default::default()
        };
        assert!(Keys::from_settings(&twice).is_err());
        assert!(Keys::from_settings(&AuthSettings::default())
            .unwrap()
            .is_empty());
    }
}
