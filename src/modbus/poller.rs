//! Polling: one [`Bus`] task per TCP device and one per serial port (devices on the same RS-485
//! line take turns: one request at a time). Each due device has all its registers read, every
//! request under the source's `timeout`; the cycle's readings go to the queue in one
//! `push_all`, and only then do the deadbands record them as stored.
//!
//! Failure handling per device: a timeout or I/O error drops the connection (the serial port is
//! closed and reopened, so a late reply can never be read as the answer to the next request),
//! ends that device's cycle (the readings already taken are still stored) and schedules the next
//! attempt after [`decode::backoff`]. An exception answer is counted and logged with its code only;
//! the device is alive, its other registers are read, and the schedule is unchanged.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use super::decode::{self, Deadband, Decimal};
use super::{Config, Function, Parity, Register, Serial, Transport};
use crate::envelope::{Kind, Lane, Meta};
use crate::metrics::Metrics;
use crate::queue::{NewEnvelope, Queue};
use crate::reading::{DeviceRef, Reading};
use crate::shutdown::Shutdown;

/// What one read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Registers.
    Words(Vec<u16>),
}

/// Why a poll (or a probe) could not talk to the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening the TCP connection or the serial port failed.
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Transport or framing error.
    #[error("transport error")]
    Transport(#[source] tokio_modbus::Error),
}

impl Error {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connect(_) => "connect",
            Error::Timeout(_) => "timeout",
            Error::Transport(_) => "transport",
        }
    }
}

/// Opens a client context (no unit id chosen yet), with the connect under `timeout`.
pub async fn connect(transport: &Transport, timeout: Duration) -> Result<Context, Error> {
    match transport {
        Transport::Tcp(addr) => {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| Error::Connect(io::ErrorKind::TimedOut.into()))?
                .map_err(Error::Connect)?;
            let _ = stream.set_nodelay(true);
            Ok(tokio_modbus::client::tcp::attach(stream))
        }
        Transport::Rtu(serial) => {
            let port = open_serial(serial).map_err(Error::Connect)?;
            Ok(tokio_modbus::client::rtu::attach(port))
        }
    }
}

fn open_serial(s: &Serial) -> io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(&s.port, s.baud)
        .parity(match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if s.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        });
    Ok(tokio_serial::SerialStream::open(&builder)?)
}

/// One read request under `timeout`. The outer error means the connection must be rebuilt;
/// the inner one is the device's exception answer.
pub async fn read(
    ctx: &mut Context,
    unit: u8,
    function: Function,
    address: u16,
    count: u16,
    timeout: Duration,
) -> Result<Result<Data, ExceptionCode>, Error> {
    ctx.set_slave(Slave(unit));
    let request = async {
        match function {
            Function::Coils => ctx
                .read_coils(address, count)
                .await
                .map(|r| r.map(Data::Bits)),
            Function::DiscreteInputs => ctx
                .read_discrete_inputs(address, count)
                .await
                .map(|r| r.map(Data::Bits)),
            Function::Holding => ctx
                .read_holding_registers(address, count)
                .await
                .map(|r| r.map(Data::Words)),
            Function::Input => ctx
                .read_input_registers(address, count)
                .await
                .map(|r| r.map(Data::Words)),
        }
    };
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| Error::Timeout(timeout))?
        .map_err(Error::Transport)
}

/// A register's answer → its engineering value.
pub fn value_of(register: &Register, data: &Data) -> Result<Decimal, decode::Error> {
    let raw = match data {
        Data::Bits(bits) => {
            // Coils come back padded to a whole byte; only the requested bit counts.
            decode::decode_bits(bits.get(..1).unwrap_or(bits))?
        }
        Data::Words(words) => decode::decode_words(register.ty, register.word_order, words)?,
    };
    decode::engineering(raw, register.scale, register.offset)
}

// === impl Bus ===

/// One device (one `kind = "modbus"` source) and its polling state.
struct Device {
    source: String,
    tenant: String,
    config: Config,
    deadbands: Vec<Deadband>,
    failures: u32,
    next_due: Instant,
}

