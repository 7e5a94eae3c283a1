//! The configuration file: TOML → `RawConfig` (serde, `deny_unknown_fields`, defaults) →
//! `Config::validate` → typed [`Config`], before any port is bound or file opened.
//!
//! This shape is a contract that later components extend; keep the key names. Each component
//! owns its section's struct (`mllp::Config` for `kind = "mllp"` sources, `queue::Limits` for
//! `[queue]`); this module assembles them and checks what crosses sections (tenant references,
//! duplicate names and ports).
//!
//! Every error names the file, the key (as a dotted path such as `source[2].listen`) and the line,
//! so an operator can go straight to it. Values from the file are not repeated in messages
//! beyond what identifies the key: a config holds no patient data, but may hold secrets paths.
//!
//! Sizes and durations are strings with units: `"8MiB"`, `"512KiB"`, `"30s"`, `"1h 30m"`
//! (humantime). Bare integers with an implied unit are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{astm, files, mllp, modbus, mqtt, queue};

/// The default configuration file, shipped as `config/caregate.toml` and printed by
/// `caregate print-config`.
pub const DEFAULT_TOML: &str = include_str!("../config/caregate.toml");

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/caregate/caregate.toml";

/// A configuration problem, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct Error {
    /// The file that was read.
    pub file: PathBuf,
    /// Dotted key path, e.g. `source[0].listen` (`<file>` for whole-file problems).
    pub key: String,
    /// 1-based line of the key, when it can be located.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for reload and messages).
    pub path: PathBuf,
    /// State directory: the queue database lives here.
    pub data_dir: PathBuf,
    /// Admin HTTP listener (/livez, /readyz, /metrics).
    pub admin: Admin,
    /// Queue limits and retention.
    pub queue: queue::Limits,
    /// How long a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: Duration,
    /// Organizations served by this box.
    pub tenants: Vec<Tenant>,
    /// Where messages come from.
    pub sources: Vec<Source>,
    /// Alert sinks.
    pub alert: crate::alert::Config,
    /// The audit trail.
    pub audit: crate::audit::Config,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// TLS for the listener (required off loopback).
    pub tls: Option<AdminTls>,
    /// Operator API tokens (`[[admin.token]]`); none: the operator API is refused.
    pub tokens: crate::access::Tokens,
}

/// `[admin.tls]`: the admin listener serves TLS 1.3 only.
#[derive(Debug, Clone)]
pub struct AdminTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// CA the CLI trusts to reach this listener (default: the system bundle).
    pub ca: Option<PathBuf>,
}

/// One `[[tenant]]`: an organization whose data never mixes with another's.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Short id used in keys, metrics labels and upstream requests.
    pub id: String,
    /// IANA zone of the facility (HL7 times without an offset are read in it).
    pub timezone: Option<String>,
    /// HL7 assigning authority (CX-4) → identifier system URI.
    pub identifier_systems: BTreeMap<String, String>,
    /// Where this tenant's messages are forwarded (`None`: stored only).
    pub upstream: Option<crate::forward::Config>,
    /// Critical-value rules (`[[tenant.critical]]`), beside the senders' panic flags.
    pub critical: Vec<crate::critical::Rule>,
    /// Consent policy (`consent = "assumed" | "required"`).
    pub consent: crate::consent::Policy,
}

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub struct Source {
    /// Configured name, unique; used in logs, metrics and queue keys.
    pub name: String,
    /// Tenant this source's messages belong to.
    pub tenant: String,
    /// Overrides the tenant's time zone.
    pub timezone: Option<String>,
    /// Kind-specific settings.
    pub kind: SourceKind,
}

/// The closed set of source kinds; `app` has the one `match` that starts them.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// HL7 v2 over MLLP (TCP or TLS).
    Mllp(mllp::Config),
    /// HL7 v2 over MLLP on a serial line (`kind = "mllp-serial"`).
    MllpSerial(mllp::SerialConfig),
    /// ASTM E1381/E1394 from an analyzer: serial (`kind = "astm"`) or TCP (`kind = "astm-tcp"`).
    Astm(astm::Config),
    /// HL7 v2 files dropped in a folder (`kind = "file"`).
    File(files::Config),
    /// Subscriptions on an MQTT broker.
    Mqtt(mqtt::Config),
    /// Modbus TCP or RTU register polling.
    Modbus(modbus::Config),
}

