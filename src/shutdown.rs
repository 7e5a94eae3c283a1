//! Shutdown signalling: one [`Trigger`] fires, every clone of [`Shutdown`] sees it.
//!
//! Long-running tasks take a `Shutdown` and finish the work in hand when it fires (a connection
//! completes the frame it is reading, commits and ACKs it, then closes). `app` bounds the whole
//! sequence with a deadline.
//!
//! A [`Trigger::child`] stops one part (a source or a tenant's worker removed by a reload) and
//! still sees the whole gateway's shutdown.

use tokio::sync::watch;

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
    parent: Option<watch::Receiver<bool>>,
}

/// Observes the shutdown; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    parent: Option<watch::Receiver<bool>>,
}

/// A new trigger and its first observer.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx, parent: None }, Shutdown { rx, parent: None })
}

impl Trigger {
    /// Starts the shutdown. Idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Another observer.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            parent: self.parent.clone(),
        }
    }

    /// A trigger for one part: its observers see its own fire and this trigger's. (One level:
    /// a child of a child sees only its direct parent.)
    pub fn child(&self) -> Trigger {
        let (tx, _) = watch::channel(false);
        Trigger {
            tx,
            parent: Some(self.tx.subscribe()),
        }
    }
}

impl Shutdown {
    /// Whether the shutdown has started.
    pub fn is_cancelled(&self) -> bool {
        *self.rx.borrow() || self.parent.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Completes when the shutdown starts (at once if it already has, or if the trigger is gone).
    pub async fn cancelled(&mut self) {
        match &mut self.parent {
            None => {
                let _ = self.rx.wait_for(|v| *v).await;
            }
            Some(parent) => {
                tokio::select! {
                    _ = self.rx.wait_for(|v| *v) => {}
                    _ = parent.wait_for(|v| *v) => {}
                }
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            // Without signal handlers, fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_observer_sees_the_trigger() {
        let (t, mut a) = channel();
        let mut b = t.subscribe();
        assert!(!a.is_cancelled());
        t.fire();
        a.cancelled().await;
        b.cancelled().await;
        assert!(b.is_cancelled());
    }

    #[tokio::test]
    async fn a_child_fires_alone_and_with_its_parent() {
        let (parent, _) = channel();
        let one = parent.child();
        let two = parent.child();
        let (mut a, b) = (one.subscribe(), two.subscribe());
        one.fire();
        a.cancelled().await;
        assert!(!b.is_cancelled(), "a sibling must not stop");
        parent.fire();
        let mut b = b;
        b.cancelled().await;
        assert!(b.is_cancelled());
    }
}
