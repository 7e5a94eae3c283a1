//! `caregate convert [--config PATH] [--tenant T] [--source S] [--report] FILE|-`: convert HL7 v2
//! messages from a file or stdin and print one FHIR Bundle per message, as JSON lines.
//!
//! A file may hold several messages (FHS/BHS batches or plain consecutive MSH segments,
//! split by [`crate::hl7::batch::split`]): each gives its own Bundle. With `--report` the
//! conversion report (counts, unmapped OBX with reasons, unmapped segments/fields, warnings) is
//! printed instead of the Bundle. Messages that cannot be converted (unsupported type, not
//! parseable) are listed on stderr by position and count in [`Summary::failed`]; input that
//! holds no HL7 v2 message at all is an [`Error::NotHl7`]. Nothing printed on stderr holds
//! message content.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use jiff::tz::TimeZone;

use super::Context;
use crate::config::Config;
use crate::hl7;

/// Default base for caregate-minted system URIs.
pub const DEFAULT_SYSTEM_BASE: &str = "urn:caregate";

/// Errors of the `convert` command (no message content in any of them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input holds no HL7 v2 message.
    #[error("input is not HL7 v2 (no MSH segment found)")]
    NotHl7,
    /// `--tenant` names no configured tenant, or several tenants exist and none was chosen.
    #[error("tenant {0:?} is not configured")]
    UnknownTenant(String),
    /// The config has several tenants and `--tenant` was not given.
    #[error("the config has several tenants: choose one with --tenant")]
    AmbiguousTenant,
    /// `--source` names no configured source.
    #[error("source {0:?} is not configured")]
    UnknownSource(String),
    /// The configured time zone is not in the tz database.
    #[error("time zone {0:?} is not known")]
    TimeZone(String),
    /// Reading the input or writing the output failed.
    #[error("i/o")]
    Io(#[from] io::Error),
}

/// Everything `run` needs, resolved from config or given directly.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tenant id.
    pub tenant: String,
    /// Source name used in resource ids (use the configured source's name to reproduce the
    /// daemon's ids).
    pub source: String,
    /// Facility time zone.
    pub timezone: TimeZone,
    /// Assigning authority → identifier system.
    pub identifier_systems: BTreeMap<String, String>,
    /// Base for minted systems.
    pub system_base: String,
    /// Print the report instead of the Bundle.
    pub report: bool,
}

impl Options {
    /// Without a config: tenant `default`, source `cli`, UTC, no identifier systems.
    pub fn standalone(report: bool) -> Options {
        Options {
            tenant: "default".to_owned(),
            source: "cli".to_owned(),
            timezone: TimeZone::UTC,
            identifier_systems: BTreeMap::new(),
            system_base: DEFAULT_SYSTEM_BASE.to_owned(),
            report,
        }
    }

    /// From a loaded config: the tenant named by `tenant` (or the only one), the source named
    /// by `source` (its tenant and time-zone override apply), else source name `cli`.
    pub fn from_config(
        config: &Config,
        tenant: Option<&str>,
        source: Option<&str>,
        report: bool,
    ) -> Result<Options, Error> {
        let source_cfg = match source {
            Some(name) => Some(
                config
                    .sources
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| Error::UnknownSource(name.to_owned()))?,
            ),
            None => None,
        };
        let tenant_id = tenant.or(source_cfg.map(|s| s.tenant.as_str()));
        let t = match tenant_id {
            Some(id) => config
                .tenant(id)
                .ok_or_else(|| Error::UnknownTenant(id.to_owned()))?,
            None => match config.tenants.as_slice() {
                [only] => only,
                _ => return Err(Error::AmbiguousTenant),
            },
        };
        let zone_name = source_cfg
            .and_then(|s| s.timezone.clone())
            .or_else(|| t.timezone.clone());
        let timezone = match zone_name {
            Some(z) => TimeZone::get(&z).map_err(|_| Error::TimeZone(z.clone()))?,
            None => TimeZone::system(),
        };
        Ok(Options {
            tenant: t.id.clone(),
            source: source_cfg.map_or_else(|| "cli".to_owned(), |s| s.name.clone()),
            timezone,
            identifier_systems: t.identifier_systems.clone(),
            system_base: DEFAULT_SYSTEM_BASE.to_owned(),
            report,
        })
    }
}

