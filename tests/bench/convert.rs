//! Parse + convert + serialize throughput for ORU^R01 (plain `std::time`, no criterion).
//!
//! Run: `cargo bench --bench convert` (release profile). Reports messages per second on one
//! core (single-threaded loop) for a typical 10-OBX lab result and a 120-OBX one; the target
//! for the typical message is >= 20,000 msg/s per core.
//!
//! For instruction counts (repeatable on a loaded machine), run a fixed number of iterations of
//! one message instead of timing: `CONVERT_BENCH_ITERS=1000 CONVERT_BENCH_ONLY=typical` (or
//! `large`) on the bench binary under `valgrind --tool=callgrind`; subtract a run with
//! `CONVERT_BENCH_ITERS=0` for the fixed start-up cost and divide by the iterations.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use caregate::convert::{self, Context};

fn message(obx: usize) -> Vec<u8> {
    let mut m = String::from(
        "MSH|^~\\&|LIS|NORTHLAB|CAREGATE|NORTH|20240105103005+0100||ORU^R01^ORU_R01|BENCH0001|P|2.5.1|||AL|NE||UNICODE UTF-8\r\
         PID|1||MRN123^^^HOSP^MR||Doe^Jane^Q^^^^L||19700101|F|||1 Main St^^Springfield^IL^62701^USA^H\r\
         PV1|1|I|WARD3^301^B^NORTH||||1234^Smith^John^^^Dr|||MED|||||||||VN1^^^HOSPVN^VN\r\
         ORC|RE|PLC100^ORDERSYS|FIL200^LIS\r\
         OBR|1|PLC100^ORDERSYS|FIL200^LIS|24323-8^Comprehensive metabolic panel^LN|||20240105090000+0100|||||||||||||||20240105101500+0100||CH|F\r",
    );
    let tests = [
        ("2345-7", "Glucose", "5.6", "mmol/L", "3.9-5.8", "N"),
        ("2823-3", "Potassium", "5.9", "mmol/L", "3.5-5.1", "H"),
        ("2951-2", "Sodium", "139", "mmol/L", "136-145", "N"),
        ("2160-0", "Creatinine", "88", "umol/L", "45-90", "N"),
        ("718-7", "Hemoglobin", "10.5", "g/dL", "12.0-15.5", "L"),
    ];
    for i in 0..obx {
        let (code, name, value, unit, range, flag) = tests[i % tests.len()];
        m.push_str(&format!(
            "OBX|{}|NM|{code}^{name}^LN||{value}|{unit}^{unit}^UCUM|{range}|{flag}|||F|||20240105093000+0100\r",
            i + 1
        ));
    }
    m.into_bytes()
}

/// One parse + convert + serialize; the JSON length.
fn once(ctx: &Context<'_>, raw: &[u8]) -> usize {
    let json = convert::convert_bytes(ctx, black_box(raw))
        .map(|c| c.bundle.to_json())
        .unwrap_or_default();
    let len = json.len();
    black_box(json);
    len
}

fn bench(name: &str, raw: &[u8], ctx: &Context<'_>) {
    if let Some(iters) = std::env::var("CONVERT_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let mut bytes = 0;
        for _ in 0..iters {
            bytes = once(ctx, raw);
        }
        println!("{name}: {iters} iterations, {bytes} B JSON out");
        return;
    }
    // Warm up, then run for about two seconds.
    for _ in 0..200 {
        black_box(
            convert::convert_bytes(ctx, raw)
                .map(|c| c.bundle.to_json())
                .ok(),
        );
    }
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while start.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            bytes = once(ctx, raw);
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name}: {:.0} msg/s per core ({:.1} µs/msg, {} B in, {bytes} B JSON out)",
        n as f64 / secs,
        secs * 1e6 / n as f64,
        raw.len()
    );
}

fn main() {
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdb has Europe/Berlin");
    let mut systems = BTreeMap::new();
    systems.insert("HOSP".to_owned(), "https://hospital.example/mrn".to_owned());
    systems.insert(
        "HOSPVN".to_owned(),
        "https://hospital.example/visit".to_owned(),
    );
    let ctx = Context {
        tenant: "north",
        source: "lab-lis",
        timezone: &tz,
        identifier_systems: &systems,
        system_base: "urn:caregate",
    };
    let only = std::env::var("CONVERT_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "typical" {
        bench("ORU^R01 10 OBX (typical)", &message(10), &ctx);
    }
    if only.is_empty() || only == "large" {
        bench("ORU^R01 120 OBX (large)", &message(120), &ctx);
    }
}
