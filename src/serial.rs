//! Serial lines (RS-232 via USB adapters, mostly): the line settings shared by every serial
//! source (`kind = "astm"`, `kind = "mllp-serial"`), opening a port with tokio-serial, the
//! reopen-with-backoff loop, and what the biomed commands (`caregate ports`, `caregate probe`)
//! show.
//!
//! - **Stable names.** USB adapters are renumbered (`/dev/ttyUSB0` becomes `ttyUSB1` after a
//!   replug or reboot); configure `/dev/serial/by-id/...` paths, which udev keeps per adapter.
//! - **Unplugged adapters.** A port that disappears (read error, EOF, open failure) is reopened
//!   with backoff (1 s doubling to 30 s) until shutdown; the source never exits over it.
//! - tokio-serial with default features needs no libudev: port listing reads sysfs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use crate::shutdown::Shutdown;

/// Validated line settings (`port`, `baud`, `data_bits`, `parity`, `stop_bits`, `flow_control`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Device path, e.g. `/dev/serial/by-id/usb-FTDI_...-if00-port0`.
    pub port: PathBuf,
    /// Bits per second.
    pub baud: u32,
    /// 5 to 8 (default 8).
    pub data_bits: u8,
    /// `none` (default), `even` or `odd`.
    pub parity: String,
    /// 1 (default) or 2.
    pub stop_bits: u8,
    /// `none` (default), `software` (XON/XOFF) or `hardware` (RTS/CTS).
    pub flow_control: String,
}

/// The line keys of a source table as read from the file, before validation.
#[derive(Debug, Default)]
pub struct RawLine {
    /// `port`.
    pub port: PathBuf,
    /// `baud`.
    pub baud: Option<u32>,
    /// `data_bits`.
    pub data_bits: Option<u8>,
    /// `parity`.
    pub parity: Option<String>,
    /// `stop_bits`.
    pub stop_bits: Option<u8>,
    /// `flow_control`.
    pub flow_control: Option<String>,
}

impl RawLine {
    /// Validates; errors are `(key, message)`.
    pub fn validate(self) -> Result<Line, (String, String)> {
        if self.port.as_os_str().is_empty() {
            return Err((
                "port".into(),
                "must name a device, e.g. \"/dev/serial/by-id/usb-...\"".into(),
            ));
        }
        let baud = self.baud.unwrap_or(9600);
        if !(50..=4_000_000).contains(&baud) {
            return Err(("baud".into(), "must be between 50 and 4000000".into()));
        }
        let data_bits = self.data_bits.unwrap_or(8);
        if !(5..=8).contains(&data_bits) {
            return Err(("data_bits".into(), "must be 5, 6, 7 or 8".into()));
        }
        let parity = self.parity.unwrap_or_else(|| "none".into());
        if !["none", "even", "odd"].contains(&parity.as_str()) {
            return Err((
                "parity".into(),
                "must be \"none\", \"even\" or \"odd\"".into(),
            ));
        }
        let stop_bits = self.stop_bits.unwrap_or(1);
        if !(1..=2).contains(&stop_bits) {
            return Err(("stop_bits".into(), "must be 1 or 2".into()));
        }
        let flow_control = self.flow_control.unwrap_or_else(|| "none".into());
        if !["none", "software", "hardware"].contains(&flow_control.as_str()) {
            return Err((
                "flow_control".into(),
                "must be \"none\", \"software\" or \"hardware\"".into(),
            ));
        }
        Ok(Line {
            port: self.port,
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control,
        })
    }
}

impl Line {
    /// 8N1 at `baud` on `port`.
    pub fn new(port: impl Into<PathBuf>, baud: u32) -> Line {
        Line {
            port: port.into(),
            baud,
            data_bits: 8,
            parity: "none".into(),
            stop_bits: 1,
            flow_control: "none".into(),
        }
    }

    /// Opens the port for async I/O.
    pub fn open(&self) -> std::io::Result<SerialStream> {
        let data_bits = match self.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        };
        let parity = match self.parity.as_str() {
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            _ => Parity::None,
        };
        let stop_bits = if self.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        };
        let flow = match self.flow_control.as_str() {
            "software" => FlowControl::Software,
            "hardware" => FlowControl::Hardware,
            _ => FlowControl::None,
        };
        let mut stream = tokio_serial::new(self.port.to_string_lossy(), self.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(flow)
            .open_native_async()
            .map_err(std::io::Error::from)?;
        // Exclusive access: a second process (or a forgotten `probe`) reading the same port would
        // steal bytes from the session.
        #[cfg(unix)]
        {
            let _ = stream.set_exclusive(true);
        }
        Ok(stream)
    }

    /// A label for logs (the device path, never data).
    pub fn label(&self) -> String {
        self.port.display().to_string()
    }
}

