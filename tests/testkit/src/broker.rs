//! A real Kafka-protocol broker: a `tansu` 0.6.0 process listening on 127.0.0.1.
//!
//! tansu does not create topics on demand (it ignores `allow_auto_topic_creation`), so every
//! broker started here creates [`SECTION_TOPICS`] up front, and [`Broker::create_topic`] adds
//! others. The binary is found through `TANSU_BIN`, then `$CARGO_HOME/bin/tansu` (default
//! `~/.cargo/bin/tansu`), then `PATH`; `scripts/ensure-tansu.sh` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::{Instant, sleep};

use crate::process::{LogFile, free_port};

/// The v2 (per-domain) and v1 (per-action) topics of the section-related entities, as the MesaYa
/// API publishes them (the v2 `.events` topics and the v1 per-verb ones).
pub const SECTION_TOPICS: [&str; 22] = [
    "mesa-ya.sections.events",
    "mesa-ya.tables.events",
    "mesa-ya.objects.events",
    "mesa-ya.section-objects.events",
    "mesa-ya.reservations.events",
    "mesa-ya.sections.created",
    "mesa-ya.sections.updated",
    "mesa-ya.sections.deleted",
    "mesa-ya.tables.created",
    "mesa-ya.tables.updated",
    "mesa-ya.tables.deleted",
    "mesa-ya.objects.created",
    "mesa-ya.objects.updated",
    "mesa-ya.objects.deleted",
    "mesa-ya.section-objects.created",
    "mesa-ya.section-objects.updated",
    "mesa-ya.section-objects.deleted",
    "mesa-ya.reservations.created",
    "mesa-ya.reservations.updated",
    "mesa-ya.reservations.deleted",
    "mesa-ya.tables.selecting",
    "mesa-ya.tables.released",
];

/// How long tansu may take to answer a metadata request after it was spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const CLUSTER_ID: &str = "mesaya-test";
/// The libsql storage of a persistent broker: tansu resolves `sqlite://NAME` against its working
/// directory, which is the storage directory.
const SQLITE_URL: &str = "sqlite://tansu.db";

/// A running tansu broker. Dropping it kills the process.
pub struct Broker {
    bin: PathBuf,
    port: u16,
    storage_url: &'static str,
    /// tansu's working directory. It resolves `sqlite://` paths against it, and loads a `.env`
    /// from it (dotenv), so it must be a directory we control.
    workdir: PathBuf,
    log: LogFile,
    child: Option<Child>,
}

impl Broker {
    /// A broker with in-memory storage (lost when it stops), with [`SECTION_TOPICS`] created.
    pub async fn start_memory() -> Broker {
        Self::start("memory://tansu/", std::env::temp_dir()).await
    }

    /// A broker storing everything in a libsql database inside `dir` (which must exist), so that
    /// [`Broker::restart`] keeps topics, records and committed offsets.
    pub async fn start_persistent(dir: &Path) -> Broker {
        assert!(dir.is_dir(), "storage directory {} does not exist", dir.display());
        Self::start(SQLITE_URL, dir.to_path_buf()).await
    }

