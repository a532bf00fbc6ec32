//! The coordinator's HTTP API on axum. Handlers are thin: authenticate
//! (the [`Signed`] extractor), check the path against what was signed, call
//! the [`Engine`] off the async workers, and map its answer; every error
//! becomes a status code and a JSON [`ErrorBody`] in [`ApiError`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::watch;
use utoipa::OpenApi;

use super::api::{ErrorBody, JobStatus, PartySetup, StartJob};
use super::auth::{body_hash, unix_now, AuthError, Claimed, CoordinatorNames, Signer, Verifier};
use super::metrics::Metrics;
use crate::coordinator::{Engine, ErrorKind, ServiceError};

/// Every route, as (method, path) in OpenAPI syntax; `/openapi.json` must
/// document exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/v1/info"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{job}"),
    ("post", "/v1/jobs/{job}/abort"),
    ("get", "/v1/jobs/{job}/setup"),
    ("get", "/v1/jobs/{job}/rounds/{round}/model"),
    ("get", "/v1/jobs/{job}/rounds/{round}/messages"),
    ("post", "/v1/jobs/{job}/rounds/{round}/messages"),
];

/// The largest request body the coordinator accepts for `policy`: the
/// bigger of a training or audit vector at 4 bytes a word, plus room for
/// key and share lists.
pub fn body_limit(policy: &crate::policy::Policy, plan: &crate::dp::plan::PrivacyPlan) -> usize {
    let words = plan
        .padded_dimension
        .max(crate::audit::counts_width(policy));
    words * 4 + 256 * 1024 + policy.parties.len() * 1024
}

/// Requests with a body read and handled at once, over all signers.
const BODIES_IN_FLIGHT: usize = 8;
/// Requests with a body one signer may have in flight at once.
const BODIES_PER_SIGNER: usize = 2;
/// How long an authenticated request waits for a body slot.
const SLOT_WAIT: Duration = Duration::from_secs(15);
/// Time allowed to read a body: this much, plus its length at
/// [`MIN_BODY_RATE`] bytes a second.
const BODY_TIME: Duration = Duration::from_secs(10);
const MIN_BODY_RATE: u64 = 256 * 1024;
/// Open connections, at most; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a connection has to send a request's headers (and the TLS
/// handshake to finish).
pub const HEADER_TIME: Duration = Duration::from_secs(10);

/// The header carrying a fetched message's sequence number.
pub const MESSAGE_SEQ: &str = "x-shroud-seq";

/// Longest a long-poll may wait.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Mutex<Engine>>,
    verifier: Arc<Mutex<Verifier>>,
    pub metrics: Arc<Metrics>,
    changed: watch::Sender<u64>,
    body_limit: usize,
    /// Requests with a body that may be read and held at once: the rest
    /// wait (TCP backpressure), bounding the memory vectors in flight take.
    /// Only authenticated requests take one.
    bodies: Arc<tokio::sync::Semaphore>,
    /// Each signer's own share of body slots, so that one signer's slow
    /// uploads hold no one else's.
    per_signer: Arc<Mutex<std::collections::HashMap<Signer, Arc<tokio::sync::Semaphore>>>>,
    info: Arc<Info>,
    /// `/metrics` is served on its own address (`serve --metrics-listen`),
    /// not here.
    metrics_elsewhere: bool,
}

/// What anyone may ask a coordinator: which consortium and policy it serves.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Info {
    pub consortium: String,
    pub policy_hash: String,
}

impl AppState {
    pub fn new(
        engine: Engine,
        operator: Option<shroud_crypto::IdentityPublicKey>,
        names: CoordinatorNames,
        metrics: Arc<Metrics>,
        body_limit: usize,
    ) -> AppState {
        let policy = engine.policy();
        let info = Info {
            consortium: policy.consortium.id.clone(),
            policy_hash: policy.hash.clone(),
        };
        let verifier = Verifier::new(
            policy.roster_keys(),
            operator,
            &policy.consortium.id,
            names,
            unix_now(),
        );
        let (changed, _) = watch::channel(engine.version());
        AppState {
            engine: Arc::new(Mutex::new(engine)),
            verifier: Arc::new(Mutex::new(verifier)),
            metrics,
            changed,
            body_limit,
            bodies: Arc::new(tokio::sync::Semaphore::new(BODIES_IN_FLIGHT)),
            per_signer: Arc::new(Mutex::new(std::collections::HashMap::new())),
            info: Arc::new(info),
            metrics_elsewhere: false,
        }
    }

