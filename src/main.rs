//! caregate's entry point: parse the command line, set up logging, dispatch, map failures to
//! exit codes (64: usage or configuration, 1: runtime, 2: a message was refused).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use caregate::cli::{
    AuditCommand, Cli, Command, ConsentCommand, LogEnv, LogFormat, ProbeCommand, QueueCommand,
    TokenCommand,
};
use caregate::config::{self, Config};
use caregate::{app, cli, ops, shutdown};

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("caregate: {e:#}");
            if e.downcast_ref::<config::Error>().is_some() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let filter =
        || EnvFilter::try_from_env("CAREGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let chosen = format.resolve(&LogEnv::read());
    let mut journal_error = None;
    if chosen == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                // No field prefix: `source=` arrives as SOURCE=, so `journalctl SOURCE=lab` works.
                // Priorities as syslog has them (the crate maps INFO to notice by default), so
                // `journalctl -p info` hides debug and `-p notice` hides routine info lines.
                use tracing_journald::{Priority, PriorityMappings};
                let layer = layer
                    .with_field_prefix(None)
                    .with_priority_mappings(PriorityMappings {
                        error: Priority::Error,
                        warn: Priority::Warning,
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        trace: Priority::Debug,
                    })
                    .with_syslog_identifier("caregate".to_owned());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match chosen {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        _ => builder.init(),
    }
    if let Some(e) = journal_error {
        tracing::warn!(error = %e, "the journal socket refused the first write; logging text to stderr");
    } else if format == LogFormat::Journald && chosen != LogFormat::Journald {
        tracing::warn!(
            socket = cli::JOURNAL_SOCKET,
            "--log-format journald but the journal socket is missing; logging text to stderr"
        );
    }
}