/// What `run` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages found in the input.
    pub messages: usize,
    /// Messages converted (one Bundle or report printed each).
    pub converted: usize,
    /// Messages not converted (listed on `err`).
    pub failed: usize,
}

/// Reads `path`, or stdin for `-`.
pub fn read_input(path: &str) -> io::Result<Vec<u8>> {
    if path == "-" {
        let mut buf = Vec::new();
        io::stdin().lock().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// Converts every message in `input`, writing one JSON line per converted message to `out`
/// and one line per failed message to `err`. The caller exits non-zero when
/// `Summary::failed > 0` or on `Err`.
pub fn run(
    opts: &Options,
    input: &[u8],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Summary, Error> {
    let batch = hl7::batch::split(input);
    if batch.messages.is_empty() {
        return Err(Error::NotHl7);
    }
    let ctx = Context {
        tenant: &opts.tenant,
        source: &opts.source,
        timezone: &opts.timezone,
        identifier_systems: &opts.identifier_systems,
        system_base: &opts.system_base,
    };
    let mut summary = Summary {
        messages: batch.messages.len(),
        ..Summary::default()
    };
    for (i, raw) in batch.messages.iter().enumerate() {
        match super::convert_bytes(&ctx, raw) {
            Ok(conv) => {
                let line = if opts.report {
                    serde_json::to_string(&conv.report).unwrap_or_default()
                } else {
                    conv.bundle.to_json()
                };
                writeln!(out, "{line}")?;
                summary.converted += 1;
            }
            Err(e) => {
                writeln!(err, "message {}: {e}", i + 1)?;
                summary.failed += 1;
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LAB|H|GW|H|20240105103005+0100||ORU^R01|C1|P|2.5.1\rPID|||M1^^^HOSP^MR||Doe^Jane\rOBR|1||F1|2345-7^Glucose^LN|||20240105090000+0100||||||||||||||||F\rOBX|1|NM|2345-7^Glucose^LN||5.6|mmol/L|3.9-5.8||||F\r";

    #[test]
    fn each_message_of_a_multi_message_file_gives_one_bundle_line() {
        let input = format!("{ORU}{}", ORU.replace("C1", "C2"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = run(
            &Options::standalone(false),
            input.as_bytes(),
            &mut out,
            &mut err,
        )
        .expect("converts");
        assert_eq!(
            s,
            Summary {
                messages: 2,
                converted: 2,
                failed: 0
            }
        );
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["resourceType"], "Bundle");
        }
    }

    #[test]
    fn report_flag_prints_the_report_instead_of_the_bundle() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(
            &Options::standalone(true),
            ORU.as_bytes(),
            &mut out,
            &mut err,
        )
        .expect("converts");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["obx_in"], 1);
        assert_eq!(v["observations_out"], 1);
    }

    #[test]
    fn input_that_is_not_hl7_is_an_error() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = run(
            &Options::standalone(false),
            b"hello world\n",
            &mut out,
            &mut err,
        )
        .expect_err("not HL7");
        assert!(matches!(e, Error::NotHl7));
    }

    #[test]
    fn unsupported_messages_are_listed_without_content_and_counted() {
        let input = "MSH|^~\\&|A|B|C|D|20240101||SIU^S12|X9|P|2.5\rPID|||SECRET\r";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = run(
            &Options::standalone(false),
            input.as_bytes(),
            &mut out,
            &mut err,
        )
        .expect("runs");
        assert_eq!(s.failed, 1);
        let e = String::from_utf8(err).expect("utf-8");
        assert_eq!(e, "message 1: message type SIU^S12 is not converted\n");
    }
}
