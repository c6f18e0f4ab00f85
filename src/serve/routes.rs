//! The HTTP surface: TensorFlow Serving's `/v1/models/...` paths, `/healthz`, `/metrics`,
//! and a middleware that times every request out and counts it.

use super::documents;
use super::json::{self, SIGNATURE};
use super::registry::Servable;
use super::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Bodies larger than this are parsed on a blocking thread, not on the async workers.
const PARSE_INLINE_MAX: usize = 256 << 10;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models/{*rest}", any(models))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // The predict handler reads its body itself, limit included (see `read_body`).
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// An error answer: `{"error": "..."}` with a status code, as TensorFlow Serving sends them.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, m)
    }
    fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message }).to_string();
        (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn json_response(body: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What a `/v1/models/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Status,
    Metadata,
    Predict,
    /// `:classify`, `:regress`: TensorFlow Serving verbs a Kiln model has no signature for.
    Unsupported(String),
}

#[derive(Debug, PartialEq, Eq)]
struct ModelPath {
    name: String,
    version: Option<u64>,
    kind: Kind,
}

/// Parses what follows `/v1/models/`: `NAME[/versions/N][/metadata | :predict]`.
fn parse_path(rest: &str) -> Result<ModelPath, ApiError> {
    let malformed = || {
        ApiError::not_found(format!(
            "malformed request path /v1/models/{rest}: expected /v1/models/NAME[/versions/N], \
             then nothing, /metadata or :predict"
        ))
    };
    let (path, verb) = match rest.rsplit_once(':') {
        Some((p, v)) if !v.contains('/') => (p, Some(v)),
        Some(_) => return Err(malformed()),
        None => (rest, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let Some((&name, tail)) = segments.split_first() else { return Err(malformed()) };
    if name.is_empty() {
        return Err(malformed());
    }
    let (version, tail) = match tail {
        ["versions", v, tail @ ..] => {
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
            (Some(v.parse::<u64>().ok().filter(|_| ok).ok_or_else(malformed)?), tail)
        }
        ["labels", label, ..] => {
            return Err(ApiError::not_found(format!(
                "version label \"{label}\" not found: Kiln has no version labels, use /versions/N"
            )))
        }
        tail => (None, tail),
    };
    let kind = match (tail, verb) {
        ([], None) => Kind::Status,
        (["metadata"], None) => Kind::Metadata,
        ([], Some("predict")) => Kind::Predict,
        ([], Some(v @ ("classify" | "regress"))) => Kind::Unsupported(v.to_string()),
        _ => return Err(malformed()),
    };
    Ok(ModelPath { name: name.to_string(), version, kind })
}

/// The servable a path names: a given version, or the highest.
fn resolve(st: &AppState, p: &ModelPath) -> Result<Arc<Servable>, ApiError> {
    let reg = &st.registry;
    if p.name != reg.name {
        return Err(ApiError::not_found(format!(
            "model \"{}\" not found: this server serves \"{}\"",
            p.name, reg.name
        )));
    }
    let found = match p.version {
        Some(v) => reg.get(v),
        None => reg.latest(),
    };
    found.ok_or_else(|| {
        let which = p.version.map_or("any version".to_string(), |v| format!("version {v}"));
        ApiError::not_found(format!(
            "model \"{}\" has no {which} loaded (loaded versions: {:?})",
            reg.name,
            reg.loaded_versions()
        ))
    })
}

async fn models(State(st): State<Arc<AppState>>, method: Method, uri: Uri, body: Body) -> Result<Response, ApiError> {
    let rest = uri.path().strip_prefix("/v1/models/").unwrap_or("");
    let p = parse_path(rest)?;
    match (&p.kind, method) {
        (Kind::Status, Method::GET) => status(&st, &p),
        (Kind::Metadata, Method::GET) => metadata(&st, &p),
        (Kind::Predict, Method::POST) => predict(&st, &p, body).await,
        (Kind::Unsupported(verb), _) => {
            resolve(&st, &p)?;
            Err(ApiError::bad_request(format!(
                ":{verb} is not supported: the model has only the predict signature \"{SIGNATURE}\"; use :predict"
            )))
        }
        (Kind::Predict, m) => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{m} on :predict: use POST"))),
        (_, m) => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{m} on {}: use GET", uri.path()))),
    }
}

fn status(st: &AppState, p: &ModelPath) -> Result<Response, ApiError> {
    let versions = match p.version {
        Some(_) => vec![resolve(st, p)?.version],
        None => {
            resolve(st, p)?;
            st.registry.loaded_versions()
        }
    };
    json_doc(&documents::status(&versions))
}

fn metadata(st: &AppState, p: &ModelPath) -> Result<Response, ApiError> {
    let s = resolve(st, p)?;
    json_doc(&documents::metadata(&st.registry.name, s.version, &s.input_shape, &s.output_shape))
}

fn json_doc(doc: &impl serde::Serialize) -> Result<Response, ApiError> {
    serde_json::to_vec(doc).map(json_response).map_err(|e| ApiError::internal(e.to_string()))
}

/// The request body, at most `limit` bytes; past it, 413 — but only after reading what the
/// client sends (up to 4x the limit, at least 64 MiB), discarding it. Answering at once
/// and closing with the body unread made the client's write fail (broken pipe, or a reset
/// that drops the 413 before it is read) instead of showing it the 413.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let drain_max = limit.saturating_mul(4).max(64 << 20);
    let (mut body, mut buf, mut seen) = (body, Vec::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > drain_max {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

async fn predict(st: &AppState, p: &ModelPath, body: Body) -> Result<Response, ApiError> {
    // The body first, whatever the answer: see `read_body`.
    let body = read_body(body, st.cfg.max_body_bytes).await?;
    let servable = resolve(st, p)?;
    let shape = servable.input_shape.clone();
    let input = if body.len() <= PARSE_INLINE_MAX {
        json::parse_predict(&body, &shape)
    } else {
        tokio::task::spawn_blocking(move || json::parse_predict(&body, &shape))
            .await
            .map_err(|e| ApiError::internal(format!("parsing failed: {e}")))?
    }
    .map_err(ApiError::bad_request)?;
    let Ok(permit) = st.queue.clone().try_acquire_owned() else {
        st.metrics.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unavailable(format!(
            "the predict queue is full ({} requests queued or running): retry later",
            st.cfg.queue_capacity
        )));
    };
    let (form, rows) = (input.form, input.rows);
    let rx = servable.batcher.submit(rows, input.data).map_err(ApiError::unavailable)?;
    let out = rx.await.map_err(|_| ApiError::internal("the forward pass failed"))?.map_err(ApiError::internal)?;
    drop(permit);
    let body = json::predict_response(form, &out, rows, &servable.output_shape).map_err(ApiError::internal)?;
    Ok(json_response(body))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    match st.registry.latest() {
        Some(s) => (StatusCode::OK, format!("ok: {} version {}\n", st.registry.name, s.version)).into_response(),
        None => ApiError::unavailable("no model version is loaded").into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let queued = st.cfg.queue_capacity.saturating_sub(st.queue.available_permits());
    let text = st.metrics.render(queued);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

/// The metrics label of a request path.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        _ => match path.strip_prefix("/v1/models/").map(parse_path) {
            Some(Ok(p)) => match p.kind {
                Kind::Status => "status",
                Kind::Metadata => "metadata",
                Kind::Predict => "predict",
                Kind::Unsupported(_) => "other",
            },
            _ => "other",
        },
    }
}

/// Times the request out (504) and counts it in the metrics.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    let start = Instant::now();
    let limit = st.cfg.request_timeout;
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("the request took longer than {limit:?}"))
            .into_response(),
    };
    let code = resp.status().as_u16();
    st.metrics.request(endpoint, code, start.elapsed());
    if code >= 500 {
        tracing::warn!("{endpoint}: {code} after {:?}", start.elapsed());
    } else {
        tracing::debug!("{endpoint}: {code} after {:?}", start.elapsed());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rest: &str, version: Option<u64>, kind: Kind) {
        assert_eq!(parse_path(rest).unwrap(), ModelPath { name: "m".into(), version, kind }, "{rest}");
    }

    #[test]
    fn paths() {
        ok("m", None, Kind::Status);
        ok("m/metadata", None, Kind::Metadata);
        ok("m:predict", None, Kind::Predict);
        ok("m/versions/3", Some(3), Kind::Status);
        ok("m/versions/3/metadata", Some(3), Kind::Metadata);
        ok("m/versions/3:predict", Some(3), Kind::Predict);
        ok("m:classify", None, Kind::Unsupported("classify".into()));
        for bad in
            ["", "m/", "m/versions/x", "m/versions/", "m/versions/-1", "m/metadata:predict", "m:predict/x", "m:foo"]
        {
            assert_eq!(parse_path(bad).unwrap_err().status, StatusCode::NOT_FOUND, "{bad}");
        }
        assert_eq!(parse_path("m/labels/stable").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(endpoint_label("/v1/models/m/versions/2:predict"), "predict");
        assert_eq!(endpoint_label("/nope"), "other");
    }
}