    /// Moves `/metrics` off the API's address: see [`serve_metrics`].
    pub fn with_metrics_elsewhere(mut self) -> AppState {
        self.metrics_elsewhere = true;
        self
    }

    /// A body slot for `signer`: its own first, then one of the shared ones.
    async fn body_slot(&self, signer: Signer) -> Result<BodySlot, ApiError> {
        let own = self
            .per_signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(signer)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(BODIES_PER_SIGNER)))
            .clone();
        let own = own.try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("{signer} already has {BODIES_PER_SIGNER} requests with a body in flight"),
            )
        })?;
        let shared = tokio::time::timeout(SLOT_WAIT, self.bodies.clone().acquire_owned())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the coordinator is busy with other requests; try again",
                )
            })?
            .expect("the semaphore is never closed");
        Ok(BodySlot {
            _own: own,
            _shared: shared,
        })
    }

    /// Runs `f` on the engine on a blocking thread (unmasking may take
    /// seconds), then wakes long-polls if anything changed.
    pub async fn engine<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> T {
        let engine = self.engine.clone();
        let (out, version) = tokio::task::spawn_blocking(move || {
            let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut e);
            (out, e.version())
        })
        .await
        .expect("engine call panicked");
        self.changed.send_if_modified(|v| {
            let moved = *v != version;
            *v = version;
            moved
        });
        out
    }
}

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// Marks a refused response with its code, for the metrics layer.
#[derive(Clone, Copy)]
struct Refusal(&'static str);

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::UnknownJob => (StatusCode::NOT_FOUND, "unknown_job"),
            ErrorKind::WrongRound => (StatusCode::CONFLICT, "wrong_round"),
            ErrorKind::WrongPhase => (StatusCode::CONFLICT, "wrong_phase"),
            ErrorKind::InvalidMessage => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_message"),
            ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Replay => "replay",
            AuthError::UnknownSigner(_) => "unknown_signer",
            AuthError::BeforeRestart => "signed_before_restart",
            AuthError::WrongConsortium { .. } | AuthError::WrongCoordinator { .. } => {
                "wrong_audience"
            }
            _ => "unauthenticated",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: self.code.into(),
                message: self.message,
            }),
        )
            .into_response();
        r.extensions_mut().insert(Refusal(self.code));
        r
    }
}

/// Body slots held while a request with a body is read and handled.
struct BodySlot {
    _own: tokio::sync::OwnedSemaphorePermit,
    _shared: tokio::sync::OwnedSemaphorePermit,
}

/// An authenticated request: who signed it, what they signed, the body.
pub struct Signed {
    pub signer: Signer,
    pub job: String,
    pub round: u64,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    _slot: Option<BodySlot>,
}

impl Signed {
    /// The signed job and round must be the ones in the path.
    fn expect(&self, job: &str, round: u64) -> Result<(), ApiError> {
        if self.job != job || self.round != round {
            return Err(ApiError::invalid(format!(
                "the signed headers name job `{}` round {}, the path job `{job}` round {round}",
                self.job, self.round
            )));
        }
        Ok(())
    }

    fn party(&self) -> Result<u32, ApiError> {
        match self.signer {
            Signer::Party(id) => Ok(id),
            Signer::Operator => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only a party may do this",
            )),
        }
    }

    /// A party's request for `job`'s `round` (the path segment), checked
    /// against what it signed.
    fn party_round(&self, job: &str, round: &str) -> Result<(u32, u32), ApiError> {
        let party = self.party()?;
        let round = parse_round(round)?;
        self.expect(job, u64::from(round))?;
        Ok((party, round))
    }

    fn operator(&self) -> Result<(), ApiError> {
        match self.signer {
            Signer::Operator => Ok(()),
            Signer::Party(id) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("only the operator may do this, not party {id}"),
            )),
        }
    }

    fn content_type(&self, want: &str) -> Result<(), ApiError> {
        let got = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if got.split(';').next().map(str::trim) != Some(want) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                format!("the body must be {want}, got `{got}`"),
            ));
        }
        Ok(())
    }

    fn query(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(q) = self.path.split_once('?').map(|(_, q)| q) else {
            return Ok(None);
        };
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return v.parse().map(Some).map_err(|_| {
                    ApiError::invalid(format!("query `{name}` must be an unsigned integer"))
                });
            }
        }
        Ok(None)
    }
}

impl FromRequest<AppState> for Signed {
    type Rejection = ApiError;

