//! A signed HTTP client for the coordinator's API, shared by parties and
//! the operator's `shroud job` commands: every request is signed afresh,
//! and an unreachable, failing or restarting coordinator is retried with
//! exponential backoff up to a patience.

use std::time::Duration;

use rand_core::{OsRng, RngCore};
use reqwest::{Method, StatusCode};
use shroud_crypto::IdentityKey;

use axum::body::Bytes;

use super::api::ErrorBody;
use super::auth::{self, Signer};

#[derive(Debug)]
pub enum ClientError {
    /// The coordinator stayed unreachable longer than the patience.
    Unreachable(String),
    /// The coordinator refused a request.
    Refused { status: StatusCode, body: ErrorBody },
    /// Something this side will not do (wrong policy, bad data from the
    /// coordinator, …).
    Refusing(String),
    /// The coordinator's TLS certificate did not verify: no retry helps.
    Untrusted(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "the coordinator is unreachable: {m}"),
            ClientError::Refused { status, body } => write!(
                f,
                "the coordinator refused the request ({status}, {}): {}",
                body.error, body.message
            ),
            ClientError::Refusing(m) => f.write_str(m),
            ClientError::Untrusted(m) => write!(
                f,
                "the coordinator's TLS certificate is not trusted ({m}); give --ca the \
                 certificate the coordinator serves (its operator's server.crt from \
                 `shroud keygen --tls`), and connect by a name or address it lists"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: IdentityKey,
    signer: Signer,
    /// The consortium and coordinator name requests are signed for; asked
    /// of the coordinator (`/v1/info`) when not given.
    audience: Option<auth::Audience>,
    patience: Duration,
    retries: usize,
}

/// A request body. `Bytes` so that a retried request re-sends the same
/// buffer without copying it.
pub enum Body {
    Empty,
    Octets(Bytes),
    Json(Bytes),
}

impl Client {
    /// Sends a signed request, retrying (and re-signing) with backoff while
    /// the coordinator is unreachable, failing or restarting.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        job: &str,
        round: u32,
        body: Body,
    ) -> Result<reqwest::Response, ClientError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let audience = match &self.audience {
                Some(a) => a.clone(),
                None => match self.info().await {
                    Ok(info) => {
                        let a = auth::Audience::for_url(&info.consortium, &self.base);
                        self.audience = Some(a.clone());
                        a
                    }
                    Err(Unanswered::Untrusted(why)) => return Err(ClientError::Untrusted(why)),
                    Err(Unanswered::Other(why)) => {
                        if started.elapsed() > self.patience {
                            return Err(ClientError::Unreachable(why));
                        }
                        self.retries += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let (bytes, content_type) = match &body {
                Body::Empty => (Bytes::new(), None),
                Body::Octets(b) => (b.clone(), Some("application/octet-stream")),
                Body::Json(b) => (b.clone(), Some("application/json")),
            };
            let headers = auth::sign(
                &self.key,
                self.signer,
                &audience,
                method.as_str(),
                path,
                &bytes,
                job,
                u64::from(round),
            );
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(ct) = content_type {
                req = req.header(reqwest::header::CONTENT_TYPE, ct).body(bytes);
            }
            let why = match req.send().await {
                Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    let status = r.status();
                    let body = error_body(r).await;
                    if body.error != "signed_before_restart" {
                        return Err(ClientError::Refused { status, body });
                    }
                    body.message
                }
                Ok(r) => return Ok(r),
                Err(e) => match certificate_failure(&e) {
                    Some(why) => return Err(ClientError::Untrusted(why)),
                    None => e.to_string(),
                },
            };
            if started.elapsed() > self.patience {
                return Err(ClientError::Unreachable(why));
            }
            self.retries += 1;
            tracing::info!(path = %path, reason = %why, backoff_ms = backoff.as_millis() as u64,
                "retrying");
            let jitter = Duration::from_millis(OsRng.next_u64() % 50);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// What the coordinator says it serves (unsigned; used only to address
    /// signatures, which the coordinator checks against its own).
    async fn info(&self) -> Result<super::server::Info, Unanswered> {
        let r = self
            .http
            .get(format!("{}/v1/info", self.base))
            .send()
            .await
            .map_err(|e| match certificate_failure(&e) {
                Some(why) => Unanswered::Untrusted(why),
                None => Unanswered::Other(e.to_string()),
            })?;
        if !r.status().is_success() {
            return Err(Unanswered::Other(format!(
                "/v1/info answered {}",
                r.status()
            )));
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| Unanswered::Other(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| Unanswered::Other(format!("/v1/info: {e}")))
    }

    pub async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        job: &str,
    ) -> Result<T, ClientError> {
        let r = self.send(Method::GET, path, job, 0, Body::Empty).await?;
        json_answer(r, path).await
    }
}

/// Why a request got no answer.
enum Unanswered {
    Untrusted(String),
    Other(String),
}

/// The certificate error under a failed request, if that is what failed:
/// rustls's verdict on the coordinator's certificate, found down the
/// error's chain of causes.
fn certificate_failure(e: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(
            err @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)),
        ) = c.downcast_ref::<rustls::Error>()
        {
            return Some(err.to_string());
        }
        // An io::Error's source skips the error it wraps: step into it.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

async fn error_body(r: reqwest::Response) -> ErrorBody {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(ErrorBody {
        error: status.as_str().into(),
        message: text,
    })
}

pub async fn ok(r: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if r.status().is_success() {
        Ok(r)
    } else {
        let status = r.status();
        Err(ClientError::Refused {
            status,
            body: error_body(r).await,
        })
    }
}

/// The body of a successful answer; a refusal as its JSON error.
pub async fn ok_bytes(r: reqwest::Response) -> Result<Bytes, ClientError> {
    ok(r)
        .await?
        .bytes()
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))
}

