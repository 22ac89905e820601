//! The daemon's Prometheus metrics (`metrics_listen`): the counters of `server::stats` as they
//! run, and at each scrape the gauges of what is there now (clients, their rings' queue depth,
//! memory), read from the same snapshot `loader status` shows.
//!
//! Names follow Prometheus' conventions: a `loader_` prefix, base units (seconds, bytes), and
//! `_total` on counters (added by the encoder). Per-client series carry the client's `uid`,
//! `job_id` and `rank`, which the daemon bounds (`max_clients` clients; job ids of at most 128
//! bytes of printable text, refused otherwise at the hello).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Shared;
use crate::server::prometheus::{ResidentMemory, Scrape};

/// A client's labels. The uid is one of them: job ids are the clients' own words, and another
/// user naming a job as yours would otherwise add to (or take over) your series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabel {
    uid: u32,
    job_id: String,
    rank: u32,
}

/// The gauges set at each scrape.
struct Now {
    samples_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    clients: Gauge,
    ring_budget: Gauge,
    memory: ResidentMemory,
    slots_full: Family<ClientLabel, Gauge>,
    slots: Family<ClientLabel, Gauge>,
    client_samples: Family<ClientLabel, Counter>,
    waits: Family<ClientLabel, Counter>,
}

/// The daemon's registry and what a scrape refreshes.
pub(super) struct DaemonMetrics {
    shared: Arc<Shared>,
    /// One scrape at a time: the per-client families are cleared and refilled.
    registry: Mutex<(Registry, Now)>,
}

impl DaemonMetrics {
    /// The registry of `shared`'s counters.
    pub(super) fn new(shared: Arc<Shared>) -> DaemonMetrics {
        let mut r = Registry::with_prefix("loader");
        let c = &shared.counters;
        let now = Now {
            samples_per_second: Gauge::default(),
            clients: Gauge::default(),
            ring_budget: Gauge::default(),
            memory: ResidentMemory::default(),
            slots_full: Family::default(),
            slots: Family::default(),
            client_samples: Family::default(),
            waits: Family::default(),
        };
        crate::register_metrics!(&mut r;
            samples = c.samples, "Samples written into clients' rings";
            decoded = c.decoded,
                "Images decoded (fewer than samples where the ranks of a job share decodes)";
            decode_errors = c.decode_errors,
                "Records that failed to decode, each replaced by another record of its split";
            refused = c.refused_by, "Connections refused, by reason";
            stage_sample [Seconds] = c.stage_seconds,
                "Seconds per sample of a pipeline stage, summed over worker threads, one \
                 observation per fill";
            ring [Bytes] = c.ring_bytes, "Bytes of the rings of the clients being served";
            stall_closes = c.stall_closes,
                "Streams closed because their client held every slot for stall_timeout_s";
            oldest_fill [Seconds] = c.oldest_fill,
                "How long the oldest fill in flight has run (0 without one); past 300 s the \
                 daemon counts a decode worker as hung and stops pinging systemd's watchdog";
            samples_per_second = now.samples_per_second,
                "Samples written per second over the last seconds";
            clients = now.clients, "Clients being served";
            ring_budget [Bytes] = now.ring_budget,
                "Bytes all rings together may take (memory_budget_bytes)";
            client_slots_full = now.slots_full,
                "Batches ready in a client's ring and not yet released (its queue depth; 0 \
                 while it waits for the loader)";
            client_slots = now.slots, "Slots of a client's ring";
            client_samples = now.client_samples, "Samples written for a client";
            client_waits = now.waits,
                "Batches that arrived while the client held none: it had read every batch and \
                 waited for the loader";
        );
        now.memory.register(
            &mut r,
            "The daemon's resident memory: anon (heap, decode buffers), shmem (rings written), \
             file (binary and shard pages)",
        );
        DaemonMetrics {
            shared,
            registry: Mutex::new((r, now)),
        }
    }
}