impl SourceKind {
    /// The `kind = "..."` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Mllp(_) => "mllp",
            SourceKind::MllpSerial(_) => "mllp-serial",
            SourceKind::Astm(a) => a.kind(),
            SourceKind::File(_) => "file",
            SourceKind::Mqtt(_) => "mqtt",
            SourceKind::Modbus(_) => "modbus",
        }
    }
}

// === raw (file) form ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    queue: queue::RawLimits,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout: HumanDuration,
    #[serde(default, rename = "tenant")]
    tenants: Vec<RawTenant>,
    #[serde(default, rename = "source")]
    sources: RawSources,
    #[serde(default)]
    alert: crate::alert::RawConfig,
    #[serde(default)]
    audit: crate::audit::RawConfig,
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    #[serde(default)]
    tls: Option<RawAdminTls>,
    #[serde(default, rename = "token")]
    tokens: Vec<RawToken>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: default_admin_listen(),
            tls: None,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    hash_file: Option<PathBuf>,
    #[serde(default)]
    hash: Option<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9100".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    timezone: Option<String>,
    #[serde(default)]
    identifier_systems: BTreeMap<String, String>,
    upstream: Option<crate::forward::RawConfig>,
    #[serde(default)]
    critical: Vec<crate::critical::RawRule>,
    #[serde(default)]
    consent: crate::consent::Policy,
}

#[derive(Debug)]
enum RawSource {
    Mllp(mllp::RawConfig),
    MllpSerial(mllp::RawSerialConfig),
    AstmSerial(astm::RawSerialConfig),
    AstmTcp(astm::RawTcpConfig),
    File(files::RawConfig),
    Mqtt(mqtt::RawConfig),
    Modbus(modbus::RawConfig),
}

impl RawSource {
    /// (name, tenant, timezone), common to every kind.
    fn common(&self) -> (String, String, Option<String>) {
        let (n, t, z) = match self {
            RawSource::Mllp(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::MllpSerial(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::AstmSerial(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::AstmTcp(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::File(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::Mqtt(c) => (&c.name, &c.tenant, &c.timezone),
            RawSource::Modbus(c) => (&c.name, &c.tenant, &c.timezone),
        };
        (n.clone(), t.clone(), z.clone())
    }
}

/// The source kinds this build knows, as written in `kind = "..."`.
pub const SOURCE_KINDS: &[&str] = &[
    "mllp",
    "mllp-serial",
    "astm",
    "astm-tcp",
    "file",
    "mqtt",
    "modbus",
];

// `[[source]]` is a tagged union, but serde's internally tagged enums buffer the table and lose
// the spans that give precise line numbers. So the file is read twice: a first pass collects
// each source's `kind`, the second deserializes each source straight into its kind's struct
// (spans intact), choosing the struct by position from this list.
thread_local! {
    static SOURCE_KIND_PLAN: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Deserialize)]
struct KindProbe {
    #[serde(default, rename = "source")]
    sources: Vec<ProbeSource>,
}

#[derive(Deserialize)]
struct ProbeSource {
    kind: Option<toml::Spanned<String>>,
}

#[derive(Debug, Default)]
struct RawSources(Vec<RawSource>);

impl<'de> Deserialize<'de> for RawSources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSources;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of [[source]] tables")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawSources, A::Error> {
                let plan = SOURCE_KIND_PLAN.with(|p| p.borrow().clone());
                let mut out = Vec::new();
                loop {
                    let kind = plan.get(out.len()).map(String::as_str).unwrap_or("mllp");
                    let next = match kind {
                        "mllp" => seq.next_element::<mllp::RawConfig>()?.map(RawSource::Mllp),
                        "mllp-serial" => seq
                            .next_element::<mllp::RawSerialConfig>()?
                            .map(RawSource::MllpSerial),
                        "astm" => seq
                            .next_element::<astm::RawSerialConfig>()?
                            .map(RawSource::AstmSerial),
                        "astm-tcp" => seq
                            .next_element::<astm::RawTcpConfig>()?
                            .map(RawSource::AstmTcp),
                        "file" => seq.next_element::<files::RawConfig>()?.map(RawSource::File),
                        "mqtt" => seq.next_element::<mqtt::RawConfig>()?.map(RawSource::Mqtt),
                        "modbus" => seq
                            .next_element::<modbus::RawConfig>()?
                            .map(RawSource::Modbus),
                        other => {
                            return Err(serde::de::Error::unknown_variant(other, SOURCE_KINDS));
                        }
                    };
                    match next {
                        Some(s) => out.push(s),
                        None => return Ok(RawSources(out)),
                    }
                }
            }
        }
        d.deserialize_seq(V)
    }
}

