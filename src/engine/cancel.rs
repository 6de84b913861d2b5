//! Stopping work whose caller has gone away.
//!
//! Blocking work (embedding a batch, running an evaluation) runs on other threads than the
//! request that asked for it, so dropping the request future does not stop it. A [`Cancel`]
//! flag is shared with the work, and [`Cancel::on_drop`] ties it to the request: the guard
//! lives in the request's future and raises the flag when that future is dropped (the client
//! cancelled, its deadline passed, or the connection closed). The work checks the flag between
//! units and stops with [`Error::Cancelled`]. Writes check it only *before* they commit: once
//! committing, a write runs to completion whatever the client does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A shared "the caller has gone" flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// Raises its [`Cancel`] flag when dropped. Keep it in the request's future.
#[derive(Debug)]
pub struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` once the flag is raised.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// A guard that raises this flag when it is dropped.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_cancels_when_dropped() {
        let c = Cancel::new();
        assert!(c.check().is_ok());
        {
            let _guard = c.on_drop();
            assert!(!c.is_cancelled());
        }
        assert!(matches!(c.check(), Err(Error::Cancelled)));
    }
}
