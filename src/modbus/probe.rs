//! `caregate probe modbus ADDR --unit N --register FUNCTION:ADDRESS:TYPE[:WORD_ORDER] ...`: reads
//! each point once and prints the raw words and the decoded value, so a biomedical engineer can
//! check a register map against a device before it goes live. Nothing is stored.
//!
//! `ADDR` is `HOST:PORT` for Modbus TCP, or a serial device path (starting with `/`) for RTU.

use std::time::Duration;

use super::poller::{self, Data};
use super::{Function, Register, Serial, Transport, Type, WordOrder};

/// One point to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The text as given, echoed in the output.
    pub spec: String,
    /// Table.
    pub function: Function,
    /// 0-based address.
    pub address: u16,
    /// Type.
    pub ty: Type,
    /// Word order.
    pub word_order: WordOrder,
}

/// Parses `FUNCTION:ADDRESS:TYPE[:WORD_ORDER]`, e.g. `3:100:u16`, `4:0:f32:little`, `1:5:bool`.
pub fn parse_point(s: &str) -> Result<Point, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (f, a, t, w) = match parts.as_slice() {
        [f, a, t] => (*f, *a, *t, None),
        [f, a, t, w] => (*f, *a, *t, Some(*w)),
        _ => return Err("expected FUNCTION:ADDRESS:TYPE[:WORD_ORDER], e.g. 3:100:u16".into()),
    };
    let function = f
        .parse::<u8>()
        .ok()
        .and_then(Function::from_code)
        .ok_or("FUNCTION must be 1, 2, 3 or 4")?;
    let address = a
        .parse::<u16>()
        .map_err(|_| "ADDRESS must be 0-65535 (the 0-based PDU address)")?;
    let ty = Type::parse(t).ok_or("TYPE must be one of u16, i16, u32, i32, f32, bool")?;
    if function.is_bits() != (ty == Type::Bool) {
        return Err("functions 1 and 2 take TYPE bool; 3 and 4 take a register type".into());
    }
    let word_order = match w {
        None => WordOrder::Big,
        Some(w) => WordOrder::parse(w).ok_or("WORD_ORDER must be big or little")?,
    };
    if u32::from(address) + u32::from(ty.count()) > 65_536 {
        return Err("the value runs past address 65535".into());
    }
    Ok(Point {
        spec: s.to_owned(),
        function,
        address,
        ty,
        word_order,
    })
}

/// Where to probe: `HOST:PORT`, or a serial path with its line settings.
pub fn transport(addr: &str, serial: Option<(u32, super::Parity)>) -> Result<Transport, String> {
    if addr.starts_with('/') {
        let (baud, parity) = serial.unwrap_or((19_200, super::Parity::Even));
        Ok(Transport::Rtu(Serial {
            port: addr.to_owned(),
            baud,
            parity,
            data_bits: 8,
            stop_bits: 1,
        }))
    } else {
        addr.parse()
            .map(Transport::Tcp)
            .map_err(|_| "ADDR must be HOST:PORT (e.g. 10.0.0.5:502) or a serial path".into())
    }
}

/// Reads every point once; returns one line per point. A connection failure or timeout is an
/// error (the device is not answering); an exception is reported on the point's line.
pub async fn run(
    transport: &Transport,
    unit: u8,
    points: &[Point],
    timeout: Duration,
) -> Result<Vec<String>, poller::Error> {
    let mut ctx = poller::connect(transport, timeout).await?;
    let mut lines = Vec::with_capacity(points.len());
    for p in points {
        let answer =
            poller::read(&mut ctx, unit, p.function, p.address, p.ty.count(), timeout).await?;
        let line = match answer {
            Err(code) => format!("{}  exception={:#04x} ({code:?})", p.spec, u8::from(code)),
            Ok(data) => {
                let raw = match &data {
                    Data::Bits(b) => format!(
                        "bits=[{}]",
                        b.iter()
                            .take(1)
                            .map(|&x| if x { "1" } else { "0" })
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    Data::Words(w) => format!(
                        "words=[{}]",
                        w.iter()
                            .map(|x| format!("{x:#06x}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                };
                let register = Register {
                    name: "probe".into(),
                    function: p.function,
                    address: p.address,
                    ty: p.ty,
                    word_order: p.word_order,
                    scale: None,
                    offset: None,
                    code: String::new(),
                    system: None,
                    unit: None,
                    deadband: None,
                    max_silence: Duration::MAX,
                };
                match poller::value_of(&register, &data) {
                    Ok(v) => format!("{}  {raw}  value={v}", p.spec),
                    Err(e) => format!("{}  {raw}  invalid: {e}", p.spec),
                }
            }
        };
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn points_parse_with_and_without_word_order() {
        let p = parse_point("3:100:u16").unwrap();
        assert_eq!(
            (p.function, p.address, p.ty, p.word_order),
            (Function::Holding, 100, Type::U16, WordOrder::Big)
        );
        let p = parse_point("4:0:f32:little").unwrap();
        assert_eq!(
            (p.function, p.word_order),
            (Function::Input, WordOrder::Little)
        );
        assert_eq!(parse_point("1:7:bool").unwrap().ty, Type::Bool);
    }

    #[test]
    fn bad_points_are_refused() {
        for bad in [
            "3:100",
            "5:1:u16",
            "3:x:u16",
            "3:1:u64",
            "1:1:u16",
            "3:1:bool",
            "3:1:u32:middle",
            "3:65535:u32",
            "3:1:u16:big:extra",
        ] {
            assert!(parse_point(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addr_is_tcp_or_a_serial_path() {
        assert!(matches!(
            transport("127.0.0.1:502", None),
            Ok(Transport::Tcp(_))
        ));
        assert!(matches!(
            transport("/dev/ttyUSB0", None),
            Ok(Transport::Rtu(_))
        ));
        assert!(transport("modbus-box", None).is_err());
    }
}
