//! Durations in a StreamApp (`100ms`, `5s`, `1m30s`, `2h`) and the commit
//! timing every worker runs with, resolved once for the operator and for
//! standalone mode.

use std::time::Duration;

use crate::{Invalid, ProcessingGuarantee, StreamAppSpec};

/// `spec.transactionTimeout` when unset (Kafka Streams uses 10 s; a longer
/// default leaves room for a slow commit on a loaded broker).
pub const DEFAULT_TRANSACTION_TIMEOUT: &str = "60s";

/// Shortest `spec.commitInterval`: each commit is a transaction (or an
/// offset commit) per loop, and at 1 ms a few apps would keep the
/// transaction coordinator busy for every tenant of the cluster.
pub const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(10);

/// `spec.transactionTimeout` bounds: librdkafka refuses less than 1 s, and
/// the broker's default `transaction.max.timeout.ms` is 15 minutes; past
/// it `init_transactions` fails on every start.
pub const MIN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The producer properties librdkafka requires to be at most
/// `transaction.timeout.ms` in a transactional producer.
const DELIVERY_TIMEOUTS: [&str; 2] = ["message.timeout.ms", "delivery.timeout.ms"];

/// `spec.commitInterval` when unset: Kafka Streams' defaults per guarantee.
pub fn default_commit_interval(guarantee: ProcessingGuarantee) -> &'static str {
    match guarantee {
        ProcessingGuarantee::ExactlyOnce => "100ms",
        ProcessingGuarantee::AtLeastOnce => "5s",
    }
}

/// Parses `100ms`, `5s`, `1m30s`, `2h`. `None` for anything else, including
/// a total that does not fit a `Duration` (never a panic: the text comes
/// from a user).
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n.checked_mul(60)?), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n.checked_mul(3600)?), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// A duration field, or what is wrong with it.
pub fn duration_field(field: &str, text: &str) -> Result<Duration, Invalid> {
    parse_duration(text).ok_or_else(|| {
        Invalid::new(
            field,
            format!("'{text}' is not a duration such as 100ms, 5s or 1m"),
        )
    })
}

/// How often a worker commits and how long a transaction may stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub commit_interval: Duration,
    pub transaction_timeout: Duration,
}

