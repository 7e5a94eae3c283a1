//! The Modbus source (`kind = "modbus"`, protocols.md §8): polls a device's registers over Modbus
//! TCP or RTU and stores each value as a device [`Reading`](crate::reading::Reading).
//!
//! What it promises:
//! - A reading counts as taken only once `queue.push_all` returned (the commit fsynced). The
//!   deadband's "last stored value" moves only then, so a failed commit never hides a change.
//! - One request at a time per device, and per RS-485 bus: sources that name the same serial
//!   `port` share one bus task that polls them in turn (§8.2: never two outstanding requests).
//!   Every TCP device has its own task, so a silent device never delays another one.
//! - Every request runs under the source's `timeout` (tokio-modbus has none of its own); after a
//!   timeout or an I/O error the connection (or serial port) is dropped and opened afresh, so a
//!   late answer is never taken for the next one. A failing device is retried with exponential
//!   backoff ([`decode::backoff`]).
//! - A Modbus exception (§8.1) is logged with its code and counted; the device counts as alive
//!   and its other registers are still read. Nothing a device sends can panic the poller.
//! - Each stored reading has `meta.control_id = "<register>@<µs>"` and `meta.sender` = the
//!   device id, so a re-poll at the same instant is de-duplicated by the queue.
//!
//! Layers: [`decode`] is pure (words → exact decimals, deadband, backoff); [`poller`] owns
//! connections, the schedule and the queue pushes; [`probe`] is `caregate probe modbus`.

pub mod decode;
pub mod poller;
pub mod probe;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

pub use decode::{Decimal, Type, WordOrder};
pub use poller::Bus;

use crate::config::HumanDuration;
use crate::reading::IdentifierRef;

/// Validated settings of one `kind = "modbus"` source (one device).
#[derive(Debug, Clone)]
pub struct Config {
    /// How the device is reached.
    pub transport: Transport,
    /// Unit (slave) id.
    pub unit_id: u8,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Device identifier stored in every reading.
    pub device_id: String,
    /// Identifier system of `device_id`.
    pub device_system: Option<String>,
    /// Patient the device is bound to.
    pub patient: Option<IdentifierRef>,
    /// Location the device is bound to.
    pub location: Option<String>,
    /// The registers polled, in order.
    pub registers: Vec<Register>,
}

/// TCP or RTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP to this address.
    Tcp(SocketAddr),
    /// Modbus RTU over a serial line.
    Rtu(Serial),
}

impl Transport {
    /// The address or port path, for logs and the envelope's `peer`.
    pub fn peer(&self) -> String {
        match self {
            Transport::Tcp(a) => a.to_string(),
            Transport::Rtu(s) => s.port.clone(),
        }
    }
}

/// Serial line settings of an RTU source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serial {
    /// Device path, e.g. `/dev/serial/by-id/...`.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (8N1 is common in the field).
    None,
    /// Even parity: the Modbus serial-line default.
    Even,
    /// Odd parity.
    Odd,
}

/// The four readable tables (function codes 1–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// 0x01 Read Coils.
    Coils = 1,
    /// 0x02 Read Discrete Inputs.
    DiscreteInputs = 2,
    /// 0x03 Read Holding Registers.
    Holding = 3,
    /// 0x04 Read Input Registers.
    Input = 4,
}

impl Function {
    /// From the function code.
    pub fn from_code(code: u8) -> Option<Function> {
        Some(match code {
            1 => Function::Coils,
            2 => Function::DiscreteInputs,
            3 => Function::Holding,
            4 => Function::Input,
            _ => return None,
        })
    }

    /// Whether this table holds bits (coils, discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Function::Coils | Function::DiscreteInputs)
    }
}

/// One `[[source.register]]`: a point read every poll.
#[derive(Debug, Clone)]
pub struct Register {
    /// Unique within the source; in logs and control ids.
    pub name: String,
    /// Which table.
    pub function: Function,
    /// 0-based PDU address.
    pub address: u16,
    /// How the words are read.
    pub ty: Type,
    /// For 32-bit types.
    pub word_order: WordOrder,
    /// Multiplier.
    pub scale: Option<Decimal>,
    /// Added after scaling.
    pub offset: Option<Decimal>,
    /// Observation code.
    pub code: String,
    /// Code system.
    pub system: Option<String>,
    /// UCUM unit.
    pub unit: Option<String>,
    /// Store only changes larger than this.
    pub deadband: Option<Decimal>,
    /// Store at least this often even without change.
    pub max_silence: Duration,
}

