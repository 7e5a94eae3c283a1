//! Service-manager notifications (`sd_notify(3)`): `READY=1`, `STATUS=…`, `STOPPING=1`,
//! `WATCHDOG=1`, and the watchdog interval systemd asks for. Thin wrappers over the pure-Rust
//! `sd-notify` crate (no libsystemd); the unit file is `systemd/caregate.service`
//! (`Type=notify`, `WatchdogSec=`).
//!
//! Every function does nothing and returns `Ok` when `NOTIFY_SOCKET` is unset: from a shell, in
//! tests, or under a service manager without `Type=notify`.
//!
//! What the caller must keep true (the wiring lives in `app`):
//! - [`ready`] only once the readiness latch is set (queue open, every listener bound): systemd
//!   starts units ordered after caregate, and `systemctl start` returns, on `READY=1`.
//! - [`watchdog`] from a task that proves the pipeline is alive, every [`watchdog_interval`];
//!   a free-running timer would keep a wedged gateway "healthy".
//! - [`stopping`] as the first step of the ordered shutdown.
//!
//! A failed notification is reported, never fatal: the caller logs it and carries on (systemd
//! then acts on the missing `READY=1` or `WATCHDOG=1` itself).

use std::time::Duration;

use sd_notify::NotifyState;

/// A notification that could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The datagram to `NOTIFY_SOCKET` failed (socket gone, permission, full buffer).
    #[error("sending {state} to the service manager")]
    Notify {
        /// The assignment that was being sent (`READY=1`, `STATUS=`, ...).
        state: &'static str,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
}

/// `READY=1`: startup is complete.
pub fn ready() -> Result<(), Error> {
    send("READY=1", &NotifyState::Ready)
}

/// `STATUS=line`: one line shown by `systemctl status`. Line breaks become spaces (a newline
/// would start a new assignment in the datagram). Never put message content here.
pub fn status(line: &str) -> Result<(), Error> {
    let line = line.replace(['\n', '\r'], " ");
    send("STATUS=", &NotifyState::Status(&line))
}

/// `RELOADING=1`: a configuration reload has begun; [`ready`] ends it.
pub fn reloading() -> Result<(), Error> {
    send("RELOADING=1", &NotifyState::Reloading)
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> Result<(), Error> {
    send("STOPPING=1", &NotifyState::Stopping)
}

/// `WATCHDOG=1`: the service is alive.
pub fn watchdog() -> Result<(), Error> {
    send("WATCHDOG=1", &NotifyState::Watchdog)
}

/// How often to send [`watchdog`]: half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
/// recommends), or `None` when systemd does not watch this process (`WatchdogSec=` unset,
/// `WATCHDOG_PID` naming another process, no `NOTIFY_SOCKET`, or a zero interval).
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

fn send(name: &'static str, state: &NotifyState<'_>) -> Result<(), Error> {
    sd_notify::notify(std::slice::from_ref(state)).map_err(|source| Error::Notify {
        state: name,
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The `sd-notify` crate reads `NOTIFY_SOCKET` and `WATCHDOG_*` from the environment, and
    //! the house rules forbid `set_var` in-process, so each scenario runs this test binary again
    //! as a child process with the environment set: the parent binds a real unix datagram socket
    //! and reads what the child sent. The `child_*` tests do their work only in that child
    //! (selected by `CHILD`) and pass trivially in a normal run.

    use std::os::unix::net::UnixDatagram;
    use std::process::Command;
    use std::time::Duration;

    use super::*;

    const CHILD: &str = "CAREGATE_SYSTEMD_TEST_CHILD";

    fn run_child(test: &str, configure: impl FnOnce(&mut Command)) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        configure(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "child {test} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The filter must have matched: a typo would run nothing and "pass".
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "child {test} ran no test"
        );
    }

    fn in_child() -> bool {
        std::env::var_os(CHILD).is_some()
    }

    #[test]
    fn notifications_arrive_as_datagrams_on_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();

        run_child("systemd::tests::child_sends_every_notification", |c| {
            c.env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "30000000");
        });

        let mut received = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            let n = socket.recv(&mut buf).unwrap();
            received.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        assert_eq!(
            received,
            [
                "READY=1\n",
                "STATUS=running: 2 sources queue open\n",
                "WATCHDOG=1\n",
                "STOPPING=1\n",
            ]
        );
        // Nothing else was sent.
        socket.set_nonblocking(true).unwrap();
        assert!(socket.recv(&mut buf).is_err());
    }

    #[test]
    fn child_sends_every_notification() {
        if !in_child() {
            return;
        }
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
        ready().unwrap();
        status("running: 2 sources\nqueue open").unwrap();
        watchdog().unwrap();
        stopping().unwrap();
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        run_child("systemd::tests::child_without_socket", |c| {
            c.env("WATCHDOG_USEC", "30000000");
        });
    }

    #[test]
    fn child_without_socket() {
        if !in_child() {
            return;
        }
        ready().unwrap();
        status("running").unwrap();
        watchdog().unwrap();
        stopping().unwrap();
        // A watchdog interval without a socket to report to would only start a useless task.
        assert_eq!(watchdog_interval(), None);
    }

    #[test]
    fn watchdog_for_another_process_or_of_zero_length_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let _socket = UnixDatagram::bind(&path).unwrap();
        run_child("systemd::tests::child_watchdog_not_ours", |c| {
            // PID 1 is never this test's child.
            c.env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "30000000")
                .env("WATCHDOG_PID", "1");
        });
        run_child("systemd::tests::child_watchdog_not_ours", |c| {
            c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "0");
        });
    }

    #[test]
    fn child_watchdog_not_ours() {
        if !in_child() {
            return;
        }
        assert_eq!(watchdog_interval(), None);
    }

    #[test]
    fn a_vanished_socket_is_an_error_naming_the_notification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        run_child("systemd::tests::child_socket_gone", |c| {
            c.env("NOTIFY_SOCKET", &path);
        });
    }

    #[test]
    fn child_socket_gone() {
        if !in_child() {
            return;
        }
        let e = ready().unwrap_err();
        assert_eq!(e.to_string(), "sending READY=1 to the service manager");
    }
}
