//! Audit trail benchmark: entries/s with group fsync, for N concurrent tasks each awaiting the
//! durability of every entry before sending the next (as a pipeline step that must not move on
//! before its audit entry is on disk), plus a `nowait` row (one task queues everything and
//! awaits only the last: the writer's ceiling). Each run uses a fresh directory on the same
//! disk as /tmp, then verifies what it wrote (and reports the verify rate).
//!
//! `fsyncs` and `entries/fsync` come from the trail's own counters: how many callers one
//! `fdatasync` served.
//!
//! ```text
//! cargo bench --bench audit -- [--entries 20000] [--tasks 1,8,64] [--no-nowait]
//! ```
//!
//! Entries are synthetic: an ORU^R01 `stored` record with control id, envelope id, two
//! resource ids and a patient reference (about 450 bytes a line).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use caregate::audit::{
    self, Action, Actor, ActorKind, Config, Id, Purpose, Record, Scope, Tenant, Trail,
};

struct Args {
    entries: usize,
    tasks: Vec<usize>,
    nowait: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        entries: 20_000,
        tasks: vec![1, 8, 64],
        nowait: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "--entries" => {
                args.entries = value()?.parse().map_err(|e| format!("--entries: {e}"))?
            }
            "--tasks" => {
                args.tasks = value()?
                    .split(',')
                    .map(|n| n.trim().parse().map_err(|e| format!("--tasks: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-nowait" => args.nowait = false,
            "-h" | "--help" => {
                return Err("usage: audit [--entries N] [--tasks 1,8,64] [--no-nowait]".to_owned());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.entries == 0 || args.tasks.contains(&0) {
        return Err("entries and tasks must be at least 1".to_owned());
    }
    Ok(args)
}

fn record(trail: &Trail, i: usize) -> Record {
    Record::new(
        Tenant::new("north").unwrap(),
        Actor::new(ActorKind::Source, Id::new("lab-mllp").unwrap()),
        Action::Stored,
        Purpose::Treatment,
    )
    .scope(Scope {
        message_type: Some(Id::new("ORU^R01").unwrap()),
        control_id: Some(Id::new(&format!("BENCH-{i}")).unwrap()),
        envelope_id: Some(i as u64),
        resource_ids: vec![
            Id::new(&format!("Observation/bench-{i}-1")).unwrap(),
            Id::new(&format!("Observation/bench-{i}-2")).unwrap(),
        ],
        patient: Some(trail.patient_ref("urn:oid:2.16.840.1.113883.19", &format!("{}", i % 500))),
    })
    .correlation_id(Id::new(&format!("env-{i}")).unwrap())
}

struct Row {
    label: String,
    entries: usize,
    seconds: f64,
    fsyncs: u64,
    lines: u64,
    p50: Duration,
    p99: Duration,
    verify_seconds: f64,
    intact: bool,
}

fn run(rt: &tokio::runtime::Runtime, tasks: Option<usize>, entries: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path());
    let trail = Trail::open(&config).unwrap();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = rt.block_on(async {
        match tasks {
            Some(n) => {
                let per = entries.div_ceil(n);
                let mut handles = Vec::new();
                for t in 0..n {
                    let trail = trail.clone();
                    handles.push(tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(per);
                        for i in (t * per)..((t + 1) * per).min(entries) {
                            let r = record(&trail, i);
                            let s = Instant::now();
                            trail.append(r).await.unwrap();
                            lat.push(s.elapsed());
                        }
                        lat
                    }));
                }
                let mut all = Vec::with_capacity(entries);
                for h in handles {
                    all.extend(h.await.unwrap());
                }
                all
            }
            None => {
                let mut last = None;
                for i in 0..entries {
                    last = Some(trail.append(record(&trail, i)));
                }
                if let Some(l) = last {
                    l.await.unwrap();
                }
                Vec::new()
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let counters = trail.counters();
    rt.block_on(trail.close()).unwrap();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let key = trail.public_key();
    let v = Instant::now();
    let report = audit::verify(&config.dir, &key).unwrap();
    let verify_seconds = v.elapsed().as_secs_f64();
    Row {
        label: tasks.map_or("nowait".to_owned(), |n| n.to_string()),
        entries,
        seconds,
        fsyncs: counters.groups,
        lines: counters.lines,
        p50: pct(0.50),
        p99: pct(0.99),
        verify_seconds,
        intact: report.is_intact() && report.entries == entries as u64,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "audit benchmark: {} entries per run, {} CPUs, directory under {}",
        args.entries,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::temp_dir().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for &t in &args.tasks {
        rows.push(run(&rt, Some(t), args.entries));
    }
    if args.nowait {
        rows.push(run(&rt, None, args.entries));
    }
    println!();
    println!(
        "{:>6} {:>8} {:>7} {:>9} {:>7} {:>13} {:>7} {:>7} {:>13} {:>6}",
        "tasks",
        "entries",
        "seconds",
        "entries/s",
        "fsyncs",
        "entries/fsync",
        "p50 ms",
        "p99 ms",
        "verify line/s",
        "intact"
    );
    let mut ok = true;
    for r in &rows {
        ok &= r.intact;
        println!(
            "{:>6} {:>8} {:>7.2} {:>9.0} {:>7} {:>13.1} {:>7.2} {:>7.2} {:>13.0} {:>6}",
            r.label,
            r.entries,
            r.seconds,
            r.entries as f64 / r.seconds,
            r.fsyncs,
            r.lines as f64 / r.fsyncs.max(1) as f64,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.lines as f64 / r.verify_seconds,
            if r.intact { "yes" } else { "NO" }
        );
    }
    if !ok {
        std::process::exit(1);
    }
}
