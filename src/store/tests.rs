use super::*;

fn record(id: u64) -> CollectionRecord {
    CollectionRecord {
        name: "c".into(),
        id,
        model: "m".into(),
        dimension: 2,
        chunk_tokens: 16,
        chunk_overlap: 0,
        created_unix_ms: 0,
    }
}

fn doc(id: &str, cids: &[u64]) -> NewDocument {
    NewDocument {
        record: DocRecord {
            id: id.into(),
            title: String::new(),
            metadata: Default::default(),
            markdown: false,
            content_hash: "h".into(),
            chunk_ids: cids.to_vec(),
            source: None,
        },
        text: "hello world".into(),
        chunks: cids
            .iter()
            .map(|&c| {
                (
                    c,
                    ChunkRecord {
                        doc_id: id.into(),
                        ordinal: 0,
                        start: 0,
                        end: 5,
                        text: "hello".into(),
                    },
                    vec![1.0, 0.0],
                )
            })
            .collect(),
    }
}

#[test]
fn commit_replaces_chunks_and_logs_ops_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.create_collection(&record(1)).unwrap();
        assert!(matches!(
            store.create_collection(&record(1)),
            Err(Error::CollectionExists(_))
        ));
        let trees = store.trees(&record(1)).unwrap();
        let op = trees
            .commit(5, &[doc("a", &[10, 11])], &[], &Default::default(), None)
            .unwrap();
        assert_eq!(op.add, vec![10, 11]);
        let op = trees
            .commit(6, &[doc("a", &[12])], &[], &Default::default(), None)
            .unwrap();
        assert_eq!((op.add, op.remove), (vec![12], vec![10, 11]));
        store.flush_blocking().unwrap();
    }
    // sled releases its lock on the directory a moment after the last handle is dropped.
    let store = (0..100)
        .find_map(|_| {
            Store::open(dir.path()).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        })
        .expect("the store reopens");
    let trees = store.trees(&record(1)).unwrap();
    assert_eq!(trees.chunk_count(), 1);
    assert_eq!(trees.get_vector(12).unwrap(), Some(vec![1.0, 0.0]));
    let ops: Vec<u64> = trees.ops_after(5).map(|r| r.unwrap().0).collect();
    assert_eq!(ops, vec![6]);
    let op = trees
        .commit(
            7,
            &[],
            &["a".into(), "zz".into()],
            &Default::default(),
            None,
        )
        .unwrap();
    assert_eq!(op.remove, vec![12]);
    assert_eq!(trees.doc_count(), 0);
    trees.trim_oplog(6).unwrap();
    assert_eq!(trees.ops_after(0).count(), 1);
    assert_eq!(trees.last_seq().unwrap(), 7);
}

#[test]
fn raised_ids_stay_above_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let first = store.next_id().unwrap();
        store.raise_ids_above(first + 1_000_000).unwrap();
        assert!(store.next_id().unwrap() > first + 1_000_000);
        // Raising below the current ids changes nothing.
        let now = store.next_id().unwrap();
        store.raise_ids_above(5).unwrap();
        assert!(store.next_id().unwrap() > now);
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.next_id().unwrap() > 1_000_000);
}

/// The recorded counts follow every kind of commit, survive a reopen, stay out of the
/// metadata schema, and are recounted from the trees when missing.
#[test]
fn counts_are_kept_in_each_commit_and_recounted_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create_collection(&record(1)).unwrap();
    let trees = store.trees(&record(1)).unwrap();
    let meta = Default::default();
    // Written before counts existed: no record yet, so the first call counts the trees.
    trees
        .commit(1, &[doc("a", &[1, 2]), doc("b", &[3])], &[], &meta, None)
        .unwrap();
    assert_eq!(trees.counts().unwrap(), (2, 3));
    type Step<'a> = (&'a [NewDocument], &'a [String], (u64, u64));
    let steps: [Step; 4] = [
        // a replaced (one chunk fewer), c new.
        (&[doc("a", &[4]), doc("c", &[5, 6])], &[], (3, 4)),
        // The same id twice in one batch counts once.
        (&[doc("d", &[7]), doc("d", &[8, 9])], &[], (4, 6)),
        // Deleting an absent id changes nothing.
        (&[], &["b".into(), "nope".into()], (3, 5)),
        (&[doc("b", &[10])], &["c".into()], (3, 4)),
    ];
    for (seq, (upserts, deletes, want)) in steps.into_iter().enumerate() {
        trees
            .commit(seq as u64 + 2, upserts, deletes, &meta, None)
            .unwrap();
        assert_eq!(trees.counts().unwrap(), want, "step {seq}");
        let counted = (trees.doc_count() as u64, trees.chunk_count() as u64);
        assert_eq!(counted, want, "step {seq}: the trees themselves");
    }
    assert!(trees.load_schema().unwrap().is_empty());
    trees.forget_counts().unwrap();
    assert_eq!(trees.counts().unwrap(), (3, 4));
}
