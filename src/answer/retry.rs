//! How the router client waits between attempts: the policy (timeouts, retries, backoff) and
//! the rules that turn it and a server's `Retry-After` into a wait.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Timeouts and retry policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Per HTTP request.
    pub request_timeout_ms: u64,
    /// For the whole completion, retries and failover included.
    pub deadline_ms: u64,
    /// Retries per endpoint after the first attempt.
    pub max_retries: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            request_timeout_ms: 60_000,
            deadline_ms: 120_000,
            max_retries: 2,
            backoff_base_ms: 200,
            backoff_cap_ms: 5_000,
        }
    }
}

/// The wait before retry number `retry`: what the server asked for (`Retry-After`), as given
/// (the caller stops at its deadline); otherwise exponential backoff, capped, with full jitter
/// (uniform between 0 and the backoff), which spreads many clients apart.
pub fn backoff(policy: &RetryPolicy, retry: u32, hint: Option<Duration>) -> Duration {
    if let Some(h) = hint {
        return h;
    }
    let exp = policy
        .backoff_base_ms
        .saturating_mul(1u64 << retry.min(16))
        .min(policy.backoff_cap_ms);
    Duration::from_millis(rand::rng().random_range(0..=exp))
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (the wait until then; none if past).
pub fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let wait = when.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    Some(Duration::from_millis(wait.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&later)
            .unwrap();
        let wait = retry_after(&date).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{date}: {wait:?}"
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            backoff_base_ms: 100,
            backoff_cap_ms: 1_000,
            ..RetryPolicy::default()
        };
        for retry in 0..20 {
            let d = backoff(&policy, retry, None);
            assert!(d <= Duration::from_millis(1_000), "{d:?}");
        }
        // Full jitter: anywhere from 0 to the backoff, so waits below half of it occur.
        let waits: Vec<Duration> = (0..200).map(|_| backoff(&policy, 3, None)).collect();
        assert!(
            waits.iter().any(|d| *d < Duration::from_millis(400)),
            "{waits:?}"
        );
        assert!(waits.iter().all(|d| *d <= Duration::from_millis(800)));
        // What the server asks for is honoured beyond the cap (the deadline bounds it).
        assert_eq!(
            backoff(&policy, 0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff(&policy, 0, Some(Duration::from_millis(200))),
            Duration::from_millis(200)
        );
    }
}
