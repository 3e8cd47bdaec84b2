//! A field of a StreamApp and what is wrong with it: the answer of every
//! check that needs code, in the operator (a `Degraded` condition) and in
//! the runtime's standalone mode (one line, exit 2) alike.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `spec.commitInterval`, `spec.kafka.properties['group.id']` and the like.
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}
