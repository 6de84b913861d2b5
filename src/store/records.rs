//! Server records on the embedded backend (see `engine/records.rs`): the `records` tree, key
//! `owner \0 group \0 item`, value UTF-8. Owners and groups hold no NUL (owners are collection
//! or alias names; groups are Quarry's own), so an owner's records are one key prefix. Each
//! change is flushed before it returns.

use super::Store;
use crate::error::{Error, Result};

const TREE: &str = "records";

fn prefix(owner: &str, group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + group.len() + 2);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k
}

fn key(owner: &str, group: &str, item: &str) -> Vec<u8> {
    let mut k = prefix(owner, group);
    k.extend_from_slice(item.as_bytes());
    k
}

fn text(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::internal("corrupt server record"))
}

impl Store {
    /// Writes one record (replacing it), durably.
    pub fn record_put(&self, owner: &str, group: &str, item: &str, value: &str) -> Result<()> {
        self.named_tree(TREE)?
            .insert(key(owner, group, item), value.as_bytes())?;
        self.flush_blocking()
    }

    /// One record's value.
    pub fn record_get(&self, owner: &str, group: &str, item: &str) -> Result<Option<String>> {
        self.named_tree(TREE)?
            .get(key(owner, group, item))?
            .map(|v| text(&v))
            .transpose()
    }

    /// Every record of `owner`'s `group` as (item, value), in item order.
    pub fn record_list(&self, owner: &str, group: &str) -> Result<Vec<(String, String)>> {
        let p = prefix(owner, group);
        self.named_tree(TREE)?
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((text(&k[p.len()..])?, text(&v)?))
            })
            .collect()
    }

    /// Removes these records (absent ones are fine), durably.
    pub fn record_delete(&self, owner: &str, group: &str, items: &[String]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for i in items {
            batch.remove(key(owner, group, i));
        }
        self.named_tree(TREE)?.apply_batch(batch)?;
        self.flush_blocking()
    }

    /// Removes every record of `owner`, durably.
    pub fn record_forget(&self, owner: &str) -> Result<()> {
        let tree = self.named_tree(TREE)?;
        let mut p = owner.as_bytes().to_vec();
        p.push(0);
        let mut batch = sled::Batch::default();
        for k in tree.scan_prefix(&p).keys() {
            batch.remove(k?);
        }
        tree.apply_batch(batch)?;
        self.flush_blocking()
    }
}

/// One server record of an owner, as a snapshot carries it (`engine/records.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub group: String,
    pub item: String,
    pub value: String,
}

impl Store {
    /// Every record of `owner`, in (group, item) order.
    pub fn record_all(&self, owner: &str) -> Result<Vec<OwnedRecord>> {
        let mut p = owner.as_bytes().to_vec();
        p.push(0);
        self.named_tree(TREE)?
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                let rest = &k[p.len()..];
                let cut = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| Error::internal("corrupt server record key"))?;
                Ok(OwnedRecord {
                    group: text(&rest[..cut])?,
                    item: text(&rest[cut + 1..])?,
                    value: text(&v)?,
                })
            })
            .collect()
    }

    /// Writes these records of `owner` in one batch, durably.
    pub fn record_put_all(&self, owner: &str, records: &[OwnedRecord]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in records {
            batch.insert(key(owner, &r.group, &r.item), r.value.as_bytes());
        }
        self.named_tree(TREE)?.apply_batch(batch)?;
        self.flush_blocking()
    }
}
