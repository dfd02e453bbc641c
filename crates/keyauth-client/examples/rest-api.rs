//! The seed's REST API, protected by keyauth in three lines (see `protect` below).
//!
//! ```sh
//! cargo run --release -p keyauth-client --example rest-api -- \
//!     --listen 127.0.0.1:8080 --keyauth http://127.0.0.1:50051
//! curl http://127.0.0.1:8080/api/v1/patients \
//!     -H "Authorization: Bearer sk_test_…" -H "Content-Type: application/json"
//! ```
//!
//! `GET /api/v1/patients` answers the seed's example body; every resource of the catalog is
//! served under `/api/v1/<resource>` (GET lists, POST creates, DELETE `/{id}` deletes) from an
//! in-memory list: the example is about the authentication. Handlers read the verified key
//! from the request's extensions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use clap::Parser;
use keyauth_client::{Client, KeyAuthLayer, VerifiedKey, Verifier, VerifierOptions};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "The seed's REST API, protected by keyauth")]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// keyauth's gRPC address: http://HOST:PORT or https://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    keyauth: String,
    /// The verifier token, when keyauth requires one.
    #[arg(long, env = "KEYAUTH_VERIFIER_TOKEN", hide_env_values = true)]
    verifier_token: Option<String>,
}

/// The seed's example answer of `GET /api/v1/patients`, byte for byte.
const PATIENTS: &str = r#"{"object":"list","url":"/api/v1/patients","has_more":false,"data":[{"id":"pat_1234567890","object":"patient","uhid":"UG123456789A"}]}"#;

/// Records created through the API, by resource (patients come from the seed's example).
#[derive(Clone, Default)]
struct Records(Arc<Mutex<BTreeMap<String, Vec<Value>>>>);

fn not_found(message: &str) -> Response {
    let body = keyauth_client::error_body::error_body(
        "resource_missing",
        message,
        "invalid_request_error",
    );
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn known(resource: &str) -> bool {
    keyauth_client::Catalog::built_in().has_resource(resource)
}

async fn list(
    State(records): State<Records>,
    Path(resource): Path<String>,
    Extension(key): Extension<Arc<VerifiedKey>>,
) -> Response {
    if !known(&resource) {
        return not_found("No such resource");
    }
    let mut data = records
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&resource)
        .cloned()
        .unwrap_or_default();
    if resource == "patients" {
        if data.is_empty() {
            return ([(header::CONTENT_TYPE, "application/json")], PATIENTS).into_response();
        }
        data.insert(
            0,
            json!({"id": "pat_1234567890", "object": "patient", "uhid": "UG123456789A"}),
        );
    }
    tracing::debug!(key = key.id, resource, "list");
    Json(json!({"object": "list", "url": format!("/api/v1/{resource}"), "has_more": false, "data": data}))
        .into_response()
}

async fn create(
    State(records): State<Records>,
    Path(resource): Path<String>,
    Extension(key): Extension<Arc<VerifiedKey>>,
    body: Option<Json<Value>>,
) -> Response {
    if !known(&resource) {
        return not_found("No such resource");
    }
    let mut record = match body {
        Some(Json(Value::Object(map))) => Value::Object(map),
        _ => json!({}),
    };
    let id = format!(
        "{}_{}",
        &resource[..3.min(resource.len())],
        keyauth_contract::unique_base62(10)
    );
    record["id"] = json!(id);
    record["object"] = json!(resource.trim_end_matches('s'));
    record["created_by_key"] = json!(key.id);
    records
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(resource)
        .or_default()
        .push(record.clone());
    (StatusCode::CREATED, Json(record)).into_response()
}

async fn remove(
    State(records): State<Records>,
    Path((resource, id)): Path<(String, String)>,
) -> Response {
    let mut records = records.0.lock().unwrap_or_else(|e| e.into_inner());
    let Some(list) = records.get_mut(&resource) else {
        return not_found("No such record");
    };
    let before = list.len();
    list.retain(|r| r["id"] != json!(id));
    if list.len() == before {
        return not_found("No such record");
    }
    Json(json!({"id": id, "object": resource.trim_end_matches('s'), "deleted": true}))
        .into_response()
}

/// The API's routes, unprotected.
fn api() -> Router {
    Router::new()
        .route("/api/v1/{resource}", get(list).post(create))
        .route("/api/v1/{resource}/{id}", delete(remove))
        .with_state(Records::default())
}

/// The three lines: a client, a verifier over it, the layer.
fn protect(router: Router, args: &Args) -> Result<Router, Box<dyn std::error::Error>> {
    let mut client = Client::builder(args.keyauth.clone());
    if let Some(token) = &args.verifier_token {
        client = client.verifier_token(token.clone());
    }
    let verifier = Verifier::new(client.connect_lazy()?, VerifierOptions::default());
    Ok(router.layer(KeyAuthLayer::new(verifier)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let app = protect(api(), &args)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, keyauth = args.keyauth, "REST API serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
