//! The daemon's side of the trail: one cheap, clonable handle that every part of the data path
//! records through, fire-and-forget (the writer thread makes each entry durable within one
//! group commit; nothing on the data path waits for the audit fsync, so a crash can lose at
//! most the entries of the last group, never a message). Invalid values (an identifier with
//! characters the trail does not admit) are left out of the scope rather than failing the
//! record. A disabled recorder (tests, tools) records nothing.

use super::{
    Action, Actor, ActorKind, Id, Outcome, PatientRef, Purpose, Record, Scope, Tenant, Trail,
};

/// What one record says, in the caller's terms.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    /// Tenant id (`None`: system-wide).
    pub tenant: Option<&'a str>,
    /// Who did it: a source name, `caregate`, an operator's address or token name.
    pub actor: &'a str,
    /// MSH-9 or `READING`/`ASTM`.
    pub message_type: Option<&'a str>,
    /// MSH-10.
    pub control_id: Option<&'a str>,
    /// Queue envelope id.
    pub envelope_id: Option<u64>,
    /// Patient identifier `system|value`, hashed before it is written.
    pub patient: Option<&'a str>,
    /// Request correlation id.
    pub correlation_id: Option<&'a str>,
    /// Failure reason code (`None`: success).
    pub failure: Option<&'a str>,
}

/// The handle.
#[derive(Clone, Default)]
pub struct Recorder {
    trail: Option<Trail>,
}

impl Recorder {
    /// Records into `trail`.
    pub fn new(trail: Trail) -> Recorder {
        Recorder { trail: Some(trail) }
    }

    /// Records nothing.
    pub fn disabled() -> Recorder {
        Recorder::default()
    }

    /// The trail, when enabled.
    pub fn trail(&self) -> Option<&Trail> {
        self.trail.as_ref()
    }

    /// Keyed hash of a patient identifier (`system|value`).
    pub fn patient_ref(&self, system_value: &str) -> Option<PatientRef> {
        let t = self.trail.as_ref()?;
        let (system, value) = system_value.split_once('|').unwrap_or(("", system_value));
        Some(t.patient_ref(system, value))
    }

    /// Appends one record (not awaited).
    pub fn record(&self, action: Action, kind: ActorKind, purpose: Purpose, e: Event<'_>) {
        let Some(trail) = &self.trail else {
            return;
        };
        let tenant = match e.tenant {
            None => Tenant::System,
            Some(t) => match Tenant::new(t) {
                Ok(t) => t,
                Err(_) => return,
            },
        };
        let Ok(actor) = Id::new(e.actor).or_else(|_| Id::new("unnamed")) else {
            return;
        };
        let scope = Scope {
            message_type: e.message_type.and_then(|m| Id::new(m).ok()),
            control_id: e.control_id.and_then(|c| Id::new(c).ok()),
            envelope_id: e.envelope_id,
            resource_ids: Vec::new(),
            patient: e.patient.and_then(|p| self.patient_ref(p)),
        };
        let outcome = match e.failure {
            None => Outcome::success(),
            Some(code) => match super::Code::new(code).or_else(|_| super::Code::new("other")) {
                Ok(c) => Outcome::failure(c),
                Err(_) => return,
            },
        };
        let mut record = Record::new(tenant, Actor::new(kind, actor), action, purpose)
            .scope(scope)
            .outcome(outcome);
        if let Some(c) = e.correlation_id.and_then(|c| Id::new(c).ok()) {
            record = record.correlation_id(c);
        }
        trail.append_detached(record);
    }

    /// Writes the shutdown checkpoint and stops the writer.
    pub async fn close(&self) {
        if let Some(t) = &self.trail {
            if let Err(e) = t.close().await {
                tracing::error!(error = %e, "closing the audit trail failed");
            }
        }
    }
}
