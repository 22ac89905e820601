//! A Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1 (hyper), answering with a
//! [`prometheus_client`] registry in the Prometheus text format, or in OpenMetrics when the
//! scraper asks for it (Prometheus does). The loader daemon serves it on its own tokio runtime
//! (`metrics_listen`); the trainer on a thread of its own (`--metrics-listen`).
//!
//! Who can read it: anyone who can connect to its address. On loopback (the default in every
//! example) that is every user of the machine; on any other address, anyone who can reach the
//! port, which [`bind`] warns about loudly. The series name jobs, ranks and uids, never data.
//!
//! A peer that misbehaves costs little and blinds no one: idle or half-sent connections are a
//! task and a descriptor each, their headers must come within [`HEADER_TIMEOUT`], every
//! connection is closed after [`CONNECTION_TIMEOUT`], no request body is ever read, and at
//! [`MAX_CONNECTIONS`] the oldest connection is closed for the new one, so a scraper is
//! answered at once however many sockets a local user holds open (a permit per connection,
//! taken before its request came, let 16 silent sockets hold every scrape off).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// Connections open at once; past it, the oldest is closed for the newest. Well below a
/// process's usual 1,024 descriptors, so the endpoint never takes the daemon's.
pub const MAX_CONNECTIONS: usize = 128;
/// The longest a request's headers may take.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a connection stays open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// OpenMetrics' content type, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The address could not be listened on.
    #[error(
        "cannot listen on {addr} for metrics: {source}; choose another address (or port 0 for \
         any free one) in {setting}, or stop what listens there (under the shipped systemd \
         unit, which has no network, install configs/rsb-loader-metrics.conf as its drop-in)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The setting that named it (`metrics_listen`, `--metrics-listen`).
        setting: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint's thread or runtime could not start.
    #[error("metrics endpoint: {0}")]
    Start(std::io::Error),
}

/// What a scrape answers: the registry to encode, brought up to date first (gauges read from
/// the process's state at scrape time).
pub trait Scrape: Send + Sync + 'static {
    /// Updates what is read at scrape time, then calls `encode` with the registry.
    fn scrape(&self, encode: &mut dyn FnMut(&Registry));
}

/// Registers metrics in a [`Registry`], one entry each: `name = metric, "help";`, or with a
/// unit, `name [Seconds] = metric, "help";` (a [`Unit`] variant). The registry takes a clone of
/// each metric: a handle to the same value.
#[macro_export]
macro_rules! register_metrics {
    (@one $r:ident, $name:ident, [], $metric:expr, $help:expr) => {
        $r.register(stringify!($name), $help, $metric.clone())
    };
    (@one $r:ident, $name:ident, [$unit:ident], $metric:expr, $help:expr) => {
        $r.register_with_unit(
            stringify!($name),
            $help,
            ::prometheus_client::registry::Unit::$unit,
            $metric.clone(),
        )
    };
    ($registry:expr; $($name:ident $([$unit:ident])? = $metric:expr, $help:expr;)+) => {{
        let registry: &mut ::prometheus_client::registry::Registry = $registry;
        $($crate::register_metrics!(@one registry, $name, [$($unit)?], $metric, $help);)+
    }};
}

/// A kind of resident memory's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoryKind {
    kind: &'static str,
}

/// This process's resident memory as `<prefix>_resident_bytes{kind}` (anon, shmem, file; from
/// `/proc/self/status`), read at each scrape with [`ResidentMemory::refresh`].
#[derive(Clone, Debug, Default)]
pub struct ResidentMemory(Family<MemoryKind, Gauge>);

impl ResidentMemory {
    /// Registers the gauge in `registry` with `help`.
    pub fn register(&self, registry: &mut Registry, help: &str) {
        registry.register_with_unit("resident", help, Unit::Bytes, self.0.clone());
    }

    /// Reads the process's memory now.
    pub fn refresh(&self) {
        let memory = crate::wire::protocol::MemoryUse::of_this_process();
        for (kind, bytes) in [
            ("anon", memory.anon),
            ("shmem", memory.shmem),
            ("file", memory.file),
        ] {
            self.0
                .get_or_create(&MemoryKind { kind })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

/// The registry as text: OpenMetrics (with `# EOF`) or the Prometheus text format 0.0.4.
pub fn encode(registry: &Registry, openmetrics: bool) -> String {
    let mut text = String::new();
    // Writing into a String does not fail; an encoder error would be a bug of its own.
    let _ = if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
    };
    text
}

/// Runs `promtool check metrics` (Prometheus' own linter) on `text`: `None` where promtool is
/// not installed, else its verdict (`Err` with what it printed).
pub fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().ok()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(match written {
        Some(Ok(())) if output.status.success() && said.trim().is_empty() => Ok(()),
        _ => Err(said),
    })
}

/// Binds `addr` (a std listener, so the error comes before anything else starts).
///
/// # Errors
/// [`PrometheusError::Bind`] naming the address and `setting`.
pub fn bind(
    addr: SocketAddr,
    setting: &'static str,
) -> Result<std::net::TcpListener, PrometheusError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| PrometheusError::Bind {
        addr,
        setting,
        source,
    })?;
    if let Some(warning) = exposure(addr, setting) {
        tracing::warn!("{warning}");
    }
    listener
        .set_nonblocking(true)
        .map_err(PrometheusError::Start)?;
    Ok(listener)
}

