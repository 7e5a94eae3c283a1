//! A real FHIR R4 server for interop tests: `tests/fhir-server/server.mjs` (Node,
//! `@medplum/fhir-router` in memory) over HTTPS with the test PKI's server certificate, and its
//! plain-HTTP control plane (fault injection, request log, resource counts, token control).
//!
//! Needs `node` and `tests/fhir-server/node_modules` (`scripts/setup.sh` runs `npm ci`). Without
//! them, [`FhirServer::start`] prints a `SKIP:` line and returns `None`, unless
//! `CAREGATE_REQUIRE_INTEROP=1` (set by `scripts/ci.sh`), which makes it panic instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Pki;

/// How the server authenticates FHIR requests; both `None` means open.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Every `/fhir` request needs `Authorization: Bearer <this>`.
    pub bearer: Option<String>,
    /// `(client_id, client_secret)`: `POST /oauth/token` issues tokens, `/fhir` requires one.
    pub oauth: Option<(String, String)>,
}

/// A fault the server injects until changed (see `POST /fault` in server.mjs).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Fault {
    /// Normal service; listens again on the same port after `Refuse`.
    None,
    /// Closes the listener and drops open connections: connects get ECONNREFUSED.
    Refuse,
    /// Answers FHIR requests with `status` and an OperationOutcome.
    Status {
        status: u16,
        /// Sent as the `Retry-After` header when set.
        retry_after: Option<String>,
        /// For this many (matching) requests; `None` until changed.
        count: Option<u32>,
        /// Only requests whose body contains this substring.
        #[serde(rename = "match")]
        matching: Option<String>,
    },
    /// Works, but each FHIR request waits `ms` first (a slow link or a busy server).
    Slow { ms: u64 },
}

impl Fault {
    /// `status` for every FHIR request until changed.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
            count: None,
            matching: None,
        }
    }
}

/// One request the server received (FHIR and `/oauth/token`), in arrival order.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestLog {
    pub method: String,
    /// Path and query, e.g. `/fhir` or `/fhir/Patient?identifier=…`.
    pub path: String,
    /// Status answered (0 while in flight).
    pub status: u16,
    /// The `X-Request-ID` header.
    pub request_id: Option<String>,
    /// The `Authorization` scheme (`Bearer`, `Basic`), never the credential.
    pub auth: Option<String>,
    /// `1.1` or `2`.
    pub http_version: String,
    /// Bundle entries, for a Bundle POSTed to the base.
    pub entries: Option<u64>,
    /// What the request asked for: `PUT Observation/<id>`, `POST Patient?identifier=…`.
    pub touched: Vec<String>,
    /// `Type/id` of each resource the server answered with (on success).
    pub locations: Vec<String>,
}

/// A running server; killed on drop (and it exits by itself when its stdin closes).
pub struct FhirServer {
    child: Child,
    port: u16,
    control: String,
    http: reqwest::Client,
    ca: PathBuf,
    options: Options,
}

fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-server")
}

/// `None` after a visible skip line, or a panic when interop tests are required.
fn unavailable(why: &str) -> Option<FhirServer> {
    if std::env::var_os("CAREGATE_REQUIRE_INTEROP").is_some_and(|v| v == "1") {
        panic!("CAREGATE_REQUIRE_INTEROP=1 but {why}; run scripts/setup.sh");
    }
    eprintln!("SKIP: FHIR server interop test: {why} (run scripts/setup.sh)");
    None
}