    async fn start(storage_url: &'static str, workdir: PathBuf) -> Broker {
        let mut broker = Broker {
            bin: tansu_bin(),
            port: free_port(),
            storage_url,
            workdir,
            log: LogFile::new("tansu"),
            child: None,
        };
        broker.launch().await;
        broker
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers` / `KAFKA_BROKERS`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where tansu's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Kills the broker (SIGKILL) and reaps it. Clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again (stopping it first if it runs) on the same port with the same
    /// storage, waits until it answers, and makes sure [`SECTION_TOPICS`] exist (a memory broker
    /// comes back empty; a persistent one keeps its topics and records).
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// Creates `name` with `partitions` partitions; an existing topic is left as it is.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topics(&[name], partitions).await;
    }

    async fn launch(&mut self) {
        let listener = format!("tcp://{}", self.bootstrap());
        let (stdout, stderr) = self.log.stdio();
        let mut command = Command::new(&self.bin);
        command
            .arg("broker")
            .args(["--cluster-id", CLUSTER_ID])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", self.storage_url])
            .current_dir(&self.workdir)
            // A clean environment: tansu reads its settings (and OTLP endpoints) from env vars too.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for name in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run tansu at {} ({e}); install it with scripts/ensure-tansu.sh or set TANSU_BIN",
                self.bin.display()
            )
        });
        self.child = Some(child);
        self.wait_until_serving().await;
        self.create_topics(&SECTION_TOPICS, 1).await;
    }

    /// Polls with metadata requests until tansu answers one, failing fast if it exits.
    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tansu exited during startup ({status}); {}\n{}", self.describe(), self.log.tail(30));
            }
            let admin = self.admin();
            // fetch_metadata blocks: keep it off the async runtime's thread.
            let answered = tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, Duration::from_millis(500)).is_ok()
            })
            .await
            .expect("metadata probe panicked");
            if answered {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tansu did not answer a metadata request within {STARTUP_TIMEOUT:?}; {}\n{}",
                    self.describe(),
                    self.log.tail(30)
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_topics(&self, names: &[&str], partitions: i32) {
        create_topics(&self.bootstrap(), names, partitions)
            .await
            .unwrap_or_else(|e| panic!("{e}; {}", self.describe()));
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        admin(&self.bootstrap())
    }

    fn describe(&self) -> String {
        format!("tansu on {} (log: {})", self.bootstrap(), self.log.path().display())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the topics `names` that do not exist yet on the Kafka at `bootstrap`, with the admin
/// API (CreateTopics).
pub async fn create_topics(bootstrap: &str, names: &[&str], partitions: i32) -> Result<(), String> {
    let topics: Vec<NewTopic> =
        names.iter().map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        admin(bootstrap).create_topics(&topics, &options).await.map_err(|e| format!("CreateTopics failed: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
        }
    }
    Ok(())
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Quiet: connection-refused noise while a broker starts is expected.
        .set("log_level", "3")
        .create()
        .expect("cannot create Kafka admin client")
}

/// `TANSU_BIN`, else `$CARGO_HOME/bin/tansu` (default `~/.cargo/bin/tansu`), else `tansu` on PATH.
pub fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    cargo_home
        .map(|home| home.join("bin").join("tansu"))
        .filter(|bin| bin.is_file())
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::EventProducer;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    /// Reads the first record of partition 0 of `topic`.
    async fn first_record(bootstrap: &str, topic: &str) -> Vec<u8> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("testkit-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("no record within 20 s")
            .expect("consume failed");
        message.payload().unwrap().to_vec()
    }

    #[tokio::test]
    async fn memory_broker_has_every_section_topic_with_one_partition() {
        let broker = Broker::start_memory().await;
        let admin = broker.admin();
        let metadata =
            tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, Duration::from_secs(5)).unwrap())
                .await
                .unwrap();
        for name in SECTION_TOPICS {
            let topic =
                metadata.topics().iter().find(|topic| topic.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(topic.partitions().len(), 1, "{name}");
        }
        let producer = EventProducer::new(&broker.bootstrap());
        let json = serde_json::json!({"event_type": "created"});
        producer.send_json("mesa-ya.tables.events", &json).await;
        let payload = first_record(&broker.bootstrap(), "mesa-ya.tables.events").await;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap(), json);
    }

    #[tokio::test]
    async fn persistent_broker_keeps_records_across_a_restart() {
        let dir = crate::process::scratch_path("tansu-data");
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Broker::start_persistent(&dir).await;
        let port = broker.port();
        let producer = EventProducer::new(&broker.bootstrap());
        producer.send("mesa-ya.section-objects.events", b"before").await;

        broker.restart().await;
        assert_eq!(broker.port(), port);
        assert_eq!(first_record(&broker.bootstrap(), "mesa-ya.section-objects.events").await, b"before");
        // The producer created before the restart reconnects by itself.
        producer.send("mesa-ya.section-objects.events", b"after").await;

        drop(broker);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