/// The body of a successful answer, refused once it passes `max` bytes: a
/// coordinator cannot make a party hold more than its policy allows.
pub async fn ok_bytes_at_most(r: reqwest::Response, max: usize) -> Result<Vec<u8>, ClientError> {
    let too_long = |n: u64| {
        ClientError::Refusing(format!(
            "the coordinator's answer has at least {n} bytes; the policy allows at most {max}"
        ))
    };
    let mut r = ok(r).await?;
    if let Some(n) = r.content_length().filter(|&n| n > max as u64) {
        return Err(too_long(n));
    }
    let mut out = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))?
    {
        if out.len() + chunk.len() > max {
            return Err(too_long((out.len() + chunk.len()) as u64));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn json_answer<T: serde::de::DeserializeOwned>(
    r: reqwest::Response,
    path: &str,
) -> Result<T, ClientError> {
    serde_json::from_slice(&ok_bytes(r).await?)
        .map_err(|e| ClientError::Refusing(format!("the coordinator's answer to {path}: {e}")))
}

impl Client {
    /// A client signing as `signer` with `key`; `tls` trusts the
    /// coordinator's certificate (required for `https://`).
    pub fn new(
        base: &str,
        tls: Option<rustls::ClientConfig>,
        key: IdentityKey,
        signer: Signer,
        patience: Duration,
    ) -> Result<Client, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1);
        let tls = match tls {
            Some(tls) => tls,
            None if base.starts_with("https://") => {
                return Err(ClientError::Refusing(
                    "an https coordinator needs its certificate or CA (--ca)".into(),
                ))
            }
            None => super::tls::client_config_trusting_none(),
        };
        builder = builder.use_preconfigured_tls(tls);
        let http = builder
            .build()
            .map_err(|e| ClientError::Refusing(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            key,
            signer,
            audience: None,
            patience,
            retries: 0,
        })
    }

    /// Signs every request for `consortium` (the party's own policy says
    /// which), instead of asking the coordinator.
    pub fn for_consortium(mut self, consortium: &str) -> Client {
        self.audience = Some(auth::Audience::for_url(consortium, &self.base));
        self
    }

    /// Requests retried so far.
    pub fn retries(&self) -> usize {
        self.retries
    }

    /// A signed JSON POST.
    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        job: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let r = self
            .send(
                Method::POST,
                path,
                job,
                0,
                Body::Json(body.to_string().into()),
            )
            .await?;
        json_answer(r, path).await
    }
}
