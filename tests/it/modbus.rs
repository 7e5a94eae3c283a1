//! Modbus source against real Modbus servers started here: a TCP server (tokio-modbus `server`,
//! dev-only feature) and an RTU server on a pseudo-terminal pair; readings are read back from the
//! durable queue and decoded from the Reading JSON. Register values are synthetic.
//!
//! The gateway polls on the real clock (real sockets and a real pty); tests wait for the queue
//! with a deadline rather than sleeping a fixed time.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caregate::envelope::Kind;
use caregate::reading::Reading;
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::support::Gateway;

// === test servers ===

/// Register tables keyed by (unit, function 1-4, address); a unit not in the map never answers.
type Tables = HashMap<(u8, u8, u16), u16>;

#[derive(Clone, Default)]
struct Device(Arc<Mutex<Tables>>);

impl Device {
    fn set(&self, unit: u8, function: u8, address: u16, words: &[u16]) {
        let mut m = self.0.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            m.insert((unit, function, address + i as u16), *w);
        }
    }
}

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let m = self.0.lock().unwrap();
        let unit = req.slave;
        if !m.keys().any(|(u, _, _)| *u == unit) {
            return std::future::ready(Ok(None));
        }
        let get = |f: u8, a: u16, n: u16| -> Result<Vec<u16>, ExceptionCode> {
            (a..a.saturating_add(n))
                .map(|x| {
                    m.get(&(unit, f, x))
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let bits = |w: Vec<u16>| w.into_iter().map(|x| x != 0).collect::<Vec<_>>();
        let r = match req.request {
            Request::ReadCoils(a, n) => get(1, a, n).map(|w| Response::ReadCoils(bits(w))),
            Request::ReadDiscreteInputs(a, n) => {
                get(2, a, n).map(|w| Response::ReadDiscreteInputs(bits(w)))
            }
            Request::ReadHoldingRegisters(a, n) => get(3, a, n).map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => get(4, a, n).map(Response::ReadInputRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(r.map(Some))
    }
}

/// Starts a Modbus TCP server for `device` on a free loopback port.
async fn tcp_server(device: Device) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio_modbus::server::tcp::Server::new(listener);
    tokio::spawn(async move {
        let on_connected = move |stream, _peer| {
            let device = device.clone();
            async move { Ok(Some((device, stream))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    addr
}

/// A TCP server that accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn config(dir: &std::path::Path, sources: &str) -> String {
    format!(
        r#"data_dir = "{data}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[[tenant]]
id = "north"
{sources}"#,
        data = dir.join("data").display()
    )
}

async fn start(sources: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), sources);
    Gateway::start_text(dir, &text).await
}

/// `(register name, reading)` of every stored reading of `source`, in queue order.
fn readings(gw: &Gateway, source: &str) -> Vec<(String, Reading)> {
    gw.queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .filter(|e| e.source == source)
        .map(|e| {
            assert_eq!(e.kind, Kind::Reading);
            assert_eq!(e.meta.message_type, "READING");
            let name = e.meta.control_id.split('@').next().unwrap().to_owned();
            (name, serde_json::from_slice(&e.payload).unwrap())
        })
        .collect()
}

/// Waits (up to 10 s) until `done` holds.
async fn wait_for<F: Future<Output = bool>>(mut done: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(gw: &Gateway, prefix: &str) -> u64 {
    gw.metrics_text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn register(name: &str, function: u8, address: u16, ty: &str, extra: &str) -> String {
    format!(
        "[[source.register]]\nname = \"{name}\"\nfunction = {function}\naddress = {address}\ntype = \"{ty}\"\ncode = \"{name}-code\"\n{extra}\n"
    )
}

fn source(name: &str, transport: &str, extra: &str, registers: &[String]) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\ntenant = \"north\"\nkind = \"modbus\"\n{transport}\ndevice_id = \"DEV-{name}\"\n{extra}\n{}",
        registers.concat()
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_register_type_and_word_order_decodes_to_the_expected_decimal() {
    let dev = Device::default();
    dev.set(1, 3, 0, &[1234]);
    dev.set(1, 3, 1, &[0xFF38]);
    dev.set(1, 3, 2, &[0x0001, 0xE240]);
    dev.set(1, 3, 4, &[0xE240, 0x0001]);
    dev.set(1, 3, 6, &[0xFFFE, 0x1DC0]);
    dev.set(1, 3, 8, &[0x1DC0, 0xFFFE]);
    dev.set(1, 4, 0, &[0x4212, 0x6666]);
    dev.set(1, 4, 2, &[0x0000, 0x41C8]);
    dev.set(1, 4, 4, &[0x7FC0, 0x0000]); // NaN
    dev.set(1, 4, 6, &[2731]);
    dev.set(1, 1, 0, &[1]);
    dev.set(1, 2, 0, &[0]);
    let addr = tcp_server(dev).await;
    let regs = [
        register("u16-scaled", 3, 0, "u16", "scale = 0.1\nunit = \"Cel\""),
        register("i16-neg", 3, 1, "i16", ""),
        register("u32-big", 3, 2, "u32", "word_order = \"big\""),
        register("u32-little", 3, 4, "u32", "word_order = \"little\""),
        register("i32-big", 3, 6, "i32", ""),
        register(
            "i32-little",
            3,
            8,
            "i32",
            "word_order = \"little\"\nscale = 0.01",
        ),
        register("f32-big", 4, 0, "f32", ""),
        register("f32-little", 4, 2, "f32", "word_order = \"little\""),
        register("f32-nan", 4, 4, "f32", ""),
        register("kelvin", 4, 6, "i16", "scale = 0.1\noffset = -273.1"),
        register("coil", 1, 0, "bool", ""),
        register("input-bit", 2, 0, "bool", ""),
    ];
    let gw = start(&source(
        "vent",
        &format!("address = \"{addr}\"\nunit_id = 1"),
        "poll_interval = \"1h\"\nlocation = \"ICU-3\"",
        &regs,
    ))
    .await;
    wait_for(|| async { readings(&gw, "vent").len() >= 11 }).await;
    let got: HashMap<String, Reading> = readings(&gw, "vent").into_iter().collect();
    let expected = [
        ("u16-scaled", "123.4"),
        ("i16-neg", "-200"),
        ("u32-big", "123456"),
        ("u32-little", "123456"),
        ("i32-big", "-123456"),
        ("i32-little", "-1234.56"),
        ("f32-big", "36.6"),
        ("f32-little", "25"),
        ("kelvin", "0.0"),
        ("coil", "1"),
        ("input-bit", "0"),
    ];
    for (name, value) in expected {
        let r = got.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(r.value.as_deref(), Some(value), "{name}");
        assert_eq!(r.code, format!("{name}-code"));
        assert_eq!(r.device.id, "DEV-vent");
        assert_eq!(r.location.as_deref(), Some("ICU-3"));
    }
    assert_eq!(got["u16-scaled"].unit.as_deref(), Some("Cel"));
    assert!(!got.contains_key("f32-nan"), "NaN is never stored");
    assert_eq!(got.len(), 11, "one poll, one reading per valid register");
    assert_eq!(
        metric(&gw, "caregate_modbus_invalid_values_total{source=\"vent\"}"),
        1
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_times_out_while_another_keeps_delivering() {
    let dev = Device::default();
    dev.set(1, 3, 0, &[42]);
    let good = tcp_server(dev).await;
    let silent = silent_server().await;
    let gw = start(&format!(
        "{}{}",
        source(
            "silent",
            &format!("address = \"{silent}\"\nunit_id = 1"),
            "poll_interval = \"100ms\"\ntimeout = \"300ms\"",
            &[register("r", 3, 0, "u16", "")],
        ),
        source(
            "good",
            &format!("address = \"{good}\"\nunit_id = 1"),
            "poll_interval = \"100ms\"\ntimeout = \"300ms\"",
            &[register("r", 3, 0, "u16", "")],
        )
    ))
    .await;
    let t0 = tokio::time::Instant::now();
    wait_for(|| async { metric(&gw, "caregate_modbus_timeouts_total{source=\"silent\"}") >= 2 })
        .await;
    // Two timeouts of 300 ms with backoff: at least ~0.6 s in which the good device kept its
    // 100 ms interval.
    let elapsed = t0.elapsed();
    let good_count = readings(&gw, "good").len();
    assert!(
        good_count as u128 >= elapsed.as_millis() / 100 / 2,
        "{good_count} readings in {elapsed:?}"
    );
    assert!(readings(&gw, "silent").is_empty());
    assert!(
        readings(&gw, "good")
            .iter()
            .all(|(_, r)| r.value.as_deref() == Some("42"))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_suppresses_small_changes() {
    let dev = Device::default();
    dev.set(1, 3, 0, &[200]); // 20.0
    let addr = tcp_server(dev.clone()).await;
    let gw = start(&source(
        "monitor",
        &format!("address = \"{addr}\"\nunit_id = 1"),
        "poll_interval = \"50ms\"\nmax_silence = \"1h\"",
        &[register("temp", 3, 0, "u16", "scale = 0.1\ndeadband = 0.5")],
    ))
    .await;
    let polls = |gw: &Gateway| metric(gw, "caregate_modbus_polls_total{source=\"monitor\"}");
    wait_for(|| async { readings(&gw, "monitor").len() == 1 }).await;
    // Small changes over several polls: nothing new stored.
    dev.set(1, 3, 0, &[203]);
    let p = polls(&gw);
    wait_for(|| async { polls(&gw) >= p + 3 }).await;
    dev.set(1, 3, 0, &[205]); // exactly the band
    let p = polls(&gw);
    wait_for(|| async { polls(&gw) >= p + 3 }).await;
    assert_eq!(readings(&gw, "monitor").len(), 1);
    // A larger change is stored once.
    dev.set(1, 3, 0, &[206]);
    wait_for(|| async { readings(&gw, "monitor").len() == 2 }).await;
    let p = polls(&gw);
    wait_for(|| async { polls(&gw) >= p + 3 }).await;
    let values: Vec<String> = readings(&gw, "monitor")
        .into_iter()
        .map(|(_, r)| r.value.unwrap())
        .collect();
    assert_eq!(values, ["20.0", "20.6"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_response_is_counted_and_other_registers_still_stored() {
    let dev = Device::default();
    dev.set(1, 3, 0, &[7]);
    let addr = tcp_server(dev).await;
    let gw = start(&source(
        "pump",
        &format!("address = \"{addr}\"\nunit_id = 1"),
        "poll_interval = \"100ms\"",
        &[
            register("missing", 3, 500, "u16", ""),
            register("ok", 3, 0, "u16", ""),
        ],
    ))
    .await;
    wait_for(|| async { readings(&gw, "pump").len() >= 2 }).await;
    assert!(
        metric(
            &gw,
            "caregate_modbus_exceptions_total{source=\"pump\",code=\"0x02\"}"
        ) >= 2
    );
    assert!(readings(&gw, "pump").iter().all(|(n, _)| n == "ok"));
    assert_eq!(
        metric(&gw, "caregate_modbus_timeouts_total{source=\"pump\"}"),
        0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_devices_sharing_a_serial_port_are_polled_in_turn() {
    use tokio_serial::SerialPort as _;
    let (master, mut slave) = tokio_serial::SerialStream::pair().unwrap();
    let path = slave.name().unwrap();
    // The gateway opens the slave side by path and takes serialport's exclusive flock, which the
    // pair's own slave handle would block; but some slave fd must stay open or the master reads
    // EIO and the server ends. So: clear TIOCEXCL, hold a plain fd (no flock), drop the handle.
    slave.set_exclusive(false).unwrap();
    let hold = {
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_NOCTTY: i32 = 0o400; // Linux: never become this process's controlling terminal
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(&path)
            .unwrap()
    };
    drop(slave);
    let dev = Device::default();
    dev.set(1, 3, 0, &[0x0001, 0xE240]);
    dev.set(2, 4, 0, &[0x0000, 0x41C8]);
    tokio::spawn(tokio_modbus::server::rtu::Server::new(master).serve_forever(dev));
    let line = format!("port = \"{path}\"\nbaud = 19200\nparity = \"none\"");
    let gw = start(&format!(
        "{}{}",
        source(
            "pump-1",
            &format!("{line}\nunit_id = 1"),
            "poll_interval = \"100ms\"\ntimeout = \"500ms\"",
            &[register("rate", 3, 0, "u32", "scale = 0.01")],
        ),
        source(
            "pump-2",
            &format!("{line}\nunit_id = 2"),
            "poll_interval = \"100ms\"\ntimeout = \"500ms\"",
            &[register("temp", 4, 0, "f32", "word_order = \"little\"")],
        )
    ))
    .await;
    wait_for(|| async { readings(&gw, "pump-1").len() >= 3 && readings(&gw, "pump-2").len() >= 3 })
        .await;
    assert!(
        readings(&gw, "pump-1")
            .iter()
            .all(|(_, r)| r.value.as_deref() == Some("1234.56"))
    );
    assert!(
        readings(&gw, "pump-2")
            .iter()
            .all(|(_, r)| r.value.as_deref() == Some("25"))
    );
    assert_eq!(
        metric(&gw, "caregate_modbus_timeouts_total{source=\"pump-1\"}"),
        0
    );
    gw.stop().await;
    drop(hold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_raw_words_and_decoded_values() {
    use caregate::cli::{Cli, Command, ProbeCommand};
    use clap::Parser as _;
    let dev = Device::default();
    dev.set(1, 3, 0, &[0xFF38]);
    dev.set(1, 4, 0, &[0x0000, 0x41C8]);
    dev.set(1, 1, 0, &[1]);
    let addr = tcp_server(dev).await.to_string();
    // The command line as an engineer types it (parsed by the binary's own parser; the binary
    // itself is not run because the test target directory may be shared between builds).
    let cli = Cli::try_parse_from([
        "caregate",
        "probe",
        "modbus",
        &addr,
        "--unit",
        "1",
        "--register",
        "3:0:i16",
        "--register",
        "4:0:f32:little",
        "--register",
        "1:0:bool",
        "--register",
        "3:9:u16",
    ])
    .unwrap();
    let Command::Probe {
        command:
            ProbeCommand::Modbus {
                addr,
                unit,
                registers,
                timeout,
                baud,
                parity,
            },
    } = cli.command
    else {
        panic!("not a probe command")
    };
    let transport = caregate::modbus::probe::transport(&addr, Some((baud, parity))).unwrap();
    let lines = caregate::modbus::probe::run(&transport, unit, &registers, timeout)
        .await
        .unwrap();
    assert_eq!(
        lines,
        [
            "3:0:i16  words=[0xff38]  value=-200",
            "4:0:f32:little  words=[0x0000 0x41c8]  value=25",
            "1:0:bool  bits=[1]  value=1",
            "3:9:u16  exception=0x02 (IllegalDataAddress)",
        ]
    );
    // A device that does not answer fails the probe.
    let silent = silent_server().await;
    let e = caregate::modbus::probe::run(
        &caregate::modbus::Transport::Tcp(silent),
        1,
        &registers[..1],
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no answer"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_below_a_critical_threshold_takes_the_critical_lane_and_alerts() {
    let hook = crate::forward::webhook().await;
    let dev = Device::default();
    dev.set(1, 3, 0, &[97]); // SpO2 97 %
    let addr = tcp_server(dev.clone()).await;
    let sources = source(
        "oximeter",
        &format!("address = \"{addr}\"\nunit_id = 1"),
        "poll_interval = \"50ms\"\nmax_silence = \"1h\"",
        &[register("spo2", 3, 0, "u16", "unit = \"%\"\ndeadband = 1")],
    );
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        &format!(
            "[[tenant.critical]]\ncode = \"spo2-code\"\nbelow = \"85\"\nunit = \"%\"\n\
             [[alert.webhook]]\nurl = \"{}\"\n{sources}",
            hook.url
        ),
    );
    let gw = Gateway::start_text(dir, &text).await;
    wait_for(|| async { readings(&gw, "oximeter").len() == 1 }).await;
    assert!(hook.got.lock().unwrap().is_empty(), "97 % is not critical");
    dev.set(1, 3, 0, &[82]);
    wait_for(|| async { !hook.got.lock().unwrap().is_empty() }).await;
    let alert = hook.got.lock().unwrap()[0].clone();
    assert_eq!(alert["kind"], "critical-result", "{alert}");
    assert_eq!(alert["source"], "oximeter");
    assert_eq!(alert["results"][0]["code"], "spo2-code");
    assert!(
        !alert.to_string().contains("\"value\""),
        "the value stays out of the alert: {alert}"
    );
    let lanes: Vec<_> = gw
        .queue()
        .scan("north")
        .unwrap()
        .into_iter()
        .map(|e| e.lane)
        .collect();
    assert_eq!(
        lanes,
        [
            caregate::envelope::Lane::Normal,
            caregate::envelope::Lane::Critical
        ]
    );
    gw.stop().await;
}
