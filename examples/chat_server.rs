//! Embedding hongbao in a chat server: an actix-web endpoint that grabs a share for a member,
//! maps each `GrabError` to the HTTP status it deserves, and answers with the library's own
//! serde types (built with the `serde` feature).
//!
//! Run it with `cargo run --example chat_server --features serde`, then
//! `curl -X POST 127.0.0.1:8080/packets/1/grab/2`. In a real server the member comes from the
//! authenticated session, not from the path.

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use hongbao::{Amount, Config, Engine, GrabError, GroupId, NewPacket, OpId, PacketId, Split, UserId};
use serde::Serialize;

/// The status each refusal deserves. A repeat grab is not an error for the member: they see
/// their first share again.
fn status(e: &GrabError) -> StatusCode {
    match e {
        GrabError::AlreadyGrabbed { .. } => StatusCode::OK,
        GrabError::SoldOut | GrabError::Expired => StatusCode::GONE,
        GrabError::NotEligible => StatusCode::FORBIDDEN,
        GrabError::UnknownPacket => StatusCode::NOT_FOUND,
        GrabError::Busy | GrabError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        // The enum grows with the engine's rules; an unknown refusal is still a refusal.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a member's client receives.
#[derive(Serialize)]
#[serde(untagged)]
enum Reply {
    Won { won: hongbao::Grabbed, already: bool },
    Again { amount: Amount, position: u32, already: bool },
    Refused { error: GrabError, message: String },
}

async fn grab(engine: web::Data<Engine>, path: web::Path<(u64, u64)>) -> HttpResponse {
    let (packet, user) = path.into_inner();
    match engine.grab(PacketId(packet), UserId(user)).await {
        Ok(won) => HttpResponse::Ok().json(Reply::Won { won, already: false }),
        Err(GrabError::AlreadyGrabbed { amount, position }) => {
            HttpResponse::Ok().json(Reply::Again { amount, position, already: true })
        }
        Err(e) => {
            let mut reply = HttpResponse::build(status(&e));
            if e == GrabError::Busy {
                reply.insert_header(("Retry-After", "1"));
            }
            reply.json(Reply::Refused { message: e.to_string(), error: e })
        }
    }
}

/// An engine with one group of four members and one lucky packet of three shares.
async fn demo_engine() -> Engine {
    let engine = Engine::start(Config::default()).expect("engine starts");
    engine.set_members(GroupId(7), (1..=4).map(UserId)).await.expect("roster");
    engine.deposit(OpId(1), UserId(1), Amount::yuan(100)).await.expect("deposit");
    let split = Split::lucky(Amount::yuan(3), 3);
    let packet =
        NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(7), split, greeting: "恭喜发财".into() };
    engine.send_packet(packet).await.expect("send");
    engine
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/packets/{packet}/grab/{user}", web::post().to(grab));
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let engine = web::Data::new(demo_engine().await);
    HttpServer::new(move || App::new().app_data(engine.clone()).configure(routes)).bind("127.0.0.1:8080")?.run().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test;

    #[actix_web::test]
    async fn grabs_map_to_statuses_and_json() {
        let engine = demo_engine().await;
        let app = test::init_service(App::new().app_data(web::Data::new(engine.clone())).configure(routes)).await;
        let post = |uri: &str| test::TestRequest::post().uri(uri).to_request();

        let won = test::call_service(&app, post("/packets/1/grab/2")).await;
        assert_eq!(won.status(), StatusCode::OK);
        let body: serde_json::Value = test::read_body_json(won).await;
        assert_eq!(body["won"]["position"], 1);
        assert!(body["won"]["amount"].is_string(), "amounts travel as decimal strings: {body}");

        let outsider = test::call_service(&app, post("/packets/1/grab/99")).await;
        assert_eq!(outsider.status(), StatusCode::FORBIDDEN);
        let body: serde_json::Value = test::read_body_json(outsider).await;
        assert_eq!(body["error"]["kind"], "not_eligible");

        let unknown = test::call_service(&app, post("/packets/9/grab/2")).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let again = test::call_service(&app, post("/packets/1/grab/2")).await;
        assert_eq!(again.status(), StatusCode::OK);
        let body: serde_json::Value = test::read_body_json(again).await;
        assert_eq!((body["already"].as_bool(), body["position"].as_u64()), (Some(true), Some(1)), "{body}");
        engine.shutdown().await;
    }
}