/// Opens `line`, retrying with backoff (1 s doubling to 30 s) until it opens or shutdown.
/// `on_fail` is called for each failed attempt (logs, metrics).
pub async fn open_with_backoff(
    line: &Line,
    shutdown: &mut Shutdown,
    mut on_fail: impl FnMut(&std::io::Error),
) -> Option<SerialStream> {
    let mut delay = Duration::from_secs(1);
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match line.open() {
            Ok(s) => return Some(s),
            Err(e) => on_fail(&e),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

// === biomed commands ===

/// One port found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Device path.
    pub path: String,
    /// What kind of port it is (USB vendor/product/serial when known).
    pub description: String,
    /// `/dev/serial/by-id` links that point at it (use these in the config).
    pub by_id: Vec<PathBuf>,
}

/// Serial ports (tokio-serial's `available_ports`) with their stable `/dev/serial/by-id` names.
pub fn ports() -> Vec<PortInfo> {
    let by_id = by_id_links(Path::new("/dev/serial/by-id"));
    let mut out: Vec<PortInfo> = tokio_serial::available_ports()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let description = match &p.port_type {
                tokio_serial::SerialPortType::UsbPort(u) => format!(
                    "usb {:04x}:{:04x}{}{}{}",
                    u.vid,
                    u.pid,
                    u.manufacturer
                        .as_deref()
                        .map(|m| format!(" {m}"))
                        .unwrap_or_default(),
                    u.product
                        .as_deref()
                        .map(|m| format!(" {m}"))
                        .unwrap_or_default(),
                    u.serial_number
                        .as_deref()
                        .map(|m| format!(" serial {m}"))
                        .unwrap_or_default(),
                ),
                tokio_serial::SerialPortType::PciPort => "pci".into(),
                tokio_serial::SerialPortType::BluetoothPort => "bluetooth".into(),
                tokio_serial::SerialPortType::Unknown => "unknown".into(),
            };
            let links = links_to(&by_id, Path::new(&p.port_name));
            PortInfo {
                path: p.port_name,
                description,
                by_id: links,
            }
        })
        .collect();
    // by-id links whose target the enumeration missed still get listed.
    for (link, target) in &by_id {
        if !out.iter().any(|p| Path::new(&p.path) == target) {
            out.push(PortInfo {
                path: target.display().to_string(),
                description: "from /dev/serial/by-id".into(),
                by_id: vec![link.clone()],
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn by_id_links(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::canonicalize(&link).ok()?;
            Some((link, target))
        })
        .collect();
    out.sort();
    out
}

fn links_to(links: &[(PathBuf, PathBuf)], port: &Path) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(port).unwrap_or_else(|_| port.to_owned());
    links
        .iter()
        .filter(|(_, t)| *t == real)
        .map(|(l, _)| l.clone())
        .collect()
}

/// Renders bytes with control characters visible: `<STX>1H|\^&<CR><ETX>A5<CR><LF>`. Printable
/// ASCII is kept; other bytes become `<xNN>`. A line break follows every `<LF>`.
pub fn visible(bytes: &[u8]) -> String {
    const NAMES: [&str; 32] = [
        "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "HT", "LF", "VT", "FF", "CR",
        "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM", "SUB",
        "ESC", "FS", "GS", "RS", "US",
    ];
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        match b {
            0..=31 => {
                out.push('<');
                out.push_str(NAMES[usize::from(b)]);
                out.push('>');
                if b == b'\n' {
                    out.push('\n');
                }
            }
            32..=126 => out.push(char::from(b)),
            127 => out.push_str("<DEL>"),
            _ => out.push_str(&format!("<x{b:02X}>")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn control_characters_are_shown_by_name() {
        assert_eq!(
            visible(b"\x05\x021H|\r\x03A5\r\n\x04\xff"),
            "<ENQ><STX>1H|<CR><ETX>A5<CR><LF>\n<EOT><xFF>"
        );
    }

    #[test]
    fn line_defaults_are_8n1_at_9600() {
        let l = RawLine {
            port: "/dev/ttyUSB0".into(),
            ..RawLine::default()
        }
        .validate()
        .unwrap();
        assert_eq!(l, Line::new("/dev/ttyUSB0", 9600));
    }

    #[test]
    fn bad_line_settings_name_their_key() {
        let bad = |f: fn(&mut RawLine)| {
            let mut r = RawLine {
                port: "/dev/ttyS0".into(),
                ..RawLine::default()
            };
            f(&mut r);
            r.validate().unwrap_err().0
        };
        assert_eq!(bad(|r| r.baud = Some(7)), "baud");
        assert_eq!(bad(|r| r.data_bits = Some(9)), "data_bits");
        assert_eq!(bad(|r| r.parity = Some("mark".into())), "parity");
        assert_eq!(bad(|r| r.stop_bits = Some(3)), "stop_bits");
        assert_eq!(bad(|r| r.flow_control = Some("rts".into())), "flow_control");
        assert_eq!(bad(|r| r.port = PathBuf::new()), "port");
    }
}