/// A poll loop over one connection: a TCP device, or all devices on one serial port.
pub struct Bus {
    transport: Transport,
    devices: Vec<Device>,
    critical: Option<Arc<crate::critical::Notifier>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("peer", &self.transport.peer())
            .field(
                "sources",
                &self.devices.iter().map(|d| &d.source).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Bus {
    /// Groups sources `(name, tenant, config)` into poll loops: one per TCP source, one per
    /// serial port (config validation made sure sources sharing a port agree on its settings).
    pub fn plan<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str, &'a Config)>) -> Vec<Bus> {
        let mut buses: Vec<Bus> = Vec::new();
        let now = Instant::now();
        for (name, tenant, config) in sources {
            let device = Device {
                source: name.to_owned(),
                tenant: tenant.to_owned(),
                deadbands: config
                    .registers
                    .iter()
                    .map(|r| Deadband::new(r.deadband, r.max_silence))
                    .collect(),
                config: config.clone(),
                failures: 0,
                next_due: now,
            };
            let shared = match &config.transport {
                Transport::Rtu(s) => buses
                    .iter_mut()
                    .find(|b| matches!(&b.transport, Transport::Rtu(o) if o.port == s.port)),
                Transport::Tcp(_) => None,
            };
            match shared {
                Some(bus) => bus.devices.push(device),
                None => buses.push(Bus {
                    transport: config.transport.clone(),
                    devices: vec![device],
                    critical: None,
                }),
            }
        }
        buses
    }

    /// Classifies every reading against its tenant's critical rules (for example SpO2 < 85 %):
    /// critical ones go in the critical lane and alert right after their commit.
    pub fn with_critical(mut self, notifier: Arc<crate::critical::Notifier>) -> Bus {
        self.critical = Some(notifier);
        self
    }

    /// The names of the sources this loop polls.
    pub fn sources(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.source.clone()).collect()
    }

    /// Polls until shutdown. A poll in progress is abandoned at shutdown before its readings
    /// are pushed (nothing was taken yet); a push in progress completes.
    pub async fn run(mut self, queue: Queue, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
        let mut ctx: Option<Context> = None;
        loop {
            let Some(i) = (0..self.devices.len()).min_by_key(|&i| self.devices[i].next_due) else {
                return;
            };
            let due = self.devices[i].next_due;
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.cancelled() => return,
            }
            let device = &mut self.devices[i];
            let transport = &self.transport;
            let polled = tokio::select! {
                p = poll(device, transport, &mut ctx, &metrics) => p,
                _ = shutdown.cancelled() => return,
            };
            let now = Instant::now();
            store(
                device,
                polled.values,
                polled.at_us,
                now,
                transport,
                Sink {
                    queue: &queue,
                    metrics: &metrics,
                    critical: self.critical.as_deref(),
                },
            )
            .await;
            if polled.failed {
                device.failures = device.failures.saturating_add(1);
                device.next_due =
                    now + decode::backoff(device.config.poll_interval, device.failures);
            } else {
                device.failures = 0;
                let next = device.next_due + device.config.poll_interval;
                // Missed slots (a slow cycle, a busy bus) are skipped, not caught up in a burst.
                device.next_due = if next < now {
                    now + device.config.poll_interval
                } else {
                    next
                };
            }
        }
    }
}

struct Polled {
    /// `(register index, value)` of the registers read.
    values: Vec<(usize, Decimal)>,
    /// Wall-clock time of the poll, µs since the epoch (the readings' time).
    at_us: i64,
    /// The device did not answer (timeout, I/O): back off.
    failed: bool,
}

async fn poll(
    device: &mut Device,
    transport: &Transport,
    ctx: &mut Option<Context>,
    metrics: &Metrics,
) -> Polled {
    let source = device.source.as_str();
    let label = Metrics::source(source);
    metrics.modbus_polls.get_or_create(&label).inc();
    let at_us = jiff::Timestamp::now().as_microsecond();
    let mut values = Vec::new();
    let config = &device.config;
    for (index, register) in config.registers.iter().enumerate() {
        let conn = match ctx {
            Some(c) => c,
            None => match connect(transport, config.timeout).await {
                Ok(c) => ctx.insert(c),
                Err(e) => {
                    metrics.modbus_errors.get_or_create(&label).inc();
                    tracing::warn!(source, peer = %transport.peer(), attempt = device.failures + 1, error = %e, "modbus device unreachable");
                    return Polled {
                        values,
                        at_us,
                        failed: true,
                    };
                }
            },
        };
        let answer = read(
            conn,
            config.unit_id,
            register.function,
            register.address,
            register.ty.count(),
            config.timeout,
        )
        .await;
        match answer {
            Err(e) => {
                // Drop the connection: a late answer must not be read as the next one.
                *ctx = None;
                match e {
                    Error::Timeout(_) => metrics.modbus_timeouts.get_or_create(&label).inc(),
                    _ => metrics.modbus_errors.get_or_create(&label).inc(),
                };
                tracing::warn!(source, register = %register.name, attempt = device.failures + 1, error = %e, "modbus poll failed");
                return Polled {
                    values,
                    at_us,
                    failed: true,
                };
            }
            Ok(Err(code)) => {
                let code = u8::from(code);
                metrics
                    .modbus_exceptions
                    .get_or_create(&Metrics::source_and(
                        source,
                        "code",
                        &format!("{code:#04x}"),
                    ))
                    .inc();
                tracing::warn!(source, register = %register.name, code = %format!("{code:#04x}"), "modbus exception response");
            }
            Ok(Ok(data)) => match value_of(register, &data) {
                Ok(v) => values.push((index, v)),
                Err(e) => {
                    metrics.modbus_invalid_values.get_or_create(&label).inc();
                    tracing::warn!(source, register = %register.name, error = %e, "modbus value not stored");
                }
            },
        }
    }
    Polled {
        values,
        at_us,
        failed: false,
    }
}