    /// Authenticates from the headers alone, then takes a body slot, then
    /// reads the body (bounded in size and time) and checks it against its
    /// signed hash. Nothing unauthenticated reaches a slot or the body.
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let limit = state.body_limit;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
        let takes_body = parts.method == axum::http::Method::POST;
        if !takes_body && (declared.is_some_and(|n| n > 0) || chunked) {
            return Err(ApiError::invalid(format!(
                "{} requests carry no body",
                parts.method
            )));
        }
        let claim = Claimed::from_headers(|h| {
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })?;
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str())
            .to_string();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        let signer = state
            .verifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .verify(
                &claim,
                parts.method.as_str(),
                &path,
                host.as_deref(),
                unix_now(),
            )?;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body exceeds this coordinator's limit of {limit} bytes"),
            )
        };
        // Far beyond the limit: refuse without reading (the connection closes).
        if declared.is_some_and(|n| n > (limit + DRAIN_MAX) as u64) {
            return Err(too_large());
        }
        let (slot, body) = if takes_body {
            let slot = state.body_slot(signer).await?;
            let allowed =
                BODY_TIME + Duration::from_secs(declared.unwrap_or(limit as u64) / MIN_BODY_RATE);
            let body = tokio::time::timeout(allowed, read_bounded(body, limit))
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "too_slow",
                        format!("the body did not arrive within {} s", allowed.as_secs()),
                    )
                })??
                .ok_or_else(too_large)?;
            (Some(slot), body)
        } else {
            (None, Bytes::new())
        };
        Metrics::add(&state.metrics.bytes_received, body.len() as u64);
        if body_hash(&body) != claim.body_sha256 {
            return Err(ApiError::invalid(
                "the body does not match the SHA-256 its headers signed",
            ));
        }
        Ok(Signed {
            signer,
            job: claim.job,
            round: claim.round,
            path,
            headers: parts.headers,
            body,
            _slot: slot,
        })
    }
}

/// How much of an oversize body is read and dropped so that the client,
/// still sending, receives the 413 instead of a reset connection.
const DRAIN_MAX: usize = 16 << 20;

/// Reads a body of at most `limit` bytes; `None` when it was longer (the
/// excess, up to [`DRAIN_MAX`], read and dropped; memory stays bounded).
async fn read_bounded(mut body: axum::body::Body, limit: usize) -> Result<Option<Bytes>, ApiError> {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                kept.extend_from_slice(&data);
            } else if seen > limit + DRAIN_MAX {
                return Ok(None);
            }
        }
    }
    Ok((seen <= limit).then(|| Bytes::from(kept)))
}

fn octets(state: &AppState, bytes: Vec<u8>) -> Response {
    Metrics::add(&state.metrics.bytes_sent, bytes.len() as u64);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        bytes,
    )
        .into_response()
}

/// The `{round}` path segment, refused as JSON when it is not a round.
fn parse_round(s: &str) -> Result<u32, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(format!("round `{s}` is not an unsigned 32-bit integer")))
}

fn wait_of(s: &Signed) -> Result<Duration, ApiError> {
    Ok(Duration::from_millis(s.query("wait_ms")?.unwrap_or(0)).min(MAX_WAIT))
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The coordinator is up.")))]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = Info, description = "The consortium and policy this coordinator serves (no signature needed).")))]
async fn info(State(s): State<AppState>) -> Json<Info> {
    Json((*s.info).clone())
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition: rounds, dropouts, bytes, refusals.", content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> Response {
    if s.metrics_elsewhere {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are served on the coordinator's --metrics-listen address",
        )
        .into_response();
    }
    render_metrics(&s.metrics)
}

fn render_metrics(m: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        m.render(),
    )
        .into_response()
}

/// Serves `GET /metrics` alone, over plain HTTP on its own address, for a
/// scraper on a network the API's clients do not reach.
pub async fn serve_metrics(
    metrics: Arc<Metrics>,
    listener: std::net::TcpListener,
    handle: axum_server::Handle,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { render_metrics(&m) }
        }),
    );
    listener.set_nonblocking(true)?;
    axum_server::from_tcp(listener)
        .acceptor(LimitedAcceptor::new(64))
        .handle(handle)
        .serve(app.into_make_service())
        .await
}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document.")))]
async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("document serialises"),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = [JobStatus]), (status = 401, body = ErrorBody)))]
async fn list_jobs(
    State(s): State<AppState>,
    req: Signed,
) -> Result<Json<Vec<JobStatus>>, ApiError> {
    req.expect("", 0)?;
    Ok(Json(s.engine(|e| e.jobs()).await?))
}

