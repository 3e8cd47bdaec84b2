//! The operator's one error type, for the reconcile and for the placement
//! and autoscaling loops alike; `metric_label` names the kind in metrics.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("serialisation: {0}")]
    Serialization(#[from] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// What the app's spec or Secrets do not provide (the reconcile reports
    /// it as `Degraded`; the loops skip the app meanwhile).
    #[error("{0}")]
    App(String),
    /// A placement document that does not parse, or a write that lost it.
    #[error("placement: {0}")]
    Placement(String),
    /// The API server refused an object of the app as it is (the reconcile
    /// reports it as `Degraded`, reason `ApplyRejected`).
    #[error("{object}: {message}")]
    Rejected { object: String, message: String },
    /// A poll of one app panicked (a bug); the loop goes on with the others.
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Every [`Error::metric_label`], so counters can start at 0 for each.
    pub const METRIC_LABELS: [&'static str; 9] = [
        "kube",
        "kafka",
        "serialization",
        "finalizer",
        "app",
        "placement",
        "rejected",
        "panic",
        "other",
    ];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kafka(_) => "kafka",
            Error::Serialization(_) => "serialization",
            Error::Finalizer(_) => "finalizer",
            Error::App(_) => "app",
            Error::Placement(_) => "placement",
            Error::Rejected { .. } => "rejected",
            Error::Panicked(_) => "panic",
            Error::Other(_) => "other",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Error;

    /// The counters start with every kind: each variant's label is listed.
    #[test]
    fn every_metric_label_is_listed() {
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let kube = kube::Error::Service("down".into());
        let s = || "x".to_string();
        for e in [
            Error::Kube(kube),
            Error::Kafka(s()),
            Error::Serialization(json),
            Error::Finalizer(s()),
            Error::App(s()),
            Error::Placement(s()),
            Error::Rejected {
                object: s(),
                message: s(),
            },
            Error::Panicked(s()),
            Error::Other(s()),
        ] {
            assert!(
                Error::METRIC_LABELS.contains(&e.metric_label()),
                "{} is not in METRIC_LABELS",
                e.metric_label()
            );
        }
    }
}
