//! Kafka clients shared by the reconciles and the lag readings, one per set
//! of client properties. A client costs threads, a connection and a
//! metadata round trip to create: with a thousand apps on one broker the
//! operator made several per reconcile and per lag reading, and spent its
//! time creating them, so far behind that new apps waited minutes for their
//! first reconcile (issue 21's operator benchmark). A client that fails a
//! request is dropped, so the next try starts afresh (a broker back, new
//! credentials); one unused for `IDLE`, or older than `MAX_AGE`, is closed,
//! so revoked credentials show up on a fresh connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;

use crate::kafka::LastError;
use crate::supervise::lock;

type Properties = BTreeMap<String, String>;
pub type SharedClient = Arc<BaseConsumer<LastError>>;

const IDLE: Duration = Duration::from_secs(300);
const MAX_AGE: Duration = Duration::from_secs(300);

struct Kept {
    client: SharedClient,
    made: Instant,
    used: Instant,
}

static CLIENTS: LazyLock<Mutex<HashMap<Properties, Kept>>> = LazyLock::new(Mutex::default);

/// The shared client of `props` (made now if there is none). It reads
/// `read_committed`: its watermarks end at the last stable offset.
pub fn client(props: &Properties) -> Result<SharedClient, String> {
    let now = Instant::now();
    let (found, idle) = {
        let mut clients = lock(&CLIENTS);
        let idle: Vec<SharedClient> = clients
            .extract_if(|_, k| {
                now.duration_since(k.used) > IDLE || now.duration_since(k.made) > MAX_AGE
            })
            .map(|(_, k)| k.client)
            .collect();
        let found = clients.get_mut(props).map(|k| {
            k.used = now;
            k.client.clone()
        });
        (found, idle)
    };
    // Closing a client waits for its threads: not under the lock.
    drop(idle);
    if let Some(c) = found {
        return Ok(c);
    }
    let made: SharedClient = Arc::new(
        crate::kafka::client_config(props)
            .set("isolation.level", "read_committed")
            .create_with_context(LastError::default())
            .map_err(|e| format!("creating a Kafka client: {e}"))?,
    );
    lock(&CLIENTS).insert(
        props.clone(),
        Kept {
            client: made.clone(),
            made: now,
            used: now,
        },
    );
    Ok(made)
}

/// Drops `failed`, the client of `props`, after a failed request.
pub fn forget(props: &Properties, failed: &SharedClient) {
    let removed = {
        let mut clients = lock(&CLIENTS);
        match clients.get(props) {
            Some(k) if Arc::ptr_eq(&k.client, failed) => clients.remove(props),
            _ => None,
        }
    };
    drop(removed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(bootstrap: &str) -> Properties {
        [("bootstrap.servers".to_string(), bootstrap.to_string())].into()
    }

    #[test]
    fn one_client_per_properties_until_it_fails() {
        let a = props("127.0.0.1:1");
        let first = client(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &client(&a).unwrap()), "reused");
        assert!(!Arc::ptr_eq(
            &first,
            &client(&props("127.0.0.1:2")).unwrap()
        ));
        forget(&a, &first);
        assert!(!Arc::ptr_eq(&first, &client(&a).unwrap()), "made afresh");
    }
}
