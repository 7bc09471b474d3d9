//! The server put together: the app, its bounds, its operations routes, start and a graceful
//! stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{ServerHandle, Service};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures::FutureExt;
use futures::StreamExt;
use hongbao::{Engine, Health};
use serde_json::json;

use crate::api::{self, Ctx};
use crate::auth::Verifier;
use crate::cluster::{Forwarding, Partitions};
use crate::hub::Hub;
use crate::reply::{at, ApiError, ReplyKind, RouteLabel};
use crate::settings::Settings;
use crate::{abuse, page, telemetry, ws};

/// The file journal `hongbao serve` writes: synced, its batches measured for `/metrics`.
pub fn journal_config(dir: &std::path::Path) -> hongbao::FileJournalConfig {
    let mut journal = hongbao::FileJournalConfig::new(dir, hongbao::Durability::Sync);
    journal.observer = Some(telemetry::journal_observer());
    journal
}

/// Why sockets close at a graceful stop.
pub const SHUTTING_DOWN: &str = "the server is shutting down";

/// What a server serves.
pub enum Backend {
    /// One engine, holding everything.
    Engine(Engine),
    /// A node of a cluster: the partitions it serves (the others are forwarded), and every
    /// partition's events for the sockets.
    Cluster(Partitions, hongbao_cluster::ClusterEvents),
}

/// A server running on its own thread.
pub struct Running {
    /// Where it listens (the port chosen when `listen` asked for port 0).
    pub addr: SocketAddr,
    /// The engine it serves (`None` on a node of a cluster, whose partitions come and go).
    pub engine: Option<Engine>,
    handle: ServerHandle,
    hub: Hub,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Starts serving `engine` with `settings`, checking tokens against `public_pem`.
///
/// # Errors
///
/// The key is not an Ed25519 public key, the address cannot be bound, or the engine refuses a
/// subscriber.
pub fn start(settings: Settings, engine: Engine, public_pem: &[u8]) -> std::io::Result<Running> {
    start_with(settings, Backend::Engine(engine), public_pem)
}

/// Starts serving `backend` with `settings`, checking tokens against `public_pem`.
///
/// # Errors
///
/// As [`start`].
pub fn start_with(settings: Settings, backend: Backend, public_pem: &[u8]) -> std::io::Result<Running> {
    let verifier = Verifier::with_cache(public_pem, settings.token_leeway_secs, settings.token_cache_len)
        .map_err(std::io::Error::other)?;
    telemetry::handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = match &backend {
        Backend::Engine(engine) => Some(engine.clone()),
        Backend::Cluster(..) => None,
    };
    let thread = std::thread::Builder::new().name("hongbao-http".into()).spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let epoch =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let (partitions, events) = match backend {
                Backend::Engine(engine) => match engine.subscribe() {
                    Ok(events) => (Partitions::Whole(engine), events.boxed()),
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                        return Ok(());
                    }
                },
                Backend::Cluster(partitions, events) => (partitions, events.boxed()),
            };
            let hub = Hub::start(events, partitions.clone(), settings.ws_replay_len, settings.ws_per_user_max, epoch);
            let limits = abuse::Limits::new(&settings);
            let unstepped = dashmap::DashMap::new();
            let ctx = web::Data::new(Ctx { partitions, settings, verifier, limits, hub: hub.clone(), unstepped });
            let sweep = Arc::clone(&ctx.clone().into_inner());
            actix_web::rt::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    sweep.sweep();
                }
            });
            let (addr, server) = match build(ctx) {
                Ok(built) => built,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = tx.send(Ok((addr, server.handle(), hub)));
            server.await
        })
    })?;
    let (addr, handle, hub) = rx.recv().map_err(|_| std::io::Error::other("the server thread ended at start"))??;
    Ok(Running { addr, engine, handle, hub, thread: Some(thread) })
}

