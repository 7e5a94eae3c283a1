//! The status page on `GET /` of the admin listener: the `/status` document rendered on the
//! server as one self-contained HTML page (inline CSS, no script, no external resource),
//! refreshed by the browser every 5 s with `<meta http-equiv="refresh">`.
//!
//! It shows exactly what `/status` holds (counts, states, error classes, times), so no patient
//! data. Every string goes through [`html_escape`] even so: tenant and source names come from
//! the configuration file and error texts from the network.
//!
//! Why no templating crate: the page is three tables and a list; `format!` plus one escaping
//! function is less code than a template engine's setup, and nothing can reach the output
//! without passing through [`html_escape`] because only `Cell` values are written into cells.
//!
//! Cells carry `data-field` attributes and rows `data-tenant` / `data-source`, so the browser
//! test (tests/browser/status_page.mjs) finds numbers without depending on layout.

use std::fmt::Write as _;

use crate::status::{SourceStatus, Status, TenantStatus, Upstream};

/// Escapes the five characters that matter in HTML text and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table cell: the field name (for tests) and its text, escaped when written.
struct Cell<'a> {
    field: &'static str,
    text: String,
    class: &'a str,
}

fn cell(field: &'static str, text: impl ToString) -> Cell<'static> {
    Cell {
        field,
        text: text.to_string(),
        class: "",
    }
}

fn num(field: &'static str, n: u64) -> Cell<'static> {
    Cell {
        field,
        text: n.to_string(),
        class: "n",
    }
}

fn write_row(out: &mut String, attr: &str, key: &str, cells: &[Cell<'_>]) {
    let _ = write!(out, "<tr {attr}=\"{}\">", html_escape(key));
    write_cells(out, cells);
    out.push_str("</tr>\n");
}

fn write_cells(out: &mut String, cells: &[Cell<'_>]) {
    for c in cells {
        let _ = write!(
            out,
            "<td data-field=\"{}\" class=\"{}\">{}</td>",
            c.field,
            html_escape(c.class),
            html_escape(&c.text)
        );
    }
}

/// `93` → `1m 33s`; `None` → `-`.
fn age(seconds: Option<u64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        Some(s) if s < 86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        Some(s) => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".to_owned())
}

/// The CSS class of an upstream state (its colour).
fn state_class(state: &str) -> &'static str {
    match state {
        "ok" => "ok",
        "failing" | "half-open" => "warn",
        "open" => "bad",
        _ => "idle",
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
.meta{color:#666}table{border-collapse:collapse;background:#fff}\
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}th{background:#eee}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.badge{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-weight:600}\
.ok{background:#2e7d32}.warn{background:#ef6c00}.bad{background:#c62828}.idle{background:#757575}\
.totals{display:flex;gap:1em;flex-wrap:wrap}\
.total{background:#fff;border:1px solid #ddd;border-radius:.4em;padding:.5em 1em;min-width:7em}\
.total b{display:block;font-size:1.6em}\
ul.alerts li{color:#c62828;font-weight:600}.none{color:#2e7d32}";

/// Renders the page for `status`, stamped with `now` (RFC 3339).
pub fn render(status: &Status, now: &str) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>caregate status</title><style>{STYLE}</style></head><body>\n\
         <h1>caregate</h1><p class=\"meta\">version <span data-field=\"version\">{}</span> \
         · up {} · rendered {} · refreshes every 5 s · JSON: <a href=\"/status\">/status</a> \
         · metrics: <a href=\"/metrics\">/metrics</a></p>\n",
        html_escape(&status.version),
        html_escape(&age(Some(status.uptime_seconds))),
        html_escape(now),
    );
    totals(&mut out, status);
    alerts(&mut out, &status.tenants);
    sources(&mut out, &status.sources);
    upstreams(&mut out, &status.tenants);
    out.push_str("</body></html>\n");
    out
}

fn totals(out: &mut String, status: &Status) {
    let sum_s = |f: fn(&SourceStatus) -> u64| status.sources.iter().map(f).sum::<u64>();
    let sum_t = |f: fn(&TenantStatus) -> u64| status.tenants.iter().map(f).sum::<u64>();
    let items = [
        ("received", "received", sum_s(|s| s.received)),
        ("queued", "queued", sum_t(|t| t.queued)),
        ("forwarded", "forwarded", sum_t(|t| t.forwarded)),
        ("dead_letters", "dead letters", sum_t(|t| t.dead_letters)),
        ("rejected", "rejected", sum_s(|s| s.rejected)),
    ];
    out.push_str("<h2>Totals</h2><div class=\"totals\">");
    for (field, label, n) in items {
        let _ = write!(
            out,
            "<div class=\"total\"><b data-total=\"{field}\">{n}</b>{label}</div>"
        );
    }
    out.push_str("</div>\n");
}

fn alerts(out: &mut String, tenants: &[TenantStatus]) {
    out.push_str("<h2>Active alerts</h2>");
    let active: Vec<(&str, &Upstream)> = tenants
        .iter()
        .filter_map(|t| Some((t.tenant.as_str(), t.upstream.as_ref()?)))
        .filter(|(_, u)| u.alert_active)
        .collect();
    if active.is_empty() {
        out.push_str("<p class=\"none\" data-field=\"alerts\">none</p>\n");
        return;
    }
    out.push_str("<ul class=\"alerts\" data-field=\"alerts\">");
    for (tenant, u) in active {
        let _ = write!(
            out,
            "<li data-tenant=\"{}\">upstream of tenant {} is {} since {} (last error: {})</li>",
            html_escape(tenant),
            html_escape(tenant),
            html_escape(&u.state),
            html_escape(&opt(&u.failing_since)),
            html_escape(&opt(&u.last_error)),
        );
    }
    out.push_str("</ul>\n");
}

fn sources(out: &mut String, sources: &[SourceStatus]) {
    out.push_str(
        "<h2>Sources</h2><table id=\"sources\"><thead><tr><th>source</th><th>kind</th>\
         <th>tenant</th><th>connections</th><th>last received</th><th>received</th>\
         <th>queued</th><th>forwarded</th><th>dead letters</th><th>rejected</th>\
         <th>oldest queued</th></tr></thead><tbody>\n",
    );
    for s in sources {
        write_row(
            out,
            "data-source",
            &s.source,
            &[
                cell("source", &s.source),
                cell("kind", &s.kind),
                cell("tenant", &s.tenant),
                num("open_connections", s.open_connections),
                cell("last_received_at", opt(&s.last_received_at)),
                num("received", s.received),
                num("queued", s.queued),
                num("forwarded", s.forwarded),
                num("dead_letters", s.dead_letters),
                num("rejected", s.rejected),
                cell("oldest_queued_age", age(s.oldest_queued_age_seconds)),
            ],
        );
    }
    out.push_str("</tbody></table>\n");
}

fn upstreams(out: &mut String, tenants: &[TenantStatus]) {
    out.push_str(
        "<h2>Upstreams</h2><table id=\"upstreams\"><thead><tr><th>tenant</th><th>state</th>\
         <th>endpoint</th><th>queued</th><th>ready</th><th>oldest queued</th>\
         <th>forwarded</th><th>dead letters</th><th>last error</th><th>failing since</th>\
         <th>last success</th></tr></thead><tbody>\n",
    );
    for t in tenants {
        let (state, endpoint, last_error, failing_since, last_success) = match &t.upstream {
            None => (
                "none".to_owned(),
                "(stored only)".to_owned(),
                None,
                None,
                None,
            ),
            Some(u) => (
                if u.state.is_empty() {
                    "idle".to_owned()
                } else {
                    u.state.clone()
                },
                u.endpoint.clone(),
                u.last_error.clone().map(|e| match &u.last_error_at {
                    Some(at) => format!("{e} at {at}"),
                    None => e,
                }),
                u.failing_since.clone(),
                u.last_success_at.clone(),
            ),
        };
        let _ = write!(
            out,
            "<tr data-tenant=\"{}\"><td data-field=\"tenant\">{}</td>\
             <td data-field=\"state\"><span class=\"badge {}\">{}</span></td>",
            html_escape(&t.tenant),
            html_escape(&t.tenant),
            state_class(&state),
            html_escape(&state),
        );
        write_cells(
            out,
            &[
                cell("endpoint", endpoint),
                num("queued", t.queued),
                num("ready", t.ready),
                cell("oldest_queued_age", age(t.oldest_queued_age_seconds)),
                num("forwarded", t.forwarded),
                num("dead_letters", t.dead_letters),
                cell("last_error", opt(&last_error)),
                cell("failing_since", opt(&failing_since)),
                cell("last_success_at", opt(&last_success)),
            ],
        );
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escape_neutralises_markup_and_quotes() {
        assert_eq!(
            html_escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(html_escape("plain lab-1 é"), "plain lab-1 é");
        assert_eq!(html_escape(""), "");
        assert_eq!(html_escape("&amp;"), "&amp;amp;");
    }

    fn status_with(name: &str, error: &str) -> Status {
        Status {
            version: "1.2.3".into(),
            uptime_seconds: 4000,
            tenants: vec![TenantStatus {
                tenant: name.into(),
                queued: 5,
                ready: 3,
                dead_letters: 1,
                held: 0,
                oldest_queued_age_seconds: Some(93),
                forwarded: 40,
                dead_lettered: 1,
                upstream: Some(Upstream {
                    endpoint: "https://fhir.example/r4".into(),
                    state: "open".into(),
                    failing_since: Some("2026-01-01T00:00:00Z".into()),
                    last_error: Some(error.into()),
                    alert_active: true,
                    ..Upstream::default()
                }),
            }],
            sources: vec![SourceStatus {
                source: name.into(),
                tenant: name.into(),
                kind: "mllp".into(),
                received: 46,
                queued: 5,
                dead_letters: 1,
                rejected: 2,
                oldest_queued_age_seconds: None,
                forwarded: 40,
                dead_lettered: 1,
                open_connections: 3,
                last_received_at: Some("2026-01-01T00:00:05Z".into()),
            }],
        }
    }

    #[test]
    fn every_configured_or_remote_string_is_escaped() {
        let html = render(
            &status_with("<b>lab</b>", "HTTP 503 <img src=x onerror=alert(1)>"),
            "now",
        );
        assert!(!html.contains("<b>lab"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;b&gt;lab&lt;/b&gt;"), "{html}");
        assert!(
            html.contains("data-source=\"&lt;b&gt;lab&lt;/b&gt;\""),
            "{html}"
        );
    }

    #[test]
    fn numbers_states_and_alerts_are_rendered() {
        let html = render(&status_with("north", "HTTP 503"), "2026-01-01T00:00:10Z");
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("<b data-total=\"received\">46</b>"), "{html}");
        assert!(
            html.contains("<b data-total=\"dead_letters\">1</b>"),
            "{html}"
        );
        assert!(html.contains("<b data-total=\"rejected\">2</b>"), "{html}");
        assert!(
            html.contains("<td data-field=\"open_connections\" class=\"n\">3</td>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"badge bad\">open</span>"),
            "{html}"
        );
        assert!(html.contains(
            "upstream of tenant north is open since 2026-01-01T00:00:00Z (last error: HTTP 503)"
        ));
        assert!(html.contains("<td data-field=\"oldest_queued_age\" class=\"\">1m 33s</td>"));
        assert!(html.contains("up 1h 06m"));
    }

    #[test]
    fn no_alert_and_no_upstream_render_plainly() {
        let mut s = status_with("north", "x");
        s.tenants[0].upstream = None;
        let html = render(&s, "now");
        assert!(html.contains("data-field=\"alerts\">none</p>"));
        assert!(html.contains("<span class=\"badge idle\">none</span>"));
        assert!(html.contains("(stored only)"));
    }

    #[test]
    fn ages_are_short_and_readable() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(0)), "0s");
        assert_eq!(age(Some(3599)), "59m 59s");
        assert_eq!(age(Some(7260)), "2h 01m");
        assert_eq!(age(Some(90_000)), "1d 01h");
    }
}