#[utoipa::path(post, path = "/v1/jobs", request_body = StartJob,
    responses((status = 201, body = JobStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn start_job(
    State(s): State<AppState>,
    req: Signed,
) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    req.operator()?;
    req.content_type("application/json")?;
    let start: StartJob = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid job request: {e}")))?;
    req.expect(&start.job, 0)?;
    let now = Instant::now();
    let status = s.engine(move |e| e.start_job(start, now)).await?;
    Ok((StatusCode::CREATED, Json(status)))
}

#[utoipa::path(get, path = "/v1/jobs/{job}",
    params(("job" = String, Path, description = "Job id"),
           ("after" = Option<u64>, Query, description = "Wait until the status version differs from this"),
           ("wait_ms" = Option<u64>, Query, description = "Longest wait, at most 30000")),
    responses((status = 200, body = JobStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_status(
    State(s): State<AppState>,
    Path(job): Path<String>,
    req: Signed,
) -> Result<Json<JobStatus>, ApiError> {
    req.expect(&job, 0)?;
    if let Some(after) = req.query("after")? {
        let mut rx = s.changed.subscribe();
        if *rx.borrow_and_update() == after {
            let _ = tokio::time::timeout(wait_of(&req)?, rx.changed()).await;
        }
    }
    Ok(Json(s.engine(move |e| e.status(&job)).await?))
}

#[utoipa::path(post, path = "/v1/jobs/{job}/abort", params(("job" = String, Path, description = "Job id")),
    responses((status = 200, body = JobStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn abort_job(
    State(s): State<AppState>,
    Path(job): Path<String>,
    req: Signed,
) -> Result<Json<JobStatus>, ApiError> {
    req.operator()?;
    req.expect(&job, 0)?;
    Ok(Json(s.engine(move |e| e.abort_job(&job)).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{job}/setup", params(("job" = String, Path, description = "Job id")),
    responses((status = 200, body = PartySetup), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn party_setup(
    State(s): State<AppState>,
    Path(job): Path<String>,
    req: Signed,
) -> Result<Json<PartySetup>, ApiError> {
    let party = req.party()?;
    req.expect(&job, 0)?;
    Ok(Json(s.engine(move |e| e.setup(&job, party)).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{job}/rounds/{round}/model",
    params(("job" = String, Path, description = "Job id"), ("round" = u32, Path, description = "Round being collected")),
    responses((status = 200, description = "The parameters this party starts the round from (its strategy's downlink), little-endian f64", content_type = "application/octet-stream"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn round_model(
    State(s): State<AppState>,
    Path((job, round)): Path<(String, String)>,
    req: Signed,
) -> Result<Response, ApiError> {
    let (party, round) = req.party_round(&job, &round)?;
    let params = s.engine(move |e| e.model(&job, party, round)).await?;
    Ok(octets(
        &s,
        params.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ))
}

#[utoipa::path(post, path = "/v1/jobs/{job}/rounds/{round}/messages",
    params(("job" = String, Path, description = "Job id"), ("round" = u32, Path, description = "Round being collected")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "One protocol message in the versioned binary codec"),
    responses((status = 202, description = "Accepted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn post_message(
    State(s): State<AppState>,
    Path((job, round)): Path<(String, String)>,
    req: Signed,
) -> Result<StatusCode, ApiError> {
    let (party, round) = req.party_round(&job, &round)?;
    req.content_type("application/octet-stream")?;
    let now = Instant::now();
    let body = req.body;
    s.engine(move |e| e.post_message(&job, party, round, &body, now))
        .await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(get, path = "/v1/jobs/{job}/rounds/{round}/messages",
    params(("job" = String, Path, description = "Job id"), ("round" = u32, Path, description = "Round being collected"),
           ("after" = Option<u64>, Query, description = "Sequence number of the last message received: acknowledges it and every one before"),
           ("wait_ms" = Option<u64>, Query, description = "Wait up to this long for a message, at most 30000")),
    responses((status = 200, description = "The next protocol message for this party; its sequence number is in the x-shroud-seq header, and it is sent again until a later request acknowledges it", content_type = "application/octet-stream"),
              (status = 204, description = "No message yet"), (status = 409, body = ErrorBody)))]
async fn next_message(
    State(s): State<AppState>,
    Path((job, round)): Path<(String, String)>,
    req: Signed,
) -> Result<Response, ApiError> {
    let (party, round) = req.party_round(&job, &round)?;
    let after = req.query("after")?.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + wait_of(&req)?;
    let mut rx = s.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let j = job.clone();
        if let Some((seq, m)) = s
            .engine(move |e| e.next_message(&j, party, round, after))
            .await?
        {
            let mut r = octets(&s, m);
            r.headers_mut().insert(
                MESSAGE_SEQ,
                HeaderValue::from_str(&seq.to_string()).expect("digits"),
            );
            return Ok(r);
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shroud coordinator",
        description = "Secure aggregation with distributed differential privacy. Every /v1 request but /v1/info is signed with the caller's ed25519 identity over method, path, body SHA-256, consortium, coordinator name, job, round, timestamp and nonce (headers x-shroud-*), and authenticated from its headers before any body is read."
    ),
    paths(
        healthz,
        info,
        metrics,
        openapi,
        list_jobs,
        start_job,
        job_status,
        abort_job,
        party_setup,
        round_model,
        post_message,
        next_message
    ),
    components(schemas(StartJob, JobStatus, PartySetup, ErrorBody, Info))
)]
pub struct ApiDoc;

async fn count(State(s): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut r = next.run(req).await;
    // The router's own 405 has no body: answer it like every other refusal.
    if r.status() == StatusCode::METHOD_NOT_ALLOWED && r.extensions().get::<Refusal>().is_none() {
        let allow = r.headers().get(header::ALLOW).cloned();
        r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method; see /openapi.json",
        )
        .into_response();
        if let Some(a) = allow {
            r.headers_mut().insert(header::ALLOW, a);
        }
    }
    Metrics::add(&s.metrics.requests, 1);
    if let Some(Refusal(code)) = r.extensions().get::<Refusal>() {
        s.metrics.refused(code);
        tracing::warn!(%method, path = %path, status = r.status().as_u16(), code = *code, "request refused");
    }
    r
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/info", get(info))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/jobs", get(list_jobs).post(start_job))
        .route("/v1/jobs/{job}", get(job_status))
        .route("/v1/jobs/{job}/abort", post(abort_job))
        .route("/v1/jobs/{job}/setup", get(party_setup))
        .route("/v1/jobs/{job}/rounds/{round}/model", get(round_model))
        .route(
            "/v1/jobs/{job}/rounds/{round}/messages",
            get(next_message).post(post_message),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Closes phases at their deadlines, for as long as the server runs.
pub async fn run_ticker(state: AppState) {
    loop {
        let next = state.engine(|e| e.next_deadline()).await;
        let wait = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        tokio::time::sleep(wait).await;
        let now = Instant::now();
        state.engine(move |e| e.tick(now)).await;
    }
}

/// Per-connection bounds: each connection's read buffer is capped (left to
/// grow, every party's connection keeps a buffer the size of its largest
/// vector), and a connection that does not deliver a request's headers in
/// [`HEADER_TIME`] is closed (slowloris).
fn bound_connections(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    b.http1()
        .max_buf_size(64 * 1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIME);
}

/// Accepts at most [`MAX_CONNECTIONS`] connections at once: each holds a
/// permit for its lifetime, and a connection arriving when none is left is
/// closed at once rather than queued.
#[derive(Clone)]
pub struct LimitedAcceptor {
    slots: Arc<tokio::sync::Semaphore>,
}

impl LimitedAcceptor {
    pub fn new(max: usize) -> LimitedAcceptor {
        LimitedAcceptor {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }
}

/// A connection holding its slot.
pub struct Limited<S> {
    inner: S,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Limited<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<I, S> axum_server::accept::Accept<I, S> for LimitedAcceptor {
    type Stream = Limited<I>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Limited<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok((
                Limited {
                    inner: stream,
                    _slot: slot,
                },
                service,
            )),
            Err(_) => Err(std::io::Error::other("too many open connections")),
        })
    }
}

/// How the server listens.
pub enum Listen {
    Tls(Arc<rustls::ServerConfig>),
    InsecureHttp,
}

/// Serves until `handle` is told to shut down; reports the bound address
/// through `handle.listening()`.
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    listen: Listen,
    handle: axum_server::Handle,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let ticker = tokio::spawn(run_ticker(state));
    let result = match listen {
        Listen::Tls(cfg) => {
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(
                axum_server::tls_rustls::RustlsConfig::from_config(cfg),
            )
            .handshake_timeout(HEADER_TIME)
            .acceptor(LimitedAcceptor::new(MAX_CONNECTIONS));
            let mut server = axum_server::bind(addr).acceptor(tls);
            bound_connections(server.http_builder());
            server.handle(handle).serve(app.into_make_service()).await
        }
        Listen::InsecureHttp => {
            let mut server =
                axum_server::bind(addr).acceptor(LimitedAcceptor::new(MAX_CONNECTIONS));
            bound_connections(server.http_builder());
            server.handle(handle).serve(app.into_make_service()).await
        }
    };
    ticker.abort();
    result
}
