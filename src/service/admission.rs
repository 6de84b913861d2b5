//! Admission settings: how many calls of each class ([`Class`](super::Class)) run and wait at once, and
//! the queue-delay budget that sheds a call whose predicted wait is too long. The settings
//! are the service layer's (a decision about operations, whatever the transport); the gRPC
//! request layer (`grpc::observe`) enforces them.
//!
//! Why no queue-delay budget by default: one sized from measured service time (a multiple of
//! a floor of recent service times) was tried for searches and rejected. It refused eight
//! well-behaved concurrent clients on two cores (`tests/query_embedding.rs`), because cached
//! queries make the floor a fraction of an uncached search's cost, and under load it shed the
//! load benchmark's closed loop too. Reads are bounded by queue length by default; a budget
//! in milliseconds (`max_queue_delay_ms`) is for operators who know their service times.

use serde::{Deserialize, Serialize};

/// Limits for one class of calls.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassLimit {
    /// Calls served at once.
    pub in_flight: usize,
    /// Calls waiting for a slot; past this, RESOURCE_EXHAUSTED at once.
    pub queue: usize,
    /// Refuse a call at once when the wait it would have in the queue, predicted from the
    /// calls ahead of it and the class's recent service time, is over this many
    /// milliseconds. Unlike a queue length, this bounds what an accepted call waits whatever
    /// the calls cost on this machine. 0: off (only `queue` limits).
    #[serde(default)]
    pub max_queue_delay_ms: u64,
}

/// `[admission]`: how many calls of each class run and wait at once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Search, Get and List calls.
    pub read: ClassLimit,
    /// Upserts (a stream holds its slot while it runs), deletes, collection changes.
    pub write: ClassLimit,
    pub eval: ClassLimit,
    pub answer: ClassLimit,
    /// Longest wait in a queue before RESOURCE_EXHAUSTED (a shorter client deadline wins).
    pub queue_wait_ms: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        // Searches are CPU-bound and short (query embedding, BM25, HNSW): one per core keeps
        // every core busy. The queue (eight per core) lets a few dozen clients search at once
        // without refusals, and bounds what an accepted search waits under overload
        // (benches/load.rs: a shorter queue tightens that further; see README).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AdmissionSettings {
            read: ClassLimit {
                in_flight: cores,
                queue: 8 * cores,
                max_queue_delay_ms: 0,
            },
            write: ClassLimit {
                in_flight: 2,
                queue: 8,
                max_queue_delay_ms: 0,
            },
            eval: ClassLimit {
                in_flight: 1,
                queue: 2,
                max_queue_delay_ms: 0,
            },
            answer: ClassLimit {
                in_flight: 8,
                queue: 16,
                max_queue_delay_ms: 0,
            },
            queue_wait_ms: 5_000,
        }
    }
}