// === raw (file) form ===

/// File form of a `kind = "modbus"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[allow(
        dead_code,
        reason = "read by config's first pass; allowed here so deny_unknown_fields accepts it"
    )]
    kind: String,
    pub(crate) name: String,
    pub(crate) tenant: String,
    pub(crate) timezone: Option<String>,
    address: Option<String>,
    port: Option<String>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    unit_id: Option<u16>,
    poll_interval: Option<HumanDuration>,
    timeout: Option<HumanDuration>,
    max_silence: Option<HumanDuration>,
    device_id: String,
    device_system: Option<String>,
    patient: Option<RawPatient>,
    location: Option<String>,
    #[serde(default, rename = "register")]
    registers: Vec<RawRegister>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatient {
    system: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    name: String,
    function: u8,
    address: u16,
    #[serde(rename = "type")]
    ty: String,
    word_order: Option<String>,
    scale: Option<Number>,
    offset: Option<Number>,
    code: String,
    system: Option<String>,
    unit: Option<String>,
    deadband: Option<Number>,
    max_silence: Option<HumanDuration>,
}

/// A number written as a TOML integer, float or decimal string (`"0.1"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Number {
    fn decimal(&self) -> Option<Decimal> {
        match self {
            Number::Int(i) => Some(Decimal::from_int(*i)),
            Number::Float(f) => Decimal::from_f64(*f),
            Number::Text(s) => Decimal::parse(s.trim()),
        }
    }
}

/// Defaults.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default answer timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default longest gap between stored readings of a register with a deadband.
pub const DEFAULT_MAX_SILENCE: Duration = Duration::from_secs(300);

type Problem = (String, String);

fn problem(key: impl Into<String>, msg: impl Into<String>) -> Problem {
    (key.into(), msg.into())
}