fn build(ctx: web::Data<Ctx>) -> std::io::Result<(SocketAddr, actix_web::dev::Server)> {
    let s = ctx.settings.clone();
    let body_max = s.body_bytes_max;
    let mut server = HttpServer::new(move || {
        let forwarding = Forwarding { partitions: ctx.partitions.clone(), body_max };
        App::new()
            .app_data(ctx.clone())
            .app_data(web::JsonConfig::default().limit(body_max).error_handler(json_error))
            .app_data(web::PayloadConfig::new(body_max))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .wrap_fn(|req, srv| {
                let started = std::time::Instant::now();
                srv.call(req).map(move |res| {
                    if let Ok(res) = &res {
                        let response = res.response();
                        let kind = match response.extensions().get::<ReplyKind>() {
                            Some(kind) => kind.0.clone(),
                            None if response.status().is_success() || response.status().is_redirection() => "ok".into(),
                            None => response.status().as_u16().to_string(),
                        };
                        let route = res.request().app_data::<RouteLabel>().map_or("unmatched", |label| label.0);
                        tracing::debug!(
                            route,
                            status = response.status().as_u16(),
                            reply = kind,
                            micros = started.elapsed().as_micros() as u64,
                            "request"
                        );
                        telemetry::reply_kind(route, &kind);
                    }
                    res
                })
            })
            .configure(api::routes)
            .service(at("/ws").route(web::get().to(ws::upgrade)))
            .service(at("/healthz").route(web::get().to(healthz)))
            .service(at("/readyz").route(web::get().to(readyz)))
            .service(at("/metrics").route(web::get().to(metrics)))
            .configure(page::routes)
            .default_service(web::to(not_found))
            // Outermost but one: a request answered `elsewhere` goes to its partition's node.
            .wrap(forwarding)
    })
    .max_connections(s.connections_max)
    // A connection whose response has ended (a closed socket among them) gets this long to
    // take what is left before it is dropped.
    .client_disconnect_timeout(Duration::from_secs(2))
    .shutdown_timeout(s.shutdown_secs)
    .disable_signals();
    if s.workers > 0 {
        server = server.workers(s.workers);
    }
    let server = server.bind(s.listen)?;
    let addr = server.addrs()[0];
    Ok((addr, server.run()))
}

impl Running {
    /// A graceful stop: sockets are closed with a reason, the listener stops accepting, the
    /// requests in flight finish (up to `shutdown_secs`), then the engine makes everything
    /// durable and stops.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.hub.close_all(SHUTTING_DOWN).await;
        self.handle.stop(true).await;
        if let Some(engine) = &self.engine {
            engine.shutdown().await;
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let reply = match &error {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes"))
                .with("limit", *limit)
        }
        JsonPayloadError::ContentType => {
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json", "the body must be application/json")
        }
        _ => ApiError::invalid(&error),
    };
    reply.into()
}

fn query_error(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(error).into()
}

fn path_error(error: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such resource: {error}")).into()
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {} {}", req.method(), req.path())))
}

/// The process is alive.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

/// The engine serves and its journal is healthy; otherwise 503 saying why. A node of a cluster:
/// it serves at least one partition and every one it serves is healthy; the answer lists them,
/// and the partitions nobody serves now (`orphans`).
async fn readyz(ctx: web::Data<Ctx>) -> HttpResponse {
    let not_ready =
        |why: String| HttpResponse::ServiceUnavailable().json(json!({ "status": "not_ready", "health": why }));
    if let Err(why) = ctx.partitions.ready() {
        return not_ready(why);
    }
    for (index, engine) in ctx.partitions.local() {
        match engine.health() {
            Health::Serving => {}
            health if ctx.partitions.count() == 1 => return not_ready(format!("{health:?}")),
            health => return not_ready(format!("partition {index}: {health:?}")),
        }
    }
    let partitions: Vec<u32> = ctx.partitions.local().iter().map(|(i, _)| *i).collect();
    let (of, orphans) = (ctx.partitions.count(), ctx.partitions.orphans());
    HttpResponse::Ok().json(json!({ "status": "ready", "partitions": partitions, "of": of, "orphans": orphans }))
}

async fn metrics(ctx: web::Data<Ctx>) -> HttpResponse {
    let engines: Vec<Engine> = ctx.partitions.local().into_iter().map(|(_, engine)| engine).collect();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(telemetry::render(&engines))
}