/// The spec's timing with defaults applied, or every problem with it.
pub fn timing(spec: &StreamAppSpec) -> Result<Timing, Vec<Invalid>> {
    let commit = duration_field(
        "spec.commitInterval",
        spec.commit_interval
            .as_deref()
            .unwrap_or(default_commit_interval(spec.processing_guarantee)),
    );
    let timeout = duration_field(
        "spec.transactionTimeout",
        spec.transaction_timeout
            .as_deref()
            .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT),
    );
    let (commit_interval, transaction_timeout) = match (commit, timeout) {
        (Ok(c), Ok(t)) => (c, t),
        (c, t) => return Err(c.err().into_iter().chain(t.err()).collect()),
    };
    let mut problems = Vec::new();
    if commit_interval < MIN_COMMIT_INTERVAL {
        problems.push(Invalid::new(
            "spec.commitInterval",
            format!("must be at least {MIN_COMMIT_INTERVAL:?} (got {commit_interval:?})"),
        ));
    } else if commit_interval >= transaction_timeout {
        problems.push(Invalid::new(
            "spec.commitInterval",
            format!(
                "must be shorter than spec.transactionTimeout ({commit_interval:?} >= {transaction_timeout:?})"
            ),
        ));
    }
    let transactional = spec.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    if transactional
        && !(MIN_TRANSACTION_TIMEOUT..=MAX_TRANSACTION_TIMEOUT).contains(&transaction_timeout)
    {
        problems.push(Invalid::new(
            "spec.transactionTimeout",
            format!(
                "must be between 1s and 15m (librdkafka's least, the broker's default transaction.max.timeout.ms); got {transaction_timeout:?}"
            ),
        ));
    }
    if transactional {
        for key in DELIVERY_TIMEOUTS {
            let Some(text) = spec.kafka.properties.get(key) else {
                continue;
            };
            let too_long = text
                .trim()
                .parse::<u64>()
                .is_ok_and(|ms| u128::from(ms) > transaction_timeout.as_millis());
            if too_long {
                problems.push(Invalid::new(
                    &format!("spec.kafka.properties['{key}']"),
                    format!(
                        "{text} ms is longer than spec.transactionTimeout ({transaction_timeout:?}); librdkafka refuses a transactional producer with it"
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(Timing {
            commit_interval,
            transaction_timeout,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_overflow_is_refused_not_a_panic() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("18446744073709551615s1s"), None);
        assert_eq!(parse_duration("5124095576030432h"), None);
        assert_eq!(parse_duration("307445734561825861m"), None);
    }

    fn spec(commit: Option<&str>, timeout: Option<&str>, g: ProcessingGuarantee) -> StreamAppSpec {
        StreamAppSpec {
            commit_interval: commit.map(str::to_string),
            transaction_timeout: timeout.map(str::to_string),
            processing_guarantee: g,
            ..Default::default()
        }
    }

    #[test]
    fn timing_applies_defaults_per_guarantee_and_names_the_field() {
        let eos = timing(&spec(None, None, ProcessingGuarantee::ExactlyOnce)).unwrap();
        assert_eq!(eos.commit_interval, Duration::from_millis(100));
        assert_eq!(eos.transaction_timeout, Duration::from_secs(60));
        let alo = timing(&spec(None, None, ProcessingGuarantee::AtLeastOnce)).unwrap();
        assert_eq!(alo.commit_interval, Duration::from_secs(5));
        let both = timing(&spec(
            Some("x"),
            Some("y"),
            ProcessingGuarantee::ExactlyOnce,
        ))
        .unwrap_err();
        let fields: Vec<_> = both.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["spec.commitInterval", "spec.transactionTimeout"]);
        let long = timing(&spec(Some("2m"), None, ProcessingGuarantee::ExactlyOnce)).unwrap_err();
        assert!(
            long[0]
                .message
                .contains("shorter than spec.transactionTimeout"),
            "{long:?}"
        );
        let zero = timing(&spec(Some("0s"), None, ProcessingGuarantee::ExactlyOnce)).unwrap_err();
        assert_eq!(
            zero[0].to_string(),
            "spec.commitInterval: must be at least 10ms (got 0ns)"
        );
    }

    #[test]
    fn intervals_and_timeouts_a_broker_or_librdkafka_would_refuse_are_refused_here() {
        let eos = ProcessingGuarantee::ExactlyOnce;
        let problem = |s: StreamAppSpec| {
            timing(&s)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(problem(spec(Some("1ms"), None, eos))
            .contains("spec.commitInterval: must be at least 10ms"));
        assert!(timing(&spec(Some("10ms"), None, eos)).is_ok());
        assert!(problem(spec(Some("100ms"), Some("500ms"), eos))
            .contains("spec.transactionTimeout: must be between 1s and 15m"));
        assert!(problem(spec(None, Some("16m"), eos)).contains("spec.transactionTimeout"));
        assert!(timing(&spec(None, Some("15m"), eos)).is_ok());
        assert!(
            timing(&spec(None, Some("30m"), ProcessingGuarantee::AtLeastOnce)).is_ok(),
            "no transactions: no bound"
        );

        let with_property = |key: &str, ms: &str, g| {
            let mut s = spec(None, Some("60s"), g);
            s.kafka.properties.insert(key.into(), ms.into());
            s
        };
        assert!(problem(with_property("message.timeout.ms", "120000", eos))
            .contains("spec.kafka.properties['message.timeout.ms']: 120000 ms is longer than spec.transactionTimeout"));
        assert!(problem(with_property("delivery.timeout.ms", "60001", eos))
            .contains("spec.kafka.properties['delivery.timeout.ms']"));
        assert!(timing(&with_property("message.timeout.ms", "60000", eos)).is_ok());
        assert!(
            timing(&with_property(
                "message.timeout.ms",
                "120000",
                ProcessingGuarantee::AtLeastOnce
            ))
            .is_ok(),
            "no transactions: no bound"
        );
    }
}