impl FhirServer {
    /// Starts `server.mjs` with the PKI's server certificate on a free port.
    pub async fn start(pki: &Pki, options: Options) -> Option<FhirServer> {
        let dir = server_dir();
        let node_ok = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !node_ok {
            return unavailable("node is not installed");
        }
        if !dir.join("node_modules/@medplum/fhir-router").is_dir() {
            return unavailable("tests/fhir-server/node_modules is missing");
        }
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .arg("--cert")
            .arg(&pki.server_cert)
            .arg("--key")
            .arg(&pki.server_key)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = &options.bearer {
            cmd.args(["--bearer", token]);
        }
        if let Some((id, secret)) = &options.oauth {
            cmd.args(["--client-id", id, "--client-secret", secret]);
        }
        let mut child = cmd.spawn().expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep the pipe drained
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("reader task");
        let line = match line {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("fhir-server did not print its ports: {other:?}");
            }
        };
        let ports: Value = serde_json::from_str(&line).expect("fhir-server prints JSON");
        let port = |k: &str| u16::try_from(ports[k].as_u64().expect("port")).expect("port");
        Some(FhirServer {
            port: port("port"),
            control: format!("http://127.0.0.1:{}", port("control")),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            ca: pki.ca.clone(),
            options,
            child,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://localhost:PORT/fhir`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}/fhir", self.port)
    }

    /// An HTTPS client that trusts only the test CA (h2 by ALPN unless `http1_only`).
    pub fn client(&self, http1_only: bool) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        let ca = reqwest::Certificate::from_pem(&pem).unwrap();
        let builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .timeout(Duration::from_secs(30));
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.control))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "control {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.control))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "control {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap()
    }

    /// Sets the fault; returns once it is in effect (listener closed or listening again).
    pub async fn set_fault(&self, fault: Fault) {
        self.post("/fault", serde_json::to_value(fault).unwrap())
            .await;
    }

    /// Every request received since start or the last reset.
    pub async fn requests(&self) -> Vec<RequestLog> {
        serde_json::from_value(self.get("/requests").await).unwrap()
    }

    /// Resources of `resource_type` currently stored.
    pub async fn count(&self, resource_type: &str) -> u64 {
        self.get(&format!("/count/{resource_type}")).await["count"]
            .as_u64()
            .unwrap()
    }

    /// `GET [base]/<type>?<query>` over HTTPS, authenticated as the server requires; the Bundle.
    /// (It shows up in [`FhirServer::requests`] like any other request.)
    pub async fn search(&self, resource_type: &str, query: &str) -> Value {
        let client = self.client(false);
        let mut req = client.get(format!("{}/{resource_type}?{query}", self.base_url()));
        if let Some(token) = &self.options.bearer {
            req = req.bearer_auth(token);
        } else if self.options.oauth.is_some() {
            req = req.bearer_auth(self.token(&client).await);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "search {resource_type}?{query}");
        resp.json().await.unwrap()
    }

    /// `POST [base]/<type>` (a create) over HTTPS, as the platform's own services would; the
    /// stored resource.
    pub async fn create(&self, resource: Value) -> Value {
        let client = self.client(false);
        let ty = resource["resourceType"].as_str().unwrap().to_owned();
        let mut req = client
            .post(format!("{}/{ty}", self.base_url()))
            .header("content-type", "application/fhir+json")
            .json(&resource);
        if let Some(token) = &self.options.bearer {
            req = req.bearer_auth(token);
        } else if self.options.oauth.is_some() {
            req = req.bearer_auth(self.token(&client).await);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "create {ty}: {status} {body}");
        body
    }

    /// A fresh access token from `POST /oauth/token` (client credentials in the form).
    pub async fn token(&self, client: &reqwest::Client) -> String {
        let (id, secret) = self.options.oauth.clone().expect("started with oauth");
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", "system/*.write"),
        ];
        let resp = client
            .post(format!("https://localhost:{}/oauth/token", self.port))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "token request");
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Clears stored resources and the request log (faults and tokens stay).
    pub async fn reset(&self) {
        self.post("/reset", Value::Null).await;
    }

    /// Lifetime of tokens issued from now on.
    pub async fn token_ttl(&self, seconds: u64) {
        self.post("/token_ttl", serde_json::json!({ "seconds": seconds }))
            .await;
    }

    /// Invalidates every issued token.
    pub async fn revoke_tokens(&self) {
        self.post("/revoke_tokens", Value::Null).await;
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