/// Where readings go: the queue, the counters, the critical-value check.
struct Sink<'a> {
    queue: &'a Queue,
    metrics: &'a Metrics,
    critical: Option<&'a crate::critical::Notifier>,
}

/// Pushes the values the deadbands let through, then records them as stored.
async fn store(
    device: &mut Device,
    values: Vec<(usize, Decimal)>,
    at_us: i64,
    now: Instant,
    transport: &Transport,
    sink: Sink<'_>,
) {
    let Sink {
        queue,
        metrics,
        critical,
    } = sink;
    let now_std = now.into_std();
    let keep: Vec<(usize, Decimal)> = values
        .into_iter()
        .filter(|(i, v)| {
            device
                .deadbands
                .get(*i)
                .is_none_or(|d| d.should_store(*v, now_std))
        })
        .collect();
    if keep.is_empty() {
        return;
    }
    let time = jiff::Timestamp::from_microsecond(at_us)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut items = Vec::with_capacity(keep.len());
    for (i, value) in &keep {
        let Some(register) = device.config.registers.get(*i) else {
            continue;
        };
        let reading = reading(&device.config, register, *value, &time);
        let payload = match serde_json::to_vec(&reading) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(source = %device.source, register = %register.name, error = %e, "cannot encode reading");
                continue;
            }
        };
        items.push(NewEnvelope {
            tenant: device.tenant.clone(),
            source: device.source.clone(),
            received_at_us: at_us,
            peer: transport.peer(),
            kind: Kind::Reading,
            lane: Lane::Normal,
            meta: Meta {
                control_id: control_id(&register.name, at_us),
                message_type: "READING".to_owned(),
                version: String::new(),
                sender: device.config.device_id.clone(),
            },
            payload: payload.into(),
        });
    }
    let marked = match critical {
        Some(n) => n.mark(&mut items),
        None => Vec::new(),
    };
    let result = queue.push_all(items).await;
    if let (Some(n), Ok(pushed)) = (critical, &result) {
        n.raise_marked(&marked, pushed);
    }
    match result {
        Ok(pushed) => {
            for (i, value) in keep {
                if let Some(d) = device.deadbands.get_mut(i) {
                    d.stored(value, now_std);
                }
            }
            let new = pushed.iter().filter(|p| !p.duplicate).count() as u64;
            metrics
                .modbus_readings
                .get_or_create(&Metrics::source(&device.source))
                .inc_by(new);
        }
        Err(e) => {
            metrics
                .modbus_errors
                .get_or_create(&Metrics::source(&device.source))
                .inc();
            tracing::error!(source = %device.source, error = %e, "modbus readings not stored; they are polled again next cycle");
        }
    }
}

/// Deterministic per register and poll instant: a re-poll at the same instant is de-duplicated.
pub fn control_id(register: &str, at_us: i64) -> String {
    format!("{register}@{at_us}")
}

fn reading(config: &Config, register: &Register, value: Decimal, time: &str) -> Reading {
    Reading {
        device: DeviceRef {
            id: config.device_id.clone(),
            system: config.device_system.clone(),
            name: None,
        },
        code: register.code.clone(),
        system: register.system.clone(),
        display: None,
        value: Some(value.to_string()),
        text: None,
        unit: register.unit.clone(),
        time: time.to_owned(),
        patient: config.patient.clone(),
        location: config.location.clone(),
    }
}