impl Scrape for DaemonMetrics {
    fn scrape(&self, encode: &mut dyn FnMut(&Registry)) {
        let Ok(guard) = self.registry.lock() else {
            return;
        };
        let (registry, now) = &*guard;
        let stats = self.shared.stats();
        now.samples_per_second.set(stats.samples_per_s);
        now.clients.set(stats.clients.len() as i64);
        now.ring_budget
            .set(i64::try_from(stats.memory_budget).unwrap_or(i64::MAX));
        now.memory.refresh();
        now.slots_full.clear();
        now.slots.clear();
        now.client_samples.clear();
        now.waits.clear();
        for c in &stats.clients {
            let label = ClientLabel {
                uid: c.uid,
                job_id: c.job_id.clone(),
                rank: c.rank,
            };
            now.slots_full
                .get_or_create(&label)
                .set(i64::from(c.slots_full));
            now.slots.get_or_create(&label).set(i64::from(c.slots));
            now.client_samples.get_or_create(&label).inc_by(c.samples);
            now.waits.get_or_create(&label).inc_by(c.waits);
        }
        encode(registry);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use crate::server::{LocalServer, ServeConfig};

    /// The endpoint's answer to `GET /metrics`, in the Prometheus text format.
    fn scrape(addr: std::net::SocketAddr) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The value of the series `name` (with its labels, as printed), if present.
    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_scrape_while_a_client_reads_batches_sees_the_counters_move() {
        let dir = tempfile::tempdir().unwrap();
        let shards = crate::testutil::packed(dir.path(), 2, 12, 16);
        let server = LocalServer::start(ServeConfig {
            shards: Some(shards),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeConfig::default()
        })
        .unwrap();
        let addr = server.metrics_addr().unwrap();
        let before = scrape(addr);
        assert!(before.starts_with("HTTP/1.1 200"), "{before}");
        assert_eq!(
            value(&before, "loader_samples_total"),
            Some(0.0),
            "{before}"
        );
        assert_eq!(value(&before, "loader_clients"), Some(0.0), "{before}");

        // Job "scraped", batches of 4 of `split`, 2 slots.
        let options = |split: &str| crate::wire::client::ClientOptions {
            socket: server.socket().to_path_buf(),
            job_id: "scraped".into(),
            job: crate::request::job::JobSpec::single(
                split,
                crate::request::transform::TransformSpec::preset("a3").unwrap(),
                0,
                4,
            ),
            start: crate::request::job::Position::default(),
            epochs: None,
            slots: Some(2),
            reconnect_timeout: Duration::from_secs(5),
        };
        let mut client = crate::wire::client::Client::connect(options("train")).unwrap();
        let mut read = 0;
        for _ in 0..3 {
            read += client.next_batch().unwrap().unwrap().count;
        }
        let during = scrape(addr);
        let samples = value(&during, "loader_samples_total").unwrap();
        assert!(samples >= read as f64, "{samples} < {read} read:\n{during}");
        assert_eq!(value(&during, "loader_clients"), Some(1.0), "{during}");
        // The uid is a label: another user naming a job "scraped" has a series of its own.
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let client_series =
            format!(r#"loader_client_slots{{uid="{uid}",job_id="scraped",rank="0"}}"#);
        assert_eq!(value(&during, &client_series), Some(2.0), "{during}");
        assert!(
            value(&during, "loader_ring_bytes").is_some_and(|b| b > 0.0),
            "{during}"
        );
        // Every stage timed: a histogram per stage, with as many observations.
        let decodes = r#"loader_stage_sample_seconds_count{stage="decode"}"#;
        assert!(
            value(&during, decodes).is_some_and(|n| n >= 1.0),
            "{during}"
        );
        // Prometheus' own linter on the body: no errors, no warnings.
        let body = during.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        match crate::server::prometheus::promtool_check(body) {
            Some(verdict) => assert_eq!(verdict, Ok(()), "{body}"),
            None => eprintln!(
                "promtool check skipped: promtool is not installed (apt-get install prometheus)"
            ),
        }

        for _ in 0..3 {
            read += client.next_batch().unwrap().unwrap().count;
        }
        let later = scrape(addr);
        assert!(
            value(&later, "loader_samples_total").unwrap() > samples,
            "the counter did not move:\n{later}"
        );
        let client_samples =
            format!(r#"loader_client_samples_total{{uid="{uid}",job_id="scraped",rank="0"}}"#);
        assert!(
            value(&later, &client_samples).unwrap() >= read as f64,
            "{later}"
        );

        // A refused connection is counted by its reason.
        assert!(crate::wire::client::Client::connect(options("no-such-split")).is_err());
        // Job ids are refused whole, not cut or passed on raw: too long, or with a control
        // character (a CR would forge a log line, an ESC drive a terminal).
        for (job_id, want) in [
            ("x".repeat(129), "job id of 129 bytes"),
            ("a\rb".to_string(), "control character '\\r'"),
            ("\u{1b}[2J".to_string(), "control character '\\u{1b}'"),
        ] {
            let mut o = options("train");
            o.job_id = job_id;
            let err = crate::wire::client::Client::connect(o)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut longest = options("train");
        longest.job_id = "é".repeat(64);
        drop(crate::wire::client::Client::connect(longest).unwrap());
        drop(client);
        let t0 = std::time::Instant::now();
        let refused = r#"loader_refused_total{reason="no_split"}"#;
        let job_ids = r#"loader_refused_total{reason="job_id"}"#;
        let after = loop {
            let text = scrape(addr);
            if value(&text, refused) == Some(1.0)
                && value(&text, job_ids) == Some(3.0)
                && value(&text, "loader_clients") == Some(0.0)
            {
                break text;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(value(&after, "loader_ring_bytes"), Some(0.0), "{after}");
    }
}
