//! Server records on Qdrant (see `engine/records.rs`): one Qdrant collection
//! `<collection_prefix>.records`, a name no Quarry collection can have (Quarry names have no
//! `.`), so every front end on the cluster shares the records as it shares the collections.
//! One point per record, without vectors: the point id is a UUID from (owner, group, item),
//! the payload holds the owner (`o`) and group (`g`), both indexed, the item (`i`) and the
//! value (`val`). Writes wait until applied, with strong ordering.

use std::sync::atomic::Ordering;

use qdrant_client::qdrant::{
    self, Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, GetPointsBuilder, PointStruct, PointsIdsList,
    ScrollPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, WriteOrdering,
    WriteOrderingType,
};

use super::collection::{doc_point, get_str, SCROLL_PAGE};
use super::{error, Qdrant};
use crate::error::{Error, Result};

fn point(owner: &str, group: &str, item: &str) -> qdrant::PointId {
    doc_point(&format!("{owner}\u{0}{group}\u{0}{item}"))
}

fn of(owner: &str, group: &str) -> qdrant::Filter {
    qdrant::Filter::must([
        Condition::matches("o", owner.to_string()),
        Condition::matches("g", group.to_string()),
    ])
}

fn strong() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Strong as i32,
    }
}

impl Qdrant {
    fn records_name(&self) -> String {
        format!("{}.records", self.settings.collection_prefix)
    }

    /// Creates the records collection once per process (another front end creating it at the
    /// same time is fine).
    fn ensure_records(&self) -> Result<()> {
        if self.records_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let name = self.records_name();
        let exists = {
            let name = name.clone();
            self.call(move |c| {
                let name = name.clone();
                async move { c.collection_exists(name).await }
            })?
            .map_err(error)?
        };
        if !exists {
            let s = &self.settings;
            // Qdrant wants a vector config; record points never carry a vector.
            let mut vectors = qdrant::VectorsConfigBuilder::default();
            vectors.add_named_vector_params("none", VectorParamsBuilder::new(1, Distance::Dot));
            let create = CreateCollectionBuilder::new(name.clone())
                .vectors_config(vectors)
                .replication_factor(s.replication_factor)
                .write_consistency_factor(s.write_consistency_factor)
                .build();
            if let Err(e) = self.call(move |c| {
                let r = create.clone();
                async move { c.create_collection(r).await }
            })? {
                let e = error(e);
                if !e.to_string().contains("already exists") {
                    return Err(e);
                }
            }
            for field in ["o", "g"] {
                let index =
                    CreateFieldIndexCollectionBuilder::new(&name, field, FieldType::Keyword)
                        .wait(true);
                self.call(move |c| {
                    let r = index.clone();
                    async move { c.create_field_index(r).await }
                })?
                .map_err(error)?;
            }
        }
        self.records_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes one record (replacing it), durably.
    pub fn record_put(&self, owner: &str, group: &str, item: &str, value: &str) -> Result<()> {
        self.ensure_records()?;
        let payload: std::collections::HashMap<String, qdrant::Value> = [
            ("o".to_string(), owner.to_string().into()),
            ("g".to_string(), group.to_string().into()),
            ("i".to_string(), item.to_string().into()),
            ("val".to_string(), value.to_string().into()),
        ]
        .into_iter()
        .collect();
        let p = PointStruct {
            id: Some(point(owner, group, item)),
            payload,
            vectors: Some(std::collections::HashMap::<String, qdrant::Vector>::new().into()),
        };
        let req = UpsertPointsBuilder::new(self.records_name(), vec![p])
            .wait(true)
            .ordering(strong())
            .build();
        self.call(move |c| {
            let r = req.clone();
            async move { c.upsert_points(r).await }
        })?
        .map_err(error)?;
        Ok(())
    }

    /// One record's value.
    pub fn record_get(&self, owner: &str, group: &str, item: &str) -> Result<Option<String>> {
        self.ensure_records()?;
        let req = GetPointsBuilder::new(self.records_name(), vec![point(owner, group, item)])
            .with_payload(true)
            .build();
        let got = self
            .call(move |c| {
                let r = req.clone();
                async move { c.get_points(r).await }
            })?
            .map_err(error)?;
        Ok(got.result.first().and_then(|p| get_str(&p.payload, "val")))
    }

    /// Every record of `owner`'s `group` as (item, value), in item order.
    pub fn record_list(&self, owner: &str, group: &str) -> Result<Vec<(String, String)>> {
        self.ensure_records()?;
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let mut req = ScrollPointsBuilder::new(self.records_name())
                .limit(SCROLL_PAGE)
                .with_payload(true)
                .filter(of(owner, group));
            if let Some(o) = offset.take() {
                req = req.offset(o);
            }
            let got = self
                .call(move |c| {
                    let r = req.clone();
                    async move { c.scroll(r).await }
                })?
                .map_err(error)?;
            for p in &got.result {
                let (Some(i), Some(v)) = (get_str(&p.payload, "i"), get_str(&p.payload, "val"))
                else {
                    return Err(Error::internal("corrupt record point in Qdrant"));
                };
                out.push((i, v));
            }
            match got.next_page_offset {
                Some(o) => offset = Some(o),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes these records (absent ones are fine).
    pub fn record_delete(&self, owner: &str, group: &str, items: &[String]) -> Result<()> {
        for batch in items.chunks(256) {
            let ids = batch.iter().map(|i| point(owner, group, i)).collect();
            self.delete_records(PointsIdsList { ids })?;
        }
        Ok(())
    }

    /// Removes every record of `owner`.
    pub fn record_forget(&self, owner: &str) -> Result<()> {
        let owned = qdrant::Filter::must([Condition::matches("o", owner.to_string())]);
        self.delete_records(owned)
    }

    /// Deletes the record points `which` selects, waiting until applied.
    fn delete_records(
        &self,
        which: impl Into<qdrant::points_selector::PointsSelectorOneOf>,
    ) -> Result<()> {
        self.ensure_records()?;
        let req = DeletePointsBuilder::new(self.records_name())
            .points(which)
            .wait(true)
            .ordering(strong())
            .build();
        self.call(move |c| {
            let r = req.clone();
            async move { c.delete_points(r).await }
        })?
        .map_err(error)?;
        Ok(())
    }
}
