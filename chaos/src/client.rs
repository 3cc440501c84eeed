//! The admin API client the runner drives nodes with (SPEC 9.2).
//!
//! Role: one blocking HTTP client (reqwest) shared by the runner's threads, with a timeout on every
//! request, the admin token on every mutating one, and answers sorted into what the checkers need:
//! a 2xx body, a refusal with its SPEC reason, or no answer (the effect is unknown).
//!
//! Invariants: no request waits longer than its timeout (a SIGSTOPped node accepts connections
//! but never answers); bodies read are capped at [`MAX_BODY_BYTES`]; proxies from the environment
//! are ignored (every node is on 127.0.0.1).

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::record::OpResult;

/// Largest answer body read (a node's /metrics is well below it).
pub const MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
/// Connection timeout: a live loopback listener accepts at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What a request got back.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// 2xx with a JSON body (`Value::Null` when the body was empty or not JSON).
    Ok(Value),
    /// 4xx/5xx: `{"error","detail"}`.
    Refused {
        /// HTTP status.
        status: u16,
        /// The SPEC reason (`error` field), or `HttpNNN` when the body had none.
        reason: String,
        /// `detail`.
        detail: String,
    },
    /// Connection refused, reset or timed out.
    NoAnswer(String),
}

impl Reply {
    /// Whether it is a 404 (endpoint or object absent).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Refused { status: 404, .. })
    }

    /// The body of a 2xx.
    pub fn ok(&self) -> Option<&Value> {
        match self {
            Self::Ok(v) => Some(v),
            _ => None,
        }
    }
}

impl From<Reply> for OpResult {
    fn from(r: Reply) -> Self {
        match r {
            Reply::Ok(body) => OpResult::Ok { body },
            Reply::Refused { status, reason, detail } => OpResult::Refused { status, reason, detail },
            Reply::NoAnswer(error) => OpResult::Indeterminate { error },
        }
    }
}

/// The admin API client. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    http: reqwest::blocking::Client,
    token: String,
}

impl Admin {
    /// A client sending `token` on mutating requests.
    pub fn new(token: &str) -> Result<Self, String> {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http, token: token.to_string() })
    }

    fn finish(&self, sent: reqwest::Result<reqwest::blocking::Response>) -> (Option<u16>, Result<String, String>) {
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return (None, Err(describe(&e))),
        };
        let status = resp.status().as_u16();
        let mut body = String::new();
        match resp.take(MAX_BODY_BYTES).read_to_string(&mut body) {
            Ok(_) => (Some(status), Ok(body)),
            Err(e) => (Some(status), Err(format!("reading the body: {e}"))),
        }
    }

    fn reply(&self, sent: reqwest::Result<reqwest::blocking::Response>) -> Reply {
        match self.finish(sent) {
            (None, Err(e)) | (Some(_), Err(e)) => Reply::NoAnswer(e),
            (None, Ok(_)) => Reply::NoAnswer("no status".into()),
            (Some(status), Ok(body)) => {
                let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if (200..300).contains(&status) {
                    Reply::Ok(json)
                } else {
                    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
                    Reply::Refused {
                        status,
                        reason: field("error").unwrap_or_else(|| format!("Http{status}")),
                        detail: field("detail").unwrap_or_else(|| body.chars().take(200).collect()),
                    }
                }
            }
        }
    }

    /// `GET base+path`.
    pub fn get(&self, base: &str, path: &str, timeout: Duration) -> Reply {
        self.reply(self.http.get(format!("{base}{path}")).timeout(timeout).send())
    }

    /// `POST base+path` with a JSON body and the admin token.
    pub fn post(&self, base: &str, path: &str, body: &Value, timeout: Duration) -> Reply {
        self.reply(self.http.post(format!("{base}{path}")).bearer_auth(&self.token).json(body).timeout(timeout).send())
    }

    /// `DELETE base+path` with the admin token.
    pub fn delete(&self, base: &str, path: &str, timeout: Duration) -> Reply {
        self.reply(self.http.delete(format!("{base}{path}")).bearer_auth(&self.token).timeout(timeout).send())
    }

    /// `GET base/metrics` as text.
    pub fn metrics(&self, base: &str, timeout: Duration) -> Result<String, String> {
        match self.finish(self.http.get(format!("{base}/metrics")).timeout(timeout).send()) {
            (Some(200), Ok(text)) => Ok(text),
            (Some(s), _) => Err(format!("/metrics answered {s}")),
            (None, Err(e)) => Err(e),
            (None, Ok(_)) => Err("no status".into()),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_connect() {
        "connection refused".to_string()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
        s
    }
}

/// Sum of every sample of metric `name` (any labels) in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_labelled_samples_and_ignores_prefixes() {
        let text =
            "# HELP x\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_other 100\nprocess_resident_memory_bytes 4096\n";
        assert_eq!(metric_sum(text, "x_total"), Some(5.0));
        assert_eq!(metric_sum(text, "process_resident_memory_bytes"), Some(4096.0));
        assert_eq!(metric_sum(text, "absent"), None);
    }

    #[test]
    fn a_closed_port_is_no_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let admin = Admin::new("t").unwrap();
        let r = admin.get(&format!("http://{addr}"), "/livez", Duration::from_secs(2));
        assert!(matches!(r, Reply::NoAnswer(_)), "{r:?}");
    }

    #[test]
    fn a_silent_server_times_out() {
        // Accepts (the kernel does) but never answers, like a SIGSTOPped node.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = Admin::new("t").unwrap();
        let r = admin.get(&format!("http://{addr}"), "/livez", Duration::from_millis(300));
        assert_eq!(r, Reply::NoAnswer("timeout".into()));
        drop(listener);
    }
}
