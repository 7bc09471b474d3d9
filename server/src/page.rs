//! The live page: static HTML, CSS and JavaScript embedded in the binary (no build step).

use actix_web::{web, HttpResponse};

use crate::reply::at;

const INDEX: &str = include_str!("page/index.html");
const APP: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// `/`, `/app.js`, `/style.css`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(at("/").route(web::get().to(|| async { asset("text/html; charset=utf-8", INDEX) })))
        .service(at("/app.js").route(web::get().to(|| async { asset("text/javascript; charset=utf-8", APP) })))
        .service(at("/style.css").route(web::get().to(|| async { asset("text/css; charset=utf-8", STYLE) })));
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:"))
        .body(body)
}