/// A size with a unit: `"8MiB"`, `"512 KiB"`, `"1GB"`, `"100B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ByteSize::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl ByteSize {
    /// Parses `<number><unit>` with units B, KB, MB, GB (10^3) and KiB, MiB, GiB (2^10).
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("size {s:?} needs a unit (B, KiB, MiB, GiB, KB, MB, GB)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?} does not start with a whole number"))?;
        let mult: u64 = match unit.trim() {
            "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

/// A duration with units, humantime syntax: `"30s"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "duration {s:?}: {e} (use units: \"30s\", \"5m\", \"1h\")"
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {s:?} is longer than 100 years"
            )));
        }
        Ok(HumanDuration(d))
    }
}

/// Longest duration any setting takes (100 years: `audit.retain` is the longest real one).
/// Bounding them all here keeps every `Instant + setting` in the daemon far from overflow: a
/// humantime value such as `"300000000000y"` parses, and would panic the task that adds it.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

// === loading ===

impl Config {
    /// Reads and validates a file. Opens nothing but the file itself.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error {
            file: path.to_owned(),
            key: "<file>".to_owned(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::from_toml(path, &text)
    }

    /// Parses and validates configuration text; `path` is used for messages and relative paths.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, Error> {
        let serde_error = |e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start));
            let key =
                key_at(text, e.span().map(|s| s.start)).unwrap_or_else(|| "<file>".to_owned());
            Error {
                file: path.to_owned(),
                key,
                line,
                message: e.message().trim().to_owned(),
            }
        };
        let probe: KindProbe = toml::from_str(text).map_err(serde_error)?;
        let mut plan = Vec::with_capacity(probe.sources.len());
        for (i, s) in probe.sources.into_iter().enumerate() {
            let key = format!("source[{i}].kind");
            match s.kind {
                None => {
                    return Err(Error {
                        file: path.to_owned(),
                        line: locate(text, &format!("source[{i}]")),
                        key,
                        message: format!("missing; one of {}", SOURCE_KINDS.join(", ")),
                    });
                }
                Some(k) if !SOURCE_KINDS.contains(&k.get_ref().as_str()) => {
                    return Err(Error {
                        file: path.to_owned(),
                        line: Some(line_of(text, k.span().start)),
                        key,
                        message: format!("unknown source kind; one of {}", SOURCE_KINDS.join(", ")),
                    });
                }
                Some(k) => plan.push(k.into_inner()),
            }
        }
        SOURCE_KIND_PLAN.with(|p| *p.borrow_mut() = plan);
        let raw: Result<RawConfig, _> = toml::from_str(text);
        SOURCE_KIND_PLAN.with(|p| p.borrow_mut().clear());
        let raw = raw.map_err(serde_error)?;
        let mut problems = Vec::new();
        let config = validate(path, raw, &mut problems);
        match problems.into_iter().next() {
            None => config.ok_or_else(|| Error {
                file: path.to_owned(),
                key: "<file>".to_owned(),
                line: None,
                message: "invalid configuration".to_owned(),
            }),
            Some((key, message)) => Err(Error {
                file: path.to_owned(),
                line: locate(text, &key),
                key,
                message,
            }),
        }
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }
}

