//! Every metric caregate exports, in one place, rendered as Prometheus text on `/metrics`.
//!
//! Names follow `caregate_<noun>_<verb>_total` / `_seconds`. Labels come from bounded sets only:
//! configured source and tenant names, ACK codes, reasons from a fixed list. Never a device
//! serial, a control id or anything from a message body.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `source`.
pub type BySource = [(&'static str, String); 1];
/// Labels `source` plus one more (code, reason).
pub type BySource2 = [(&'static str, String); 2];

/// Labels `tenant` (or any one label).
pub type ByTenant = [(&'static str, String); 1];
/// Two labels, e.g. `tenant` and `source`.
pub type Two = [(&'static str, String); 2];

type HistogramFamily = Family<BySource, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The process-wide metric set.
pub struct Metrics {
    registry: Registry,
    /// Messages (frames) received per source.
    pub received: Family<BySource, Counter>,
    /// ACKs sent per source and MSA-1 code.
    pub acks: Family<BySource2, Counter>,
    /// Messages refused per source and reason (`malformed`, `queue_full`, `storage`, ...).
    pub rejected: Family<BySource2, Counter>,
    /// Resends recognised as already stored.
    pub duplicates: Family<BySource, Counter>,
    /// Bytes skipped outside MLLP frames.
    pub garbage_bytes: Family<BySource, Counter>,
    /// Connections closed by caregate, per source and reason (`limit`, `peer_not_allowed`, ...).
    pub connections_closed: Family<BySource2, Counter>,
    /// Open connections per source.
    pub connections: Family<BySource, Gauge>,
    /// Unix time of the last frame received, per source.
    pub last_received: Family<BySource, Gauge>,
    /// Receipt of a frame to its ACK written, per source.
    pub ack_seconds: HistogramFamily,
    /// Duration of a queue group commit (including fsync).
    pub commit_seconds: Histogram,
    /// Failed queue commits.
    pub commit_failures: Counter,
    /// Envelopes stored.
    pub queue_messages: Gauge,
    /// Payload bytes stored.
    pub queue_bytes: Gauge,
    /// Messages delivered upstream, per tenant and source.
    pub forwarded: Family<Two, Counter>,
    /// Critical results delivered a second time, at their arrival place, because older
    /// messages of their source went after them (per tenant and source; not in `forwarded`).
    pub resent_in_order: Family<Two, Counter>,
    /// Messages moved to dead letters, per tenant and source.
    pub dead_lettered: Family<Two, Counter>,
    /// Messages that could not be converted, per tenant and source.
    pub conversion_failures: Family<Two, Counter>,
    /// Values degraded or omitted during conversion, per tenant and warning kind.
    pub conversion_warnings: Family<Two, Counter>,
    /// Upstream requests per tenant and outcome (`delivered`, `retry`, `route_error`, `rejected`,
    /// `split`, `reauthenticate`).
    pub upstream_requests: Family<Two, Counter>,
    /// Upstream request duration per tenant.
    pub upstream_seconds: Family<ByTenant, Histogram, fn() -> Histogram>,
    /// Circuit breaker state per tenant: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<ByTenant, Gauge>,
    /// Times the breaker opened, per tenant.
    pub breaker_trips: Family<ByTenant, Counter>,
    /// Age of the oldest message waiting for delivery, per tenant (0 when none).
    pub oldest_ready_seconds: Family<ByTenant, Gauge>,
    /// Alerts raised per tenant and kind.
    pub alerts: Family<Two, Counter>,
    /// 1 while an alert of that tenant and kind is active.
    pub alert_active: Family<Two, Gauge>,
    /// Alerts that no webhook took after retries.
    pub webhook_failures: Counter,
    /// Messages stored with at least one critical result, per tenant and source.
    pub critical_results: Family<Two, Counter>,
    /// Messages held for consent, per tenant.
    pub consent_held: Family<ByTenant, Counter>,
    /// Operator actions (replay, purge) per tenant and action.
    pub operator_actions: Family<Two, Counter>,
    /// Modbus poll cycles started, per source.
    pub modbus_polls: Family<BySource, Counter>,
    /// Modbus requests that got no answer within the timeout, per source.
    pub modbus_timeouts: Family<BySource, Counter>,
    /// Modbus exception responses, per source and exception code.
    pub modbus_exceptions: Family<BySource2, Counter>,
    /// Modbus connect/transport failures and failed stores, per source.
    pub modbus_errors: Family<BySource, Counter>,
    /// Register values not stored because they were invalid (NaN, ±inf, out of range).
    pub modbus_invalid_values: Family<BySource, Counter>,
    /// Modbus readings stored, per source.
    pub modbus_readings: Family<BySource, Counter>,
    /// Process start, Unix seconds (set once).
    pub process_start_time: Gauge<f64, AtomicU64>,
    /// Resident set size, bytes (read at scrape time).
    pub process_resident_memory: Gauge,
    /// Open file descriptors (counted at scrape time).
    pub process_open_fds: Gauge,
    /// Always 1, labelled with the version.
    pub build_info: Family<[(&'static str, String); 1], Gauge>,
}

impl Metrics {
    /// A fresh metric set with everything registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("caregate");
        let m = Metrics {
            received: Family::default(),
            acks: Family::default(),
            rejected: Family::default(),
            duplicates: Family::default(),
            garbage_bytes: Family::default(),
            connections_closed: Family::default(),
            connections: Family::default(),
            last_received: Family::default(),
            ack_seconds: Family::new_with_constructor(latency_histogram),
            commit_seconds: latency_histogram(),
            commit_failures: Counter::default(),
            queue_messages: Gauge::default(),
            queue_bytes: Gauge::default(),
            forwarded: Family::default(),
            resent_in_order: Family::default(),
            dead_lettered: Family::default(),
            conversion_failures: Family::default(),
            conversion_warnings: Family::default(),
            upstream_requests: Family::default(),
            upstream_seconds: Family::new_with_constructor(request_histogram),
            breaker_state: Family::default(),
            breaker_trips: Family::default(),
            oldest_ready_seconds: Family::default(),
            alerts: Family::default(),
            alert_active: Family::default(),
            webhook_failures: Counter::default(),
            critical_results: Family::default(),
            consent_held: Family::default(),
            operator_actions: Family::default(),
            modbus_polls: Family::default(),
            modbus_timeouts: Family::default(),
            modbus_exceptions: Family::default(),
            modbus_errors: Family::default(),
            modbus_invalid_values: Family::default(),
            modbus_readings: Family::default(),
            process_start_time: Gauge::default(),
            process_resident_memory: Gauge::default(),
            process_open_fds: Gauge::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "HL7 messages received",
            m.received.clone(),
        );
        registry.register(
            "acks_sent",
            "acknowledgements sent, by MSA-1 code",
            m.acks.clone(),
        );
        registry.register(
            "messages_rejected",
            "messages refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "messages_duplicate",
            "resends recognised as already stored",
            m.duplicates.clone(),
        );
        registry.register(
            "mllp_garbage_bytes",
            "bytes skipped outside MLLP frames",
            m.garbage_bytes.clone(),
        );
        registry.register(
            "connections_closed",
            "connections closed by caregate, by reason",
            m.connections_closed.clone(),
        );
        registry.register(
            "connections_open",
            "open connections",
            m.connections.clone(),
        );
        registry.register(
            "ack_latency_seconds",
            "time from a complete frame to its ACK written",
            m.ack_seconds.clone(),
        );
        registry.register(
            "queue_commit_seconds",
            "duration of one queue group commit including fsync",
            m.commit_seconds.clone(),
        );
        registry.register(
            "queue_commit_failures",
            "failed queue commits",
            m.commit_failures.clone(),
        );
        registry.register(
            "queue_messages",
            "envelopes stored in the queue",
            m.queue_messages.clone(),
        );
        registry.register(
            "queue_bytes",
            "payload bytes stored in the queue",
            m.queue_bytes.clone(),
        );
        registry.register(
            "messages_forwarded",
            "messages delivered to the tenant's upstream",
            m.forwarded.clone(),
        );
        registry.register(
            "messages_resent_in_order",
            "critical results delivered again at their arrival place, after older messages of their source that went after them",
            m.resent_in_order.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "messages moved to dead letters",
            m.dead_lettered.clone(),
        );
        registry.register(
            "conversion_failures",
            "messages that could not be converted to FHIR",
            m.conversion_failures.clone(),
        );
        registry.register(
            "conversion_warnings",
            "values degraded or omitted during conversion, by kind",
            m.conversion_warnings.clone(),
        );
        registry.register(
            "upstream_requests",
            "requests to the upstream FHIR server, by outcome",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_seconds",
            "duration of upstream requests",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "upstream_breaker_state",
            "circuit breaker: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        registry.register(
            "upstream_breaker_trips",
            "times the circuit breaker opened",
            m.breaker_trips.clone(),
        );
        registry.register(
            "queue_oldest_ready_seconds",
            "age of the oldest message waiting for delivery",
            m.oldest_ready_seconds.clone(),
        );
        registry.register("alerts", "alerts raised, by kind", m.alerts.clone());
        registry.register(
            "critical_results",
            "messages stored with a critical result (alerted at once)",
            m.critical_results.clone(),
        );
        registry.register(
            "consent_held",
            "messages held because the patient's consent is withdrawn or missing",
            m.consent_held.clone(),
        );
        registry.register(
            "alert_active",
            "1 while an alert is active",
            m.alert_active.clone(),
        );
        registry.register(
            "alert_webhook_failures",
            "alerts no webhook took after retries",
            m.webhook_failures.clone(),
        );
        registry.register(
            "operator_actions",
            "operator actions (replay, purge), by action",
            m.operator_actions.clone(),
        );
        registry.register(
            "modbus_polls",
            "Modbus poll cycles started",
            m.modbus_polls.clone(),
        );
        registry.register(
            "modbus_timeouts",
            "Modbus requests with no answer within the timeout",
            m.modbus_timeouts.clone(),
        );
        registry.register(
            "modbus_exceptions",
            "Modbus exception responses, by exception code",
            m.modbus_exceptions.clone(),
        );
        registry.register(
            "modbus_errors",
            "Modbus connect or transport failures and failed stores",
            m.modbus_errors.clone(),
        );
        registry.register(
            "modbus_invalid_values",
            "register values not stored because they were invalid",
            m.modbus_invalid_values.clone(),
        );
        registry.register(
            "modbus_readings_stored",
            "Modbus readings stored",
            m.modbus_readings.clone(),
        );
        registry.register(
            "source_last_received_timestamp_seconds",
            "Unix time of the last frame received",
            m.last_received.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "start time of the process since the Unix epoch, seconds",
            m.process_start_time.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "resident memory size, bytes",
            m.process_resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "open file descriptors",
            m.process_open_fds.clone(),
        );
        registry.register(
            "build_info",
            "always 1; the version is a label",
            m.build_info.clone(),
        );
        m.process_start_time
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
        m.build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        Arc::new(Metrics { registry, ..m })
    }

    /// Prometheus text exposition. Process gauges are read from `/proc/self` first, so they
    /// are as fresh as the scrape (left as they were where `/proc` is missing).
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.process_resident_memory.set(rss);
        }
        if let Some(fds) = open_fds() {
            self.process_open_fds.set(fds);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// `[("source", name)]`.
    pub fn source(name: &str) -> BySource {
        [("source", name.to_owned())]
    }

    /// `[("tenant", id)]`.
    pub fn tenant(id: &str) -> ByTenant {
        [("tenant", id.to_owned())]
    }

    /// `[("tenant", id), (key, value)]`.
    pub fn tenant_and(id: &str, key: &'static str, value: &str) -> Two {
        [("tenant", id.to_owned()), (key, value.to_owned())]
    }

    /// `[("source", name), (key, value)]`.
    pub fn source_and(name: &str, key: &'static str, value: &str) -> BySource2 {
        [("source", name.to_owned()), (key, value.to_owned())]
    }
}

/// `VmRSS` from `/proc/self/status`, in bytes. `/proc/self/statm` counts pages, and the page
/// size needs `sysconf` (unsafe FFI, which the crate forbids); `status` reports kB directly.
fn resident_memory_bytes() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kb: i64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kb * 1024)
}

/// Entries of `/proc/self/fd` (the descriptor `read_dir` itself holds is not counted).
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n).ok().map(|n| (n - 1).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_prefixed_names_and_labels() {
        let m = Metrics::new();
        m.received.get_or_create(&Metrics::source("lab")).inc();
        m.acks
            .get_or_create(&Metrics::source_and("lab", "code", "AA"))
            .inc();
        m.commit_seconds.observe(0.001);
        let text = m.render();
        assert!(
            text.contains("caregate_messages_received_total{source=\"lab\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("caregate_acks_sent_total{source=\"lab\",code=\"AA\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("caregate_queue_commit_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn process_metrics_and_build_info_are_rendered() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "caregate_process_start_time_seconds ",
            "caregate_process_resident_memory_bytes ",
            "caregate_process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing: {text}");
        }
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("caregate_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("caregate_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(
            rss > 1e6,
            "a running test binary has more than 1 MB resident: {rss}"
        );
    }

    #[test]
    fn vm_rss_is_read_in_kilobytes() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nThreads: 3\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_rss("VmRSS: lots\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }
}
