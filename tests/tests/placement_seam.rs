//! The engine's placement seam against the real broker: released tasks are
//! committed and no longer consumed; taken tasks resume at their committed
//! offsets; every change is acknowledged by epoch.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millrace_runtime::engine::{Engine, Shared};
use millrace_runtime::pipeline::eval::Evaluator;
use millrace_runtime::placement::{PlacementChange, TaskSource};
use millrace_runtime::processor::Io;
use millrace_tests::{committed_values, ensure_topics, kafka_bootstrap, unique, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Clone, Default)]
struct Scripted {
    changes: Arc<Mutex<VecDeque<PlacementChange>>>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
}

impl TaskSource for Scripted {
    fn tasks(&mut self, task_count: i32) -> Vec<i32> {
        (0..task_count).collect()
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
    fn poll_change(&mut self) -> Option<PlacementChange> {
        self.changes.lock().unwrap().pop_front()
    }
    fn acknowledge(&mut self, epoch: u64) {
        self.acknowledged.lock().unwrap().push(epoch);
    }
}

fn produce_to(topic: &str, partition: i32, from: usize, count: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    for i in from..from + count {
        let value = format!(r#"{{"n":{i},"p":{partition}}}"#);
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(partition)
                    .key("k")
                    .payload(&value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn committed(group: &str, topic: &str, partition: i32) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .find_partition(topic, partition)
        .unwrap()
        .offset()
}

#[test]
fn released_tasks_stop_and_taken_tasks_resume_at_their_committed_offsets() {
    let (input, output, app) = (unique("seam-in"), unique("seam-out"), unique("seam-app"));
    ensure_topics(&[(&input, 2), (&output, 1)]);
    let yaml = format!(
        "apiVersion: millrace.dev/v1alpha1\nkind: StreamApp\nmetadata: {{name: seam}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  applicationId: {app}\n  pipeline:\n    source: {{topics: [{input}]}}\n    steps: [{{route: {{default: {output}}}}}]\n",
        kafka_bootstrap()
    );
    let app_spec: millrace_crds::StreamApp = serde_saphyr::from_str(&yaml).unwrap();
    let config = millrace_runtime::manifest::worker_config(&app_spec, None, 0, None).unwrap();
    let compiled = millrace_runtime::pipeline::compile(config.pipeline.as_ref().unwrap()).unwrap();
    let source = Scripted::default();
    let shutdown = Arc::new(AtomicBool::new(false));
    let engine = {
        let (source, shutdown) = (source.clone(), shutdown.clone());
        std::thread::spawn(move || {
            let io = Io::of_pipeline(&compiled, None);
            let evaluator = Evaluator::new(Arc::new(compiled));
            let shared = Shared {
                shutdown,
                ..Shared::default()
            };
            let mut engine = Engine::start(
                config,
                "seam-0".into(),
                (io, evaluator),
                Box::new(source),
                shared,
            )
            .unwrap();
            engine.run().unwrap();
        })
    };
    let outputs = || committed_values(&output).len();

    produce_to(&input, 0, 0, 10);
    produce_to(&input, 1, 0, 10);
    wait_until("20 records processed", Duration::from_secs(60), || {
        (outputs() == 20).then_some(())
    });

    source
        .changes
        .lock()
        .unwrap()
        .push_back(PlacementChange::Release {
            epoch: 1,
            tasks: vec![1],
        });
    wait_until("epoch 1 acknowledged", Duration::from_secs(30), || {
        source
            .acknowledged
            .lock()
            .unwrap()
            .contains(&1)
            .then_some(())
    });
    assert_eq!(
        committed(&app, &input, 1),
        Offset::Offset(10),
        "a released task is committed up to what was processed"
    );

    produce_to(&input, 0, 10, 5);
    produce_to(&input, 1, 10, 5);
    wait_until("task 0's new records", Duration::from_secs(60), || {
        (outputs() == 25).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        outputs(),
        25,
        "records of a released task are not processed"
    );

    source
        .changes
        .lock()
        .unwrap()
        .push_back(PlacementChange::Take {
            epoch: 2,
            tasks: vec![1],
        });
    wait_until("epoch 2 acknowledged", Duration::from_secs(30), || {
        source
            .acknowledged
            .lock()
            .unwrap()
            .contains(&2)
            .then_some(())
    });
    wait_until(
        "task 1 resumed at offset 10",
        Duration::from_secs(60),
        || (outputs() == 30).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        outputs(),
        30,
        "taken back at its committed offset: nothing twice"
    );

    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    engine.join().unwrap();
    assert_eq!(committed(&app, &input, 1), Offset::Offset(15));
}