/// Cross-field validation. Problems are `(dotted key, message)`; the first one is reported.
fn validate(path: &Path, raw: RawConfig, problems: &mut Vec<(String, String)>) -> Option<Config> {
    let base = path.parent().unwrap_or(Path::new("."));
    let admin_listen = match raw.admin.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push((
                "admin.listen".into(),
                "not a socket address (expected e.g. \"127.0.0.1:9100\")".into(),
            ));
            None
        }
    };
    let queue = match raw.queue.validate() {
        Ok(q) => Some(q),
        Err((k, m)) => {
            problems.push((format!("queue.{k}"), m));
            None
        }
    };
    if raw.shutdown_timeout.0.is_zero() {
        problems.push((
            "shutdown_timeout".into(),
            "must be greater than zero".into(),
        ));
    }

    let mut tenants = Vec::new();
    let mut tenant_ids = BTreeSet::new();
    if raw.tenants.is_empty() {
        problems.push((
            "tenant".into(),
            "at least one [[tenant]] is required".into(),
        ));
    }
    for (i, t) in raw.tenants.into_iter().enumerate() {
        if !valid_id(&t.id) {
            problems.push((
                format!("tenant[{i}].id"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_'".into(),
            ));
        }
        if !tenant_ids.insert(t.id.clone()) {
            problems.push((format!("tenant[{i}].id"), "duplicate tenant id".into()));
        }
        if let Some(tz) = &t.timezone {
            if jiff::tz::TimeZone::get(tz).is_err() {
                problems.push((
                    format!("tenant[{i}].timezone"),
                    "unknown IANA time zone".into(),
                ));
            }
        }
        let upstream = match t.upstream.map(|u| u.validate(base)).transpose() {
            Ok(u) => u,
            Err((k, m)) => {
                problems.push((format!("tenant[{i}].upstream.{k}"), m));
                None
            }
        };
        let mut critical = Vec::new();
        for (j, r) in t.critical.into_iter().enumerate() {
            match r.validate() {
                Ok(r) => critical.push(r),
                Err((k, m)) => problems.push((format!("tenant[{i}].critical[{j}].{k}"), m)),
            }
        }
        tenants.push(Tenant {
            id: t.id,
            timezone: t.timezone,
            identifier_systems: t.identifier_systems,
            upstream,
            critical,
            consent: t.consent,
        });
    }

    let mut sources = Vec::new();
    let mut names = BTreeSet::new();
    let mut listens: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut ports: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut dirs: BTreeMap<PathBuf, usize> = BTreeMap::new();
    // Raw index of each validated modbus source, for cross-source error keys.
    let mut modbus_index = Vec::new();
    for (i, s) in raw.sources.0.into_iter().enumerate() {
        let (name, tenant, timezone) = s.common();
        if !valid_id(&name) {
            problems.push((
                format!("source[{i}].name"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_'".into(),
            ));
        }
        if !names.insert(name.clone()) {
            problems.push((format!("source[{i}].name"), "duplicate source name".into()));
        }
        if !tenant_ids.contains(&tenant) {
            problems.push((
                format!("source[{i}].tenant"),
                "names no [[tenant]] id of this file".into(),
            ));
        }
        if let Some(tz) = &timezone {
            if jiff::tz::TimeZone::get(tz).is_err() {
                problems.push((
                    format!("source[{i}].timezone"),
                    "unknown IANA time zone".into(),
                ));
            }
        }
        let tenant_tz = tenants
            .iter()
            .find(|t| t.id == tenant)
            .and_then(|t| t.timezone.clone());
        let kind = match s {
            RawSource::Mllp(m) => m.validate(base).map(SourceKind::Mllp),
            RawSource::MllpSerial(m) => m.validate(base).map(SourceKind::MllpSerial),
            RawSource::AstmSerial(a) => a.validate().map(SourceKind::Astm),
            RawSource::AstmTcp(a) => a.validate().map(SourceKind::Astm),
            RawSource::File(f) => f.validate(base, tenant_tz.as_deref()).map(SourceKind::File),
            RawSource::Mqtt(m) => m.validate(base).map(SourceKind::Mqtt),
            RawSource::Modbus(m) => m.validate().map(SourceKind::Modbus),
        };
        let kind = match kind {
            Ok(k) => k,
            Err((k, msg)) => {
                problems.push((format!("source[{i}].{k}"), msg));
                continue;
            }
        };
        let listen = match &kind {
            SourceKind::Mllp(m) => Some(m.listen),
            SourceKind::Astm(astm::Config {
                transport: astm::Transport::Listen(a),
                ..
            }) => Some(*a),
            _ => None,
        };
        // Port 0 (tests: "any free port") never collides.
        if let Some(prev) = listen
            .filter(|l| l.port() != 0)
            .and_then(|l| listens.insert(l, i))
        {
            problems.push((
                format!("source[{i}].listen"),
                format!("same address as source[{prev}]"),
            ));
        }
        let port = match &kind {
            SourceKind::MllpSerial(m) => Some(&m.line.port),
            SourceKind::Astm(astm::Config {
                transport: astm::Transport::Serial(l),
                ..
            }) => Some(&l.port),
            _ => None,
        };
        if let Some(prev) = port.and_then(|p| ports.insert(p.clone(), i)) {
            problems.push((
                format!("source[{i}].port"),
                format!("same serial port as source[{prev}]"),
            ));
        }
        if let SourceKind::File(f) = &kind {
            if let Some(prev) = dirs.insert(f.dir.clone(), i) {
                problems.push((
                    format!("source[{i}].dir"),
                    format!("same folder as source[{prev}]"),
                ));
            }
        }
        if matches!(kind, SourceKind::Modbus(_)) {
            modbus_index.push(i);
        }
        sources.push(Source {
            name,
            tenant,
            timezone,
            kind,
        });
    }
    // Sources sharing an RTU bus must agree on its line settings and use distinct unit ids.
    let modbus_sources: Vec<(usize, &modbus::Config)> = modbus_index
        .into_iter()
        .zip(sources.iter().filter_map(|s| match &s.kind {
            SourceKind::Modbus(m) => Some(m),
            _ => None,
        }))
        .collect();
    if let Some((i, k, msg)) = modbus::check_buses(&modbus_sources) {
        problems.push((format!("source[{i}].{k}"), msg));
    }
    if let Some(a) = admin_listen {
        if let Some(i) = listens.get(&a) {
            problems.push((
                "admin.listen".into(),
                format!("same address as source[{i}]"),
            ));
        }
    }
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && raw.admin.tls.is_none() {
            problems.push((
                "admin.listen".into(),
                "admin API off loopback requires [admin.tls]".into(),
            ));
        }
    }
    let admin_tls = raw.admin.tls.map(|t| AdminTls {
        cert: resolve(base, &t.cert),
        key: resolve(base, &t.key),
        ca: t.ca.map(|c| resolve(base, &c)),
    });
    let tokens = validate_tokens(base, raw.admin.tokens, &tenant_ids, problems);
    let alert = match raw.alert.validate(base) {
        Ok(a) => a,
        Err((k, m)) => {
            problems.push((format!("alert.{k}"), m));
            crate::alert::Config::default()
        }
    };
    let data_dir = if raw.data_dir.is_absolute() {
        raw.data_dir
    } else {
        base.join(raw.data_dir)
    };
    let audit = match raw.audit.validate(&data_dir, base) {
        Ok(a) => a,
        Err((k, m)) => {
            problems.push((format!("audit.{k}"), m));
            crate::audit::Config::new(&data_dir)
        }
    };
    Some(Config {
        alert,
        audit,
        path: path.to_owned(),
        data_dir,
        admin: Admin {
            listen: admin_listen?,
            tls: admin_tls,
            tokens,
        },
        queue: queue?,
        shutdown_timeout: raw.shutdown_timeout.0,
        tenants,
        sources,
    })
}

