//! Admission settings: how many calls of each class ([`Class`](super::Class)) run and wait at once, and
//! the queue-delay budget that sheds a call whose predicted wait is too long, and the
//! [`Admission`] state that enforces them. Settings and state are the service layer's (a
//! decision about operations, whatever the transport): one [`Admission`] per process is
//! shared by the gRPC and the HTTP request layers, so the limits hold over both doors.
//!
//! Why no queue-delay budget by default: one sized from measured service time (a multiple of
//! a floor of recent service times) was tried for searches and rejected. It refused eight
//! well-behaved concurrent clients on two cores (`tests/query_embedding.rs`), because cached
//! queries make the floor a fraction of an uncached search's cost, and under load it shed the
//! load benchmark's closed loop too. Reads are bounded by queue length by default; a budget
//! in milliseconds (`max_queue_delay_ms`) is for operators who know their service times.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Class;
use crate::error::{Error, Result};
use crate::metrics;

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
        // every core busy. The queue (three per core: with the slots, four searches per core
        // at once without refusal) bounds what an accepted search waits under overload: on
        // two cores, 2 + 6 keeps accepted-search p99 at twice the sustainable rate within 3x
        // of the unloaded p99 (2.40x and 2.89x in two runs of benches/load.rs, where 2 + 16
        // gave 3.39x; README has the figures).
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AdmissionSettings {
            read: ClassLimit {
                in_flight: cores,
                queue: 3 * cores,
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

struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limit: ClassLimit,
    /// Moving average of how long a call holds its slot, in microseconds (0: none yet).
    service_us: Arc<AtomicU64>,
}

/// A class's slot, held until the response body ends; its hold time feeds the class's
/// service-time average.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    service_us: Arc<AtomicU64>,
    since: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let sample = self.since.elapsed().as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .service_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
    }
}

/// A place in a class's queue, held while a call waits for a slot.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The admission state shared by every connection.
pub struct Admission {
    gates: HashMap<Class, Gate>,
    queue_wait: Duration,
}

impl Admission {
    pub fn new(s: &AdmissionSettings) -> Admission {
        let gate = |limit: ClassLimit| Gate {
            slots: Arc::new(Semaphore::new(limit.in_flight.max(1))),
            waiting: AtomicUsize::new(0),
            limit,
            service_us: Arc::new(AtomicU64::new(0)),
        };
        Admission {
            gates: HashMap::from([
                (Class::Read, gate(s.read)),
                (Class::Write, gate(s.write)),
                (Class::Eval, gate(s.eval)),
                (Class::Answer, gate(s.answer)),
            ]),
            queue_wait: Duration::from_millis(s.queue_wait_ms),
        }
    }

    /// A slot for `class`, waiting in its queue if there is room; RESOURCE_EXHAUSTED if not.
    pub async fn admit(&self, class: Class, deadline: Option<Instant>) -> Result<Option<Slot>> {
        let Some(gate) = self.gates.get(&class) else {
            return Ok(None);
        };
        let slot = |p: OwnedSemaphorePermit| Slot {
            _permit: p,
            service_us: gate.service_us.clone(),
            since: Instant::now(),
        };
        if let Ok(p) = gate.slots.clone().try_acquire_owned() {
            return Ok(Some(slot(p)));
        }
        let budget_us = gate.limit.max_queue_delay_ms.saturating_mul(1000);
        let service_us = gate.service_us.load(Ordering::Acquire);
        if budget_us > 0 && service_us > 0 {
            let ahead = gate.waiting.load(Ordering::Acquire) as u64 + 1;
            let predicted_us = ahead * service_us / gate.limit.in_flight.max(1) as u64;
            if predicted_us > budget_us {
                metrics::global().grpc_rejected.inc(&[class.name()]);
                return Err(Error::Exhausted(format!(
                    "server busy: a {} call would wait about {} ms for a slot, over admission.{}.max_queue_delay_ms = {}; retry with backoff",
                    class.name(),
                    predicted_us / 1000,
                    class.name(),
                    gate.limit.max_queue_delay_ms
                )));
            }
        }
        let busy = || {
            metrics::global().grpc_rejected.inc(&[class.name()]);
            Error::Exhausted(format!(
                "server busy: {} {} calls in flight and {} queued (admission.{}); retry with backoff",
                gate.limit.in_flight,
                class.name(),
                gate.limit.queue,
                class.name()
            ))
        };
        let queued = gate
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < gate.limit.queue).then_some(n + 1)
            });
        if queued.is_err() {
            return Err(busy());
        }
        // The place is given back however the wait ends, also when the caller leaves and this
        // future is dropped mid-wait (a leaked place would shrink the queue for good).
        let _place = QueuePlace(&gate.waiting);
        let queued_at = Instant::now();
        let mut until = queued_at + self.queue_wait;
        if let Some(d) = deadline {
            until = until.min(d);
        }
        let got = tokio::time::timeout_at(until.into(), gate.slots.clone().acquire_owned()).await;
        match got {
            Ok(Ok(p)) => Ok(Some(slot(p))),
            _ => {
                metrics::global().grpc_rejected.inc(&[class.name()]);
                Err(Error::Exhausted(format!(
                    "server busy: no {} slot came free within {} ms (admission.queue_wait_ms, or the call's deadline); retry with backoff",
                    class.name(),
                    until.saturating_duration_since(queued_at).as_millis()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_and_one() -> Admission {
        let limit = ClassLimit {
            in_flight: 1,
            queue: 1,
            max_queue_delay_ms: 0,
        };
        Admission::new(&AdmissionSettings {
            write: limit,
            queue_wait_ms: 60_000,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_caller_that_leaves_the_queue_gives_its_place_back() {
        let admission = Arc::new(one_and_one());
        let held = admission.admit(Class::Write, None).await.unwrap();
        // Many callers queue and leave (their futures dropped mid-wait, as when a client
        // disconnects): each frees its place.
        for _ in 0..5 {
            let a = admission.clone();
            let waiter = tokio::spawn(async move { a.admit(Class::Write, None).await.map(|_| ()) });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished(), "a queued call waits for the slot");
            waiter.abort();
            assert!(waiter.await.unwrap_err().is_cancelled());
        }
        // The queue's one place is free: a new call waits and gets the slot when it is freed.
        let a = admission.clone();
        let waiter =
            tokio::spawn(async move { a.admit(Class::Write, None).await.map(|s| s.is_some()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Meanwhile the queue is full: one more is refused at once.
        let e = admission.admit(Class::Write, None).await.err().unwrap();
        assert!(matches!(e, Error::Exhausted(_)), "{e}");
        drop(held);
        assert!(waiter.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_wait_that_times_out_gives_its_place_back() {
        let admission = one_and_one();
        let _held = admission.admit(Class::Write, None).await.unwrap();
        for _ in 0..3 {
            let deadline = Instant::now() + Duration::from_millis(10);
            let e = admission
                .admit(Class::Write, Some(deadline))
                .await
                .err()
                .unwrap();
            assert!(
                e.to_string().contains("no write slot came free within"),
                "{e}"
            );
        }
        assert_eq!(
            admission.gates[&Class::Write]
                .waiting
                .load(Ordering::Acquire),
            0
        );
    }
}
