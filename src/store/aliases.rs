//! Aliases on the embedded backend: the `aliases` tree, alias name -> collection name (UTF-8).
//!
//! One key per alias, so creating, switching and removing one is a single compare-and-swap of
//! one key: atomic, and durable once flushed (before the caller is answered).

use super::Store;
use crate::error::{quote, Error, Result};

const TREE: &str = "aliases";

/// What a change expects to find: `None` checks nothing, `Some("")` an alias that does not
/// exist yet, `Some(name)` an alias that points to `name` now.
pub type Expect<'a> = Option<&'a str>;

/// ABORTED unless `current` is what `expect` says.
pub fn check_expected(alias: &str, current: Option<&str>, expect: Expect<'_>) -> Result<()> {
    let Some(want) = expect else {
        return Ok(());
    };
    let want = Some(want).filter(|w| !w.is_empty());
    if want == current {
        return Ok(());
    }
    let now = match current {
        Some(c) => format!("points to {}", quote(c)),
        None => "does not exist".to_string(),
    };
    let wanted = match want {
        Some(w) => format!("to point to {}", quote(w)),
        None => "not to exist".to_string(),
    };
    Err(Error::Aborted(format!(
        "alias {} {now}, and the call expected it {wanted}: another change came first; nothing changed",
        quote(alias)
    )))
}

fn text(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::internal("corrupt alias record"))
}

impl Store {
    fn alias_tree(&self) -> Result<sled::Tree> {
        self.named_tree(TREE)
    }

    /// The collection `alias` points to, if it is an alias.
    pub fn alias(&self, alias: &str) -> Result<Option<String>> {
        self.alias_tree()?
            .get(alias.as_bytes())?
            .map(|v| text(&v))
            .transpose()
    }

    /// Every alias and its collection, sorted by alias.
    pub fn aliases(&self) -> Result<Vec<(String, String)>> {
        self.alias_tree()?
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((text(&k)?, text(&v)?))
            })
            .collect()
    }

    /// Points `alias` at `collection` (created or switched in one step), if `expect` holds;
    /// durable on return. Returns the collection it pointed to before.
    pub fn set_alias(
        &self,
        alias: &str,
        collection: &str,
        expect: Expect<'_>,
    ) -> Result<Option<String>> {
        let tree = self.alias_tree()?;
        let current = tree.get(alias.as_bytes())?;
        let previous = current.as_deref().map(text).transpose()?;
        check_expected(alias, previous.as_deref(), expect)?;
        if tree
            .compare_and_swap(alias.as_bytes(), current, Some(collection.as_bytes()))?
            .is_err()
        {
            return Err(Error::Aborted(format!(
                "alias {} changed while this call switched it; nothing changed",
                quote(alias)
            )));
        }
        self.flush_blocking()?;
        Ok(previous)
    }

    /// Removes `alias`, if `expect` holds; durable on return. Returns its collection.
    pub fn remove_alias(&self, alias: &str, expect: Expect<'_>) -> Result<String> {
        let tree = self.alias_tree()?;
        let Some(current) = tree.get(alias.as_bytes())? else {
            return Err(Error::NotFound(format!("alias {} not found", quote(alias))));
        };
        let collection = text(&current)?;
        check_expected(alias, Some(&collection), expect)?;
        if tree
            .compare_and_swap(alias.as_bytes(), Some(current), None as Option<&[u8]>)?
            .is_err()
        {
            return Err(Error::Aborted(format!(
                "alias {} changed while this call removed it; nothing changed",
                quote(alias)
            )));
        }
        self.flush_blocking()?;
        Ok(collection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_switch_expect_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.set_alias("docs", "g1", Some("")).unwrap(), None);
        // Created only if absent: a second create is refused, nothing changed.
        let e = store.set_alias("docs", "g2", Some("")).unwrap_err();
        assert!(matches!(e, Error::Aborted(_)), "{e}");
        assert!(e.to_string().contains("points to \"g1\""), "{e}");
        assert_eq!(store.alias("docs").unwrap().as_deref(), Some("g1"));
        // A switch that expects the wrong collection is refused.
        let e = store.set_alias("docs", "g2", Some("g0")).unwrap_err();
        assert!(matches!(e, Error::Aborted(_)), "{e}");
        assert_eq!(
            store
                .set_alias("docs", "g2", Some("g1"))
                .unwrap()
                .as_deref(),
            Some("g1")
        );
        assert_eq!(
            store.set_alias("docs", "g3", None).unwrap().as_deref(),
            Some("g2")
        );
        store.set_alias("other", "g1", None).unwrap();
        assert_eq!(
            store.aliases().unwrap(),
            vec![
                ("docs".to_string(), "g3".to_string()),
                ("other".to_string(), "g1".to_string())
            ]
        );
        assert!(matches!(
            store.remove_alias("docs", Some("g2")).unwrap_err(),
            Error::Aborted(_)
        ));
        assert_eq!(store.remove_alias("docs", None).unwrap(), "g3");
        assert!(matches!(
            store.remove_alias("docs", None).unwrap_err(),
            Error::NotFound(_)
        ));
        drop(store);
        // Durable: a reopened store has what was acknowledged.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alias("other").unwrap().as_deref(), Some("g1"));
        assert_eq!(store.alias("docs").unwrap(), None);
    }
}
