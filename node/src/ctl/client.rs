//! The HTTP client of `cohort ctl`: one blocking request at a time to one node's HTTP surface.
//!
//! Role: builds URLs under the node's base URL (path segments percent-encoded, so a registry name
//! with `/` or spaces stays one segment), sends the admin token on mutating requests only, and
//! sorts every outcome into what the command needs: a JSON answer with its status, or a
//! [`CtlError`] that says whether the node could not be reached, answered with an error, or
//! answered something that is not JSON.
//!
//! Invariants: no request waits longer than the timeout (a stopped node that accepts connections
//! but never answers is "no answer within ..."); bodies are read up to [`MAX_BODY_BYTES`];
//! proxies from the environment are ignored (a node's HTTP surface is reached directly).

use std::io::Read;
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use super::CtlError;

/// Largest answer body read. The biggest admin answers (a registry listing of 100k names) stay
/// well below it.
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// A parsed answer: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub body: Value,
}

/// A client for one node.
pub struct Client {
    http: reqwest::blocking::Client,
    base: Url,
    timeout: Duration,
}

/// Parse `--node`: `http://host:port[/prefix]` or `host:port` (http assumed).
pub fn parse_base(text: &str) -> Result<Url, String> {
    let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let url = Url::parse(&with_scheme).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "`{text}`: a node's HTTP surface is plain HTTP, this build has no TLS client (reach a node behind a TLS \
                 proxy through an SSH tunnel or a local port)"
            ));
        }
        other => return Err(format!("`{text}`: scheme `{other}` is not http")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}`: give the node's base URL, without `?` or `#`"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}`: no credentials in the URL (the admin token comes from a file or the environment)"
        ));
    }
    Ok(url)
}

impl Client {
    /// A client for the node at `base` (from [`parse_base`]).
    pub fn new(base: Url, timeout: Duration) -> Result<Self, CtlError> {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            .user_agent(concat!("cohort-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, timeout })
    }

    /// `base` + the path segments (each percent-encoded) + the query pairs.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// `GET`: the answer whatever its status (a 503 from `/readyz` is an answer too).
    pub fn get_any(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer, CtlError> {
        let url = self.url(segments, query);
        let what = format!("GET {}", url.path());
        self.finish(&what, self.http.get(url).send())
    }

    /// `GET`: the JSON of a 2xx answer; anything else is an error.
    pub fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value, CtlError> {
        let url = self.url(segments, query);
        let what = format!("GET {}", url.path());
        let answer = self.finish(&what, self.http.get(url).send())?;
        ok_or_refused(&what, answer)
    }

    /// `POST` a JSON body with the admin token: the JSON of a 2xx answer.
    pub fn post(&self, segments: &[&str], body: &Value, token: &str) -> Result<Value, CtlError> {
        let url = self.url(segments, &[]);
        let what = format!("POST {}", url.path());
        let answer = self.finish(&what, self.http.post(url).bearer_auth(token).json(body).send())?;
        ok_or_refused(&what, answer)
    }

    /// `DELETE` with the admin token: the JSON of a 2xx answer.
    pub fn delete(&self, segments: &[&str], token: &str) -> Result<Value, CtlError> {
        let url = self.url(segments, &[]);
        let what = format!("DELETE {}", url.path());
        let answer = self.finish(&what, self.http.delete(url).bearer_auth(token).send())?;
        ok_or_refused(&what, answer)
    }

    fn finish(&self, what: &str, sent: reqwest::Result<reqwest::blocking::Response>) -> Result<Answer, CtlError> {
        let response = sent.map_err(|e| self.unreachable(what, &e))?;
        let status = response.status().as_u16();
        let mut raw = Vec::new();
        response.take(MAX_BODY_BYTES + 1).read_to_end(&mut raw).map_err(|e| CtlError::Unreachable {
            node: self.base.to_string(),
            what: what.to_string(),
            reason: format!("the answer broke off: {e}"),
        })?;
        if raw.len() as u64 > MAX_BODY_BYTES {
            return Err(CtlError::BadAnswer {
                what: what.to_string(),
                problem: format!("the answer is larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        match serde_json::from_slice::<Value>(&raw) {
            Ok(body) => Ok(Answer { status, body }),
            // An error status with a body that is not JSON (a proxy's HTML page): keep its text.
            Err(_) if status >= 300 => {
                let text: String = String::from_utf8_lossy(&raw).chars().take(200).collect();
                Ok(Answer {
                    status,
                    body: serde_json::json!({ "error": format!("Http{status}"), "detail": text.trim() }),
                })
            }
            Err(e) => Err(CtlError::BadAnswer {
                what: what.to_string(),
                problem: format!("{status} with a body that is not JSON ({e})"),
            }),
        }
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> CtlError {
        let reason = if e.is_timeout() { format!("no answer within {}", seconds(self.timeout)) } else { innermost(e) };
        CtlError::Unreachable { node: self.base.to_string(), what: what.to_string(), reason }
    }
}

fn ok_or_refused(what: &str, answer: Answer) -> Result<Value, CtlError> {
    if (200..300).contains(&answer.status) {
        return Ok(answer.body);
    }
    Err(refusal(what, &answer))
}

/// The [`CtlError::Refused`] of an error answer `{"error","detail"}`.
pub fn refusal(what: &str, answer: &Answer) -> CtlError {
    let field = |k: &str| answer.body.get(k).and_then(Value::as_str).map(str::to_string);
    CtlError::Refused {
        what: what.to_string(),
        status: answer.status,
        reason: field("error").unwrap_or_else(|| format!("Http{}", answer.status)),
        detail: field("detail").unwrap_or_default(),
    }
}

/// The most specific message of an error chain ("Connection refused (os error 111)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(inner) = last.source() {
        last = inner;
    }
    let text = last.to_string();
    if text.is_empty() { e.to_string() } else { text }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0} s") } else { format!("{s} s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_default_to_http_and_refuse_what_cannot_work() {
        assert_eq!(parse_base("127.0.0.1:7480").unwrap().as_str(), "http://127.0.0.1:7480/");
        assert_eq!(parse_base("http://node-1:80/cohort").unwrap().as_str(), "http://node-1/cohort");
        assert!(parse_base("https://node:7480").unwrap_err().contains("plain HTTP"));
        assert!(parse_base("ftp://node").unwrap_err().contains("scheme"));
        assert!(parse_base("http://u:p@node:7480").unwrap_err().contains("credentials"));
        assert!(parse_base("http://node:7480/?x=1").unwrap_err().contains("base URL"));
        assert!(parse_base("http://").is_err());
        assert!(parse_base("node:notaport").is_err());
    }

    #[test]
    fn segments_are_encoded_under_the_base_path() {
        let c = Client::new(parse_base("http://127.0.0.1:1/prefix/").unwrap(), Duration::from_secs(1)).unwrap();
        let url = c.url(&["admin", "registry", "lookup", "a/b c?"], &[("tier", "consistent".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:1/prefix/admin/registry/lookup/a%2Fb%20c%3F?tier=consistent");
        let c = Client::new(parse_base("127.0.0.1:1").unwrap(), Duration::from_secs(1)).unwrap();
        assert_eq!(c.url(&["admin", "node"], &[]).as_str(), "http://127.0.0.1:1/admin/node");
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = Client::new(parse_base(&addr.to_string()).unwrap(), Duration::from_secs(2)).unwrap();
        let e = c.get(&["admin", "node"], &[]).unwrap_err();
        assert!(matches!(e, CtlError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot reach"), "{e}");
    }
}