/// The warning for an endpoint on `addr` that more than this machine's users can read: any
/// address but loopback.
pub fn exposure(addr: SocketAddr, setting: &str) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "WARNING: metrics on {addr} ({setting}) can be read by anyone who can reach this \
             machine on that port: job ids, ranks, uids and rates. Prefer 127.0.0.1:PORT with the \
             scraper on this host (or a tunnel to it)"
        )
    })
}

/// Serves `scrape` on `listener` until the task is dropped.
///
/// # Errors
/// [`PrometheusError::Start`] when the listener cannot join the runtime.
pub async fn serve(
    listener: std::net::TcpListener,
    scrape: Arc<dyn Scrape>,
) -> Result<(), PrometheusError> {
    let listener = TcpListener::from_std(listener).map_err(PrometheusError::Start)?;
    // The open connections, oldest first.
    let mut open: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: the next
                // accept may succeed.
                tracing::debug!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|c| !c.is_finished());
        while open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let scrape = Arc::clone(&scrape);
        let connection = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &*scrape);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
        open.push_back(connection.abort_handle());
    }
}

/// Serves `scrape` on `listener` from a thread of its own (for a process without a tokio
/// runtime); the thread ends with the process.
///
/// # Errors
/// [`PrometheusError::Start`] when the thread or its runtime cannot start.
pub fn spawn(
    listener: std::net::TcpListener,
    scrape: Arc<dyn Scrape>,
) -> Result<(), PrometheusError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PrometheusError::Start)?;
    std::thread::Builder::new()
        .name("metrics-endpoint".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve(listener, scrape)) {
                tracing::warn!("{e}");
            }
        })
        .map_err(PrometheusError::Start)?;
    Ok(())
}

/// The answer to one request: the metrics for `GET /metrics`, 404 elsewhere, 405 for other
/// methods.
fn respond(request: &Request<Incoming>, scrape: &dyn Scrape) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        let mut response = Response::new(Full::new(Bytes::from(text.to_string())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let mut text = String::new();
    scrape.scrape(&mut |registry| text = encode(registry, openmetrics));
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let content_type = if openmetrics {
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::io::{Read, Write};

    struct One(Registry, Counter);

    impl Scrape for One {
        fn scrape(&self, encode: &mut dyn FnMut(&Registry)) {
            self.1.inc();
            encode(&self.0);
        }
    }

    fn get(addr: SocketAddr, path: &str, accept: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// An endpoint on a free loopback port whose one metric counts the scrapes answered.
    fn serve_scrape_counter() -> SocketAddr {
        let mut registry = Registry::default();
        let counter = Counter::default();
        registry.register("scrapes", "Scrapes answered", counter.clone());
        let listener = bind("127.0.0.1:0".parse().unwrap(), "test").unwrap();
        let addr = listener.local_addr().unwrap();
        spawn(listener, Arc::new(One(registry, counter))).unwrap();
        addr
    }

    #[test]
    fn a_scrape_gets_the_text_format_or_openmetrics_as_asked() {
        let addr = serve_scrape_counter();
        let text = get(addr, "/metrics", "*/*");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(text.contains("\nscrapes_total 1\n"), "{text}");
        let om = get(
            addr,
            "/metrics",
            "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
        );
        assert!(om.contains("application/openmetrics-text"), "{om}");
        assert!(
            om.contains("\nscrapes_total 2\n") && om.ends_with("# EOF\n"),
            "{om}"
        );
        assert!(get(addr, "/", "*/*").starts_with("HTTP/1.1 404"));
        // The port is taken now: the error names it and the setting.
        let err = bind(addr, "metrics_listen").unwrap_err().to_string();
        assert!(
            err.contains(&addr.to_string()) && err.contains("metrics_listen"),
            "{err}"
        );
    }

    #[test]
    fn silent_and_half_sent_sockets_do_not_hold_a_scraper_off() {
        let addr = serve_scrape_counter();
        // A local user's 100 silent sockets, 100 that sent half a request, then more than the
        // endpoint keeps open.
        let mut held = Vec::new();
        for i in 0..(200 + MAX_CONNECTIONS) {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /metr").unwrap();
            }
            held.push(s);
        }
        let started = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // Under the old rule the scrape waited for the silent sockets' header timeout (5 s),
        // one batch of 16 after another.
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let took = started.elapsed();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        eprintln!(
            "scrape answered in {:.1} ms with {} sockets held open",
            took.as_secs_f64() * 1e3,
            held.len()
        );
    }

    #[test]
    fn an_address_other_than_loopback_is_warned_about() {
        for quiet in ["127.0.0.1:9100", "[::1]:9100"] {
            assert_eq!(exposure(quiet.parse().unwrap(), "metrics_listen"), None);
        }
        for loud in ["0.0.0.0:9100", "10.1.2.3:9100", "[::]:9100"] {
            let warning = exposure(loud.parse().unwrap(), "metrics_listen").unwrap();
            assert!(warning.contains("anyone who can reach"), "{warning}");
        }
    }
}