/// `[[admin.token]]`: names unique, role known, tenant exactly for the tenant roles, one of
/// `hash` / `hash_file` holding 64 hex digits (the SHA-256 of the token, never the token).
fn validate_tokens(
    base: &Path,
    raw: Vec<RawToken>,
    tenant_ids: &BTreeSet<String>,
    problems: &mut Vec<(String, String)>,
) -> crate::access::Tokens {
    use crate::access::{Role, Token, parse_hash};
    let mut tokens = Vec::new();
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, t) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("admin.token[{i}].{k}");
        if !valid_id(&t.name) {
            problems.push((
                key("name"),
                "must be 1-64 characters of a-z, 0-9, '-' or '_'".into(),
            ));
        }
        if !names.insert(t.name.clone()) {
            problems.push((key("name"), "duplicate token name".into()));
        }
        let Some(role) = Role::parse(&t.role) else {
            problems.push((
                key("role"),
                "one of system-admin, org-admin, auditor".into(),
            ));
            continue;
        };
        match (role, &t.tenant) {
            (Role::SystemAdmin, Some(_)) => problems.push((
                key("tenant"),
                "not allowed for role system-admin (it covers every tenant)".into(),
            )),
            (Role::OrgAdmin | Role::Auditor, None) => {
                problems.push((key("role"), format!("role {role} requires a tenant")))
            }
            (_, Some(id)) if !tenant_ids.contains(id) => {
                problems.push((key("tenant"), "names no [[tenant]] id of this file".into()))
            }
            _ => {}
        }
        let text = match (&t.hash, &t.hash_file) {
            (Some(h), None) => Some((key("hash"), h.clone())),
            (None, Some(f)) => match std::fs::read_to_string(resolve(base, f)) {
                Ok(h) => Some((key("hash_file"), h)),
                Err(e) => {
                    problems.push((key("hash_file"), format!("cannot read: {e}")));
                    None
                }
            },
            (Some(_), Some(_)) => {
                problems.push((key("hash"), "set hash or hash_file, not both".into()));
                None
            }
            (None, None) => {
                problems.push((
                    format!("admin.token[{i}]"),
                    "needs hash_file (or hash): the token's SHA-256 (caregate token new)".into(),
                ));
                None
            }
        };
        let Some((k, text)) = text else { continue };
        let Some(hash) = parse_hash(&text) else {
            problems.push((
                k,
                "must be the SHA-256 of the token as 64 hex digits (caregate token new)".into(),
            ));
            continue;
        };
        if !hashes.insert(hash) {
            problems.push((k, "same token as another [[admin.token]]".into()));
        }
        tokens.push(Token {
            name: t.name,
            role,
            tenant: t.tenant,
            hash,
        });
    }
    crate::access::Tokens(tokens)
}