impl RawConfig {
    /// Validates; errors are `(key relative to the source, message)`.
    pub(crate) fn validate(self) -> Result<Config, Problem> {
        let transport = match (&self.address, &self.port) {
            (Some(_), Some(_)) => {
                return Err(problem(
                    "port",
                    "set either address (Modbus TCP) or port (RTU), not both",
                ));
            }
            (None, None) => {
                return Err(problem(
                    "address",
                    "missing: set address = \"HOST:PORT\" (Modbus TCP) or port = \"/dev/...\" (RTU)",
                ));
            }
            (Some(a), None) => {
                for (key, set) in [
                    ("baud", self.baud.is_some()),
                    ("parity", self.parity.is_some()),
                    ("data_bits", self.data_bits.is_some()),
                    ("stop_bits", self.stop_bits.is_some()),
                ] {
                    if set {
                        return Err(problem(key, "only for RTU sources (with port)"));
                    }
                }
                Transport::Tcp(a.parse::<SocketAddr>().map_err(|_| {
                    problem(
                        "address",
                        "not a socket address (expected e.g. \"10.0.0.5:502\")",
                    )
                })?)
            }
            (None, Some(p)) => {
                if p.trim().is_empty() {
                    return Err(problem("port", "must not be empty"));
                }
                let baud = self.baud.unwrap_or(19_200);
                if !(300..=4_000_000).contains(&baud) {
                    return Err(problem("baud", "must be between 300 and 4000000"));
                }
                let data_bits = self.data_bits.unwrap_or(8);
                if !(7..=8).contains(&data_bits) {
                    return Err(problem("data_bits", "must be 7 or 8"));
                }
                let stop_bits = self.stop_bits.unwrap_or(1);
                if !(1..=2).contains(&stop_bits) {
                    return Err(problem("stop_bits", "must be 1 or 2"));
                }
                Transport::Rtu(Serial {
                    port: p.clone(),
                    baud,
                    parity: self.parity.unwrap_or(Parity::Even),
                    data_bits,
                    stop_bits,
                })
            }
        };
        let unit_id = self
            .unit_id
            .ok_or_else(|| problem("unit_id", "missing (the device's Modbus unit id)"))?;
        let unit_range = match transport {
            Transport::Tcp(_) => 0..=255,
            Transport::Rtu(_) => 1..=247,
        };
        if !unit_range.contains(&unit_id) {
            return Err(problem(
                "unit_id",
                match transport {
                    Transport::Tcp(_) => "must be between 0 and 255",
                    Transport::Rtu(_) => "must be between 1 and 247 on a serial line",
                },
            ));
        }
        let poll_interval = self.poll_interval.map_or(DEFAULT_POLL_INTERVAL, |d| d.0);
        if poll_interval.is_zero() {
            return Err(problem("poll_interval", "must be greater than zero"));
        }
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            return Err(problem("timeout", "must be greater than zero"));
        }
        let max_silence = self.max_silence.map_or(DEFAULT_MAX_SILENCE, |d| d.0);
        if max_silence.is_zero() {
            return Err(problem("max_silence", "must be greater than zero"));
        }
        if self.device_id.trim().is_empty() {
            return Err(problem("device_id", "must not be empty"));
        }
        let patient = match self.patient {
            Some(p) if p.system.trim().is_empty() => {
                return Err(problem("patient.system", "must not be empty"));
            }
            Some(p) if p.value.trim().is_empty() => {
                return Err(problem("patient.value", "must not be empty"));
            }
            Some(p) => Some(IdentifierRef {
                system: p.system,
                value: p.value,
            }),
            None => None,
        };
        if self.registers.is_empty() {
            return Err(problem(
                "register",
                "at least one [[source.register]] is required",
            ));
        }
        let mut names = BTreeSet::new();
        let mut registers = Vec::with_capacity(self.registers.len());
        for (i, r) in self.registers.into_iter().enumerate() {
            let key = |k: &str| format!("register[{i}].{k}");
            if !valid_name(&r.name) {
                return Err(problem(
                    key("name"),
                    "must be 1-64 characters of a-z, 0-9, '-' or '_'",
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err(problem(key("name"), "duplicate register name"));
            }
            let function = Function::from_code(r.function).ok_or_else(|| {
                problem(
                    key("function"),
                    "must be 1 (coils), 2 (discrete inputs), 3 (holding) or 4 (input registers)",
                )
            })?;
            let ty = Type::parse(&r.ty).ok_or_else(|| {
                problem(key("type"), "must be one of u16, i16, u32, i32, f32, bool")
            })?;
            if function.is_bits() != (ty == Type::Bool) {
                return Err(problem(
                    key("type"),
                    if function.is_bits() {
                        "coils and discrete inputs (function 1, 2) are read as type = \"bool\""
                    } else {
                        "bool is only for coils and discrete inputs (function 1, 2)"
                    },
                ));
            }
            if u32::from(r.address) + u32::from(ty.count()) > 65_536 {
                return Err(problem(key("address"), "the value runs past address 65535"));
            }
            let word_order = match &r.word_order {
                None => WordOrder::Big,
                Some(_) if !ty.is_wide() => {
                    return Err(problem(
                        key("word_order"),
                        "only for 32-bit types (u32, i32, f32)",
                    ));
                }
                Some(w) => WordOrder::parse(w)
                    .ok_or_else(|| problem(key("word_order"), "must be \"big\" or \"little\""))?,
            };
            let decimal = |n: &Option<Number>, k: &str| -> Result<Option<Decimal>, Problem> {
                n.as_ref()
                    .map(|n| {
                        n.decimal()
                            .ok_or_else(|| problem(key(k), "not a plain decimal number"))
                    })
                    .transpose()
            };
            let scale = decimal(&r.scale, "scale")?;
            let offset = decimal(&r.offset, "offset")?;
            let deadband = decimal(&r.deadband, "deadband")?;
            if ty == Type::Bool && (scale.is_some() || offset.is_some()) {
                return Err(problem(
                    key(if scale.is_some() { "scale" } else { "offset" }),
                    "not for bool registers",
                ));
            }
            if deadband.is_some_and(Decimal::is_negative) {
                return Err(problem(key("deadband"), "must not be negative"));
            }
            if r.code.trim().is_empty() {
                return Err(problem(key("code"), "must not be empty"));
            }
            let max_silence = match r.max_silence {
                Some(d) if d.0.is_zero() => {
                    return Err(problem(key("max_silence"), "must be greater than zero"));
                }
                Some(d) => d.0,
                None => max_silence,
            };
            registers.push(Register {
                name: r.name,
                function,
                address: r.address,
                ty,
                word_order,
                scale,
                offset,
                code: r.code,
                system: r.system,
                unit: r.unit,
                deadband,
                max_silence,
            });
        }
        Ok(Config {
            transport,
            unit_id: unit_id as u8,
            poll_interval,
            timeout,
            device_id: self.device_id,
            device_system: self.device_system,
            patient,
            location: self.location,
            registers,
        })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks what crosses sources: RTU sources sharing a port must agree on the line settings and
/// use distinct unit ids. Returns `(index of the offending source, key, message)`.
pub(crate) fn check_buses(sources: &[(usize, &Config)]) -> Option<(usize, String, String)> {
    for (n, (i, a)) in sources.iter().enumerate() {
        let Transport::Rtu(sa) = &a.transport else {
            continue;
        };
        for (j, b) in sources.iter().take(n) {
            let Transport::Rtu(sb) = &b.transport else {
                continue;
            };
            if sa.port != sb.port {
                continue;
            }
            if (sa.baud, sa.parity, sa.data_bits, sa.stop_bits)
                != (sb.baud, sb.parity, sb.data_bits, sb.stop_bits)
            {
                return Some((
                    *i,
                    "port".into(),
                    format!(
                        "same serial port as source[{j}] with different line settings (baud, parity, data_bits, stop_bits)"
                    ),
                ));
            }
            if a.unit_id == b.unit_id {
                return Some((
                    *i,
                    "unit_id".into(),
                    format!("same unit id on the same serial port as source[{j}]"),
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::{Config as FileConfig, SourceKind};
    use std::path::Path;

    const BASE: &str = r#"
data_dir = "/var/lib/caregate"
[[tenant]]
id = "north"
[[source]]
name = "vent-1"
tenant = "north"
kind = "modbus"
address = "10.0.0.5:502"
unit_id = 1
device_id = "VENT-0042"
[[source.register]]
name = "peep"
function = 3
address = 100
type = "u16"
scale = 0.1
code = "151976"
unit = "cm[H2O]"
"#;

    fn load(text: &str) -> Result<FileConfig, crate::config::Error> {
        FileConfig::from_toml(Path::new("/etc/caregate/test.toml"), text)
    }

    fn err(text: &str) -> (String, Option<usize>) {
        let e = load(text).unwrap_err();
        (e.key, e.line)
    }

    #[test]
    fn tcp_source_validates_with_defaults() {
        let c = load(BASE).unwrap();
        let SourceKind::Modbus(m) = &c.sources[0].kind else {
            panic!("not modbus")
        };
        assert_eq!(m.poll_interval, super::DEFAULT_POLL_INTERVAL);
        assert_eq!(m.timeout, super::DEFAULT_TIMEOUT);
        assert_eq!(m.registers[0].scale.unwrap().to_string(), "0.1");
        assert_eq!(m.registers[0].max_silence, super::DEFAULT_MAX_SILENCE);
    }

    #[test]
    fn rtu_source_validates_with_line_defaults() {
        let text = BASE.replace(
            "address = \"10.0.0.5:502\"",
            "port = \"/dev/ttyUSB0\"\nbaud = 9600",
        );
        let c = load(&text).unwrap();
        let SourceKind::Modbus(m) = &c.sources[0].kind else {
            panic!("not modbus")
        };
        let super::Transport::Rtu(s) = &m.transport else {
            panic!("not rtu")
        };
        assert_eq!(
            (s.baud, s.parity, s.data_bits, s.stop_bits),
            (9600, super::Parity::Even, 8, 1)
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases: &[(&str, &str, &str, usize)] = &[
            (
                "address = \"10.0.0.5:502\"",
                "address = \"modbus-box\"",
                "source[0].address",
                9,
            ),
            ("unit_id = 1", "unit_id = 300", "source[0].unit_id", 10),
            (
                "function = 3",
                "function = 5",
                "source[0].register[0].function",
                14,
            ),
            (
                "type = \"u16\"",
                "type = \"u64\"",
                "source[0].register[0].type",
                16,
            ),
            (
                "type = \"u16\"",
                "type = \"bool\"",
                "source[0].register[0].type",
                16,
            ),
            (
                "type = \"u16\"",
                "type = \"u16\"\nword_order = \"big\"",
                "source[0].register[0].word_order",
                17,
            ),
            (
                "scale = 0.1",
                "scale = \"0.1x\"",
                "source[0].register[0].scale",
                17,
            ),
            (
                "scale = 0.1",
                "deadband = -1",
                "source[0].register[0].deadband",
                17,
            ),
            (
                "code = \"151976\"",
                "code = \"\"",
                "source[0].register[0].code",
                18,
            ),
            (
                "device_id = \"VENT-0042\"",
                "device_id = \"VENT-0042\"\nbaud = 9600",
                "source[0].baud",
                12,
            ),
            (
                "unit_id = 1",
                "unit_id = 1\npoll_interval = \"0s\"",
                "source[0].poll_interval",
                11,
            ),
        ];
        for (from, to, key, line) in cases {
            let (k, l) = err(&BASE.replace(from, to));
            assert_eq!((k.as_str(), l), (*key, Some(*line)), "{to}");
        }
    }

    #[test]
    fn address_or_port_is_required_but_not_both() {
        let (k, _) = err(&BASE.replace("address = \"10.0.0.5:502\"\n", ""));
        assert_eq!(k, "source[0].address");
        let (k, _) = err(&BASE.replace(
            "address = \"10.0.0.5:502\"",
            "address = \"10.0.0.5:502\"\nport = \"/dev/ttyS0\"",
        ));
        assert_eq!(k, "source[0].port");
    }

    #[test]
    fn coils_must_be_bool_and_bool_takes_no_scale() {
        let (k, _) = err(&BASE.replace("function = 3", "function = 1"));
        assert_eq!(k, "source[0].register[0].type");
        let text = BASE
            .replace("function = 3", "function = 2")
            .replace("type = \"u16\"", "type = \"bool\"");
        assert_eq!(err(&text).0, "source[0].register[0].scale");
        load(&text.replace("scale = 0.1\n", "")).unwrap();
    }

    #[test]
    fn register_names_are_unique_and_registers_required() {
        let dup = format!(
            "{BASE}[[source.register]]\nname = \"peep\"\nfunction = 4\naddress = 1\ntype = \"i16\"\ncode = \"x\"\n"
        );
        let (k, l) = err(&dup);
        assert_eq!((k.as_str(), l), ("source[0].register[1].name", Some(21)));
        let none = BASE.split("[[source.register]]").next().unwrap();
        assert_eq!(err(none).0, "source[0].register");
    }

    #[test]
    fn rtu_sources_sharing_a_port_must_agree() {
        let rtu = BASE.replace("address = \"10.0.0.5:502\"", "port = \"/dev/ttyUSB0\"");
        let second = rtu
            .split("[[source]]")
            .nth(1)
            .unwrap()
            .replace("vent-1", "vent-2");
        let two = format!("{rtu}[[source]]{second}");
        assert_eq!(err(&two).0, "source[1].unit_id");
        let ok = two.replacen("unit_id = 1", "unit_id = 2", 2);
        let ok = ok.replacen("unit_id = 2", "unit_id = 1", 1);
        load(&ok).unwrap();
        let baud = ok.replacen(
            "port = \"/dev/ttyUSB0\"",
            "port = \"/dev/ttyUSB0\"\nbaud = 9600",
            1,
        );
        assert_eq!(err(&baud).0, "source[1].port");
    }
}