/// The configuration and an admin API client with the operator's token (the CLI commands
/// that talk to the running daemon).
fn operator_api(args: &cli::ApiArgs) -> anyhow::Result<(Config, ops::Api)> {
    let config = Config::load(&args.config)?;
    let api = ops::Api::new(&config, ops::read_token(args.token_file.as_deref())?)?;
    Ok((config, api))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            unsafe_no_fsync,
        } => {
            let config = Config::load(&config)?;
            let options = app::Options {
                durable: !unsafe_no_fsync,
            };
            runtime()?.block_on(app::run(config, options, async {
                let which = shutdown::signal().await;
                tracing::info!(signal = which, "shutting down");
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: ok ({} tenants, {} sources)",
                config.display(),
                c.tenants.len(),
                c.sources.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintConfig => {
            print!("{}", config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe {
            command:
                ProbeCommand::Mqtt {
                    broker,
                    topics,
                    ca,
                    username,
                    password_file,
                    count,
                    duration,
                    max_bytes,
                },
        } => {
            let opts = cli::ProbeMqtt {
                broker,
                topics,
                ca,
                username,
                password_file,
                count,
                duration,
                max_bytes,
            };
            let seen = runtime()?.block_on(cli::probe_mqtt(&opts))?;
            eprintln!("{seen} publishes");
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe {
            command:
                cli::ProbeCommand::Modbus {
                    addr,
                    unit,
                    registers,
                    timeout,
                    baud,
                    parity,
                },
        } => {
            runtime()?.block_on(cli::probe_modbus(
                &addr,
                unit,
                &registers,
                timeout,
                (baud, parity),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            to,
            tls,
            ca,
            cert,
            key,
            server_name,
            timeout,
            files,
        } => {
            let opts = cli::SendOptions {
                to,
                tls,
                ca,
                identity: cert.zip(key),
                server_name,
                timeout,
            };
            let ok = runtime()?.block_on(cli::send(&opts, &files))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Convert {
            config,
            tenant,
            source,
            report,
            input,
        } => {
            use caregate::convert::cli as convert;
            let opts = match config {
                Some(path) => {
                    let c = Config::load(&path)?;
                    convert::Options::from_config(&c, tenant.as_deref(), source.as_deref(), report)?
                }
                None => convert::Options::standalone(report),
            };
            let bytes = convert::read_input(&input).with_context(|| format!("reading {input}"))?;
            let summary = convert::run(
                &opts,
                &bytes,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            Ok(if summary.failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Audit {
            command: AuditCommand::Verify { config, key },
        } => {
            let config = Config::load(&config)?;
            let key =
                key.unwrap_or_else(|| config.audit.key_dir.join(caregate::audit::PUBLIC_KEY_FILE));
            let code = caregate::audit::verify_command(
                &config.audit.dir,
                &key,
                &mut std::io::stdout().lock(),
            );
            Ok(ExitCode::from(code))
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    config,
                    tenant,
                    since,
                    until,
                },
        } => {
            let config = Config::load(&config)?;
            let time = |v: Option<String>, flag: &str| -> anyhow::Result<Option<jiff::Timestamp>> {
                v.map(|s| {
                    caregate::audit::parse_time(&s).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
                })
                .transpose()
            };
            let code = caregate::audit::export_command(
                &config.audit.dir,
                &tenant,
                time(since, "--since")?,
                time(until, "--until")?,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            Ok(ExitCode::from(code))
        }
        Command::Ports => {
            cli::ports(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe {
            command:
                ProbeCommand::Serial {
                    port,
                    baud,
                    data_bits,
                    parity,
                    stop_bits,
                    seconds,
                },
        } => {
            let line = caregate::serial::RawLine {
                port,
                baud: Some(baud),
                data_bits: Some(data_bits),
                parity: Some(parity),
                stop_bits: Some(stop_bits),
                flow_control: None,
            }
            .validate()
            .map_err(|(k, m)| anyhow::anyhow!("--{}: {m}", k.replace('_', "-")))?;
            runtime()?.block_on(cli::probe_serial(
                &line,
                std::time::Duration::from_secs(seconds),
                &mut std::io::stdout(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command: TokenCommand::New { name, hash_file },
        } => {
            cli::token_new(&name, hash_file.as_deref(), &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { api, json } => {
            let (_, api) = operator_api(&api)?;
            let status = runtime()?.block_on(ops::status(&api))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Consent {
            command:
                ConsentCommand::Set {
                    api,
                    tenant,
                    authority,
                    system,
                    status,
                    value,
                },
        } => {
            let (config, api) = operator_api(&api)?;
            let tenant = ops::pick_tenant(&config, tenant.as_deref())?;
            let value = if value == "-" {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the identifier from standard input")?;
                line.trim().to_owned()
            } else {
                value
            };
            let system = match (system, authority) {
                (Some(s), _) => s,
                (None, Some(a)) => ops::identifier_system(&config, &tenant, &a),
                (None, None) => anyhow::bail!("name the identifier's --authority or --system"),
            };
            let change = caregate::admin::ConsentChange {
                system,
                value,
                status,
            };
            let done = runtime()?.block_on(ops::consent_set(&api, &tenant, &change))?;
            // The identifier is not echoed: the keyed hash is what the audit trail and the
            // registry show.
            println!(
                "tenant {}: patient {} recorded {:?}; {} held messages released",
                done.tenant,
                done.patient_ref,
                done.status,
                done.released.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Consent {
            command: ConsentCommand::List { api, tenant, json },
        } => {
            let (config, api) = operator_api(&api)?;
            let tenant = ops::pick_tenant(&config, tenant.as_deref())?;
            let list = runtime()?.block_on(ops::consent_list(&api, &tenant))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for e in &list {
                    println!("{}  {:?}  {}", e.patient_ref, e.status, e.updated);
                }
                println!("{} recorded consents in tenant {tenant}", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command: QueueCommand::DeadLetters { api, tenant, json },
        } => {
            let (config, api) = operator_api(&api)?;
            let list = runtime()?.block_on(ops::dead_letters(&config, &api, tenant.as_deref()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<10} {:<12} {:<16} {:<10} {:<20} {:<26} REASON",
                    "ID", "TENANT", "SOURCE", "TYPE", "CONTROL ID", "RECEIVED"
                );
                for d in &list {
                    let reason = match (&d.reason["stage"], &d.reason["status"]) {
                        (serde_json::Value::String(stage), serde_json::Value::Number(n)) => {
                            format!("{stage} HTTP {n}")
                        }
                        (serde_json::Value::String(stage), _) => {
                            format!("{stage}: {}", d.reason["error"].as_str().unwrap_or(""))
                        }
                        _ => d.reason.to_string(),
                    };
                    println!(
                        "{:<10} {:<12} {:<16} {:<10} {:<20} {:<26} {reason}",
                        d.id, d.tenant, d.source, d.message_type, d.control_id, d.received_at
                    );
                }
                eprintln!("{} dead letters", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command:
                QueueCommand::Replay {
                    api,
                    tenant,
                    all,
                    id,
                },
        } => {
            let (config, api) = operator_api(&api)?;
            let tenant = ops::pick_tenant(&config, tenant.as_deref())?;
            let done = runtime()?.block_on(ops::replay(
                &config,
                &api,
                &tenant,
                if all { None } else { id },
            ))?;
            println!(
                "replayed {} dead letters of tenant {}: {:?}",
                done.ids.len(),
                done.tenant,
                done.ids
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command: QueueCommand::Purge { api, tenant, id },
        } => {
            let (config, api) = operator_api(&api)?;
            let tenant = ops::pick_tenant(&config, tenant.as_deref())?;
            let done = runtime()?.block_on(ops::purge(&config, &api, &tenant, id))?;
            println!("purged dead letter {id} of tenant {}", done.tenant);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            command: QueueCommand::Stats { api, json },
        } => {
            let (config, api) = operator_api(&api)?;
            let stats = runtime()?.block_on(ops::queue_stats(&config, &api))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{stats}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