/// Ids used in keys, labels and URLs: short, lowercase, no separators of our key layout.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Resolves a config-relative path (relative paths are relative to the config file's folder).
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

// === locating keys in the text ===

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line of a dotted key path like `source[1].tls.cert` by walking the parsed document
/// with spans. Falls back to the nearest enclosing table that exists.
fn locate(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut best: Option<usize> = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let (k, v) = table.get_key_value(name)?;
        best = Some(k.span().start);
        let mut value = v;
        if let Some(i) = index {
            match value.get_ref() {
                toml::de::DeValue::Array(items) => {
                    value = items.get(i)?;
                    best = Some(value.span().start);
                }
                _ => break,
            }
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    best.map(|o| line_of(text, o))
}

/// For serde errors: the dotted path of the innermost key whose key or value span contains
/// `offset` (depth-first: `[source.tls]` tables sit far from their `[[source]]` header).
fn key_at(text: &str, offset: Option<usize>) -> Option<String> {
    fn contains(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    fn search(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
        for (k, v) in table.iter() {
            let name = k.get_ref().to_string();
            match v.get_ref() {
                toml::de::DeValue::Table(t) => {
                    if let Some(inner) = search(t, offset) {
                        return Some(format!("{name}.{inner}"));
                    }
                }
                toml::de::DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            if let Some(inner) = search(t, offset) {
                                return Some(format!("{name}[{i}].{inner}"));
                            }
                            if contains(item.span(), offset) {
                                return Some(format!("{name}[{i}]"));
                            }
                        }
                    }
                }
                _ => {}
            }
            if contains(k.span(), offset) || contains(v.span(), offset) {
                return Some(name);
            }
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    search(doc.get_ref(), offset?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(text: &str) -> Result<Config, Error> {
        Config::from_toml(Path::new("/etc/caregate/test.toml"), text)
    }

    const MINIMAL: &str = r#"
data_dir = "/var/lib/caregate"
[[tenant]]
id = "north"
[[source]]
name = "lab-lis"
tenant = "north"
kind = "mllp"
listen = "127.0.0.1:2575"
"#;

    #[test]
    fn minimal_config_validates_with_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.sources.len(), 1);
        let SourceKind::Mllp(m) = &c.sources[0].kind else {
            panic!("an mllp source")
        };
        assert_eq!(m.max_frame, 8 * 1024 * 1024);
    }

    #[test]
    fn shipped_default_config_validates() {
        load(DEFAULT_TOML).unwrap();
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:2575\"",
            "listen = \"127.0.0.1:2575\"\nlisten_port = 3",
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("listen_port"), "{e}");
        assert!(
            e.to_string().starts_with("/etc/caregate/test.toml:10: "),
            "{e}"
        );
    }

    #[test]
    fn unknown_tenant_reference_names_key_and_line() {
        let text = MINIMAL.replace("tenant = \"north\"", "tenant = \"south\"");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key, "source[0].tenant");
        assert_eq!(e.line, Some(7));
    }

    #[test]
    fn bad_listen_address_names_key_and_line() {
        let text = MINIMAL.replace("127.0.0.1:2575", "localhost");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key, "source[0].listen");
        assert_eq!(e.line, Some(9));
    }

    #[test]
    fn durations_past_a_century_are_refused_with_key_and_line() {
        // Parsed by humantime, they used to reach `Instant + d` and panic the task using them.
        let text = MINIMAL.replace(
            "data_dir = \"/var/lib/caregate\"",
            "data_dir = \"/var/lib/caregate\"\nshutdown_timeout = \"300000000000y\"",
        );
        let e = load(&text).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("shutdown_timeout", Some(3)),
            "{e}"
        );
        assert!(e.message.contains("longer than 100 years"), "{e}");
        let ok = text.replace("300000000000y", "100y");
        assert_eq!(load(&ok).unwrap().shutdown_timeout, MAX_DURATION);
    }

    #[test]
    fn bare_integer_size_is_refused() {
        let text = format!("{MINIMAL}max_frame = 1000\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn size_units_parse() {
        assert_eq!(ByteSize::parse("8MiB").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("512 KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("2GB").unwrap().0, 2_000_000_000);
        assert!(ByteSize::parse("12").is_err());
        assert!(ByteSize::parse("1XB").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
    }

    #[test]
    fn duplicate_source_names_and_ports_are_refused() {
        let text = format!(
            "{MINIMAL}[[source]]\nname = \"lab-lis\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:2576\"\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.key, "source[1].name");
        assert_eq!(e.line, Some(11));
        let text = format!(
            "{MINIMAL}[[source]]\nname = \"lab-2\"\ntenant = \"north\"\nkind = \"mllp\"\nlisten = \"127.0.0.1:2575\"\n"
        );
        assert_eq!(load(&text).unwrap_err().key, "source[1].listen");
    }

    #[test]
    fn unknown_or_missing_source_kind_is_refused_with_its_line() {
        let e = load(&MINIMAL.replace("kind = \"mllp\"", "kind = \"smtp\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("source[0].kind", Some(8)), "{e}");
        let e = load(&MINIMAL.replace("kind = \"mllp\"\n", "")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("source[0].kind", Some(5)), "{e}");
    }

    #[test]
    fn wrong_type_in_a_nested_table_names_its_line() {
        let text = format!("{MINIMAL}[source.tls]\ncert = 5\nkey = \"k\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.key.contains("tls"), "{e}");
    }

    #[test]
    fn mqtt_source_validates_and_names_its_keys() {
        let text = format!(
            "{MINIMAL}[[source]]\nname = \"icu\"\ntenant = \"north\"\nkind = \"mqtt\"\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [{{ filter = \"icu/+/vitals\", qos = 1 }}]\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(c.sources[1].kind.as_str(), "mqtt");
        let e = load(&text.replace("mqtt://127.0.0.1:1883", "http://x")).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("source[1].broker", Some(14)),
            "{e}"
        );
        let e = load(&format!("{text}bogus = 1\n")).unwrap_err();
        assert_eq!(e.line, Some(16), "{e}");
        let e = load(&text.replace("\"lab-lis\"", "\"icu\"")).unwrap_err();
        assert_eq!(e.key, "source[1].name");
    }

    #[test]
    fn unknown_timezone_is_refused() {
        let text = MINIMAL.replace(
            "id = \"north\"",
            "id = \"north\"\ntimezone = \"Mars/Olympus\"",
        );
        assert_eq!(load(&text).unwrap_err().key, "tenant[0].timezone");
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn admin_off_loopback_requires_tls() {
        let text = format!("{MINIMAL}[admin]\nlisten = \"0.0.0.0:9100\"\n");
        let e = load(&text).unwrap_err();
        assert_eq!(e.key, "admin.listen", "{e}");
        assert!(e.message.contains("requires [admin.tls]"), "{e}");
        let text = format!(
            "{MINIMAL}[admin]\nlisten = \"0.0.0.0:9100\"\ntls = {{ cert = \"a.pem\", key = \"a.key\" }}\n"
        );
        let c = load(&text).unwrap();
        assert_eq!(
            c.admin.tls.unwrap().cert,
            Path::new("/etc/caregate/a.pem"),
            "relative to the config file"
        );
    }

    #[test]
    fn admin_tokens_validate_role_tenant_and_hash_with_their_keys() {
        let token = |body: &str| format!("{MINIMAL}[admin]\n[[admin.token]]\n{body}\n");
        let ok = load(&token(&format!(
            "name = \"alice\"\nrole = \"org-admin\"\ntenant = \"north\"\nhash = \"{HASH}\""
        )))
        .unwrap();
        assert_eq!(ok.admin.tokens.0.len(), 1);
        assert_eq!(ok.admin.tokens.0[0].role, crate::access::Role::OrgAdmin);
        let cases = [
            (
                format!("name = \"alice\"\nrole = \"org-admin\"\nhash = \"{HASH}\""),
                "admin.token[0].role",
                "requires a tenant",
            ),
            (
                format!("name = \"a\"\nrole = \"auditor\"\nhash = \"{HASH}\""),
                "admin.token[0].role",
                "requires a tenant",
            ),
            (
                format!(
                    "name = \"root\"\nrole = \"system-admin\"\ntenant = \"north\"\nhash = \"{HASH}\""
                ),
                "admin.token[0].tenant",
                "not allowed",
            ),
            (
                format!(
                    "name = \"a\"\nrole = \"org-admin\"\ntenant = \"south\"\nhash = \"{HASH}\""
                ),
                "admin.token[0].tenant",
                "no [[tenant]]",
            ),
            (
                format!("name = \"a\"\nrole = \"boss\"\nhash = \"{HASH}\""),
                "admin.token[0].role",
                "one of",
            ),
            (
                "name = \"a\"\nrole = \"system-admin\"\nhash = \"s3cret\"".to_owned(),
                "admin.token[0].hash",
                "64 hex digits",
            ),
            (
                "name = \"a\"\nrole = \"system-admin\"".to_owned(),
                "admin.token[0]",
                "needs hash_file",
            ),
            (
                "name = \"a\"\nrole = \"system-admin\"\nhash_file = \"/nonexistent/a.sha256\""
                    .to_owned(),
                "admin.token[0].hash_file",
                "cannot read",
            ),
        ];
        for (body, key, msg) in cases {
            let e = load(&token(&body)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(msg), "{e}");
            assert!(e.line.is_some(), "{e}");
        }
    }
}
