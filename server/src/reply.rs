//! Replies: the JSON every route answers with, and the HTTP status each refusal deserves.
//!
//! An error is `{ "error": kind, "message": …, fields… }`: `kind` and the fields are the
//! engine's own typed error as its serde form gives them (`{"kind": "daily_limit", "used":
//! "150.00", "max": "200.00"}` becomes `{"error": "daily_limit", "message": …, "used": …,
//! "max": …}`), so a client acts on the same names an embedding program matches on.

use std::fmt::Display;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::AuthError;

/// The `route` label of the requests a resource serves, for `/metrics`: its pattern, so the
/// label set is the route set whatever paths clients send.
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// A resource at `path`, labelled with it.
pub fn at(path: &'static str) -> actix_web::Resource {
    actix_web::web::resource(path).app_data(RouteLabel(path))
}

/// What a reply was, for the request counter: `ok` or the error kind.
#[derive(Clone, Debug)]
pub struct ReplyKind(pub String);

/// A refusal, ready to send.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Map<String, Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error of `kind` with a message and no fields.
    pub fn new(status: StatusCode, kind: &str, message: impl Display) -> ApiError {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(kind));
        body.insert("message".into(), Value::from(message.to_string()));
        ApiError { status, body, retry_after: None }
    }

    /// An engine refusal: its serde form (tagged by `kind`) gives the kind and the fields, its
    /// `Display` the message, and [`status_of`] the status.
    pub fn engine<E: Serialize + Display>(error: &E) -> ApiError {
        let mut fields = match serde_json::to_value(error) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let kind = match fields.remove("kind") {
            Some(Value::String(kind)) => kind,
            _ => "internal".into(),
        };
        let mut reply = ApiError::new(status_of(&kind), &kind, error);
        reply.body.extend(fields);
        if kind == "busy" {
            reply.retry_after = Some(1);
        }
        reply
    }

    /// A token refused: 401 with the reason.
    pub fn unauthorized(error: &AuthError) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error).with("reason", error.reason())
    }

    /// The principal may not use this route.
    pub fn forbidden(message: impl Display) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A request that does not parse or names nothing valid.
    pub fn invalid(message: impl Display) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// Over a rate limit: try again after `secs`.
    pub fn rate_limited(what: &str, secs: u64) -> ApiError {
        let mut reply =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("too many {what}; retry later"));
        reply.retry_after = Some(secs.max(1));
        reply.with("limit", what)
    }

    /// This error, saying when to try again.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// This error with one more field.
    pub fn with(mut self, field: &str, value: impl Into<Value>) -> ApiError {
        self.body.insert(field.into(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error kind.
    pub fn kind(&self) -> &str {
        self.body.get("error").and_then(Value::as_str).unwrap_or("internal")
    }

    /// The JSON body, with the status (for WebSocket replies, which have no status line).
    pub fn to_json(&self) -> Value {
        let mut body = self.body.clone();
        body.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(secs) = self.retry_after {
            body.insert("retry_after".into(), Value::from(secs));
        }
        Value::Object(body)
    }
}

impl Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.body.get("message").and_then(Value::as_str).unwrap_or("");
        write!(f, "{}: {message}", self.kind())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut reply = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            reply.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            reply.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        let mut response = reply.json(&self.body);
        response.extensions_mut().insert(ReplyKind(self.kind().to_owned()));
        if self.kind() == "elsewhere" {
            // Another node serves that partition: the request goes there (`cluster`).
            if let Some(index) = self.body.get("partition").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok())
            {
                response.extensions_mut().insert(crate::cluster::Forward(index));
            }
        }
        response
    }
}

/// `200` with `body` as JSON.
pub fn ok(body: impl Serialize) -> HttpResponse {
    HttpResponse::Ok().json(body)
}

/// The status an engine refusal deserves, by its kind.
pub fn status_of(kind: &str) -> StatusCode {
    match kind {
        // Come back later: overload, shutdown, a stopped journal.
        "busy" | "unavailable" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
        // Storage failed after the request was taken: it may or may not have happened.
        "outcome_unknown" => StatusCode::INTERNAL_SERVER_ERROR,
        // Another partition's owner serves it.
        "elsewhere" => StatusCode::MISDIRECTED_REQUEST,
        "unknown_packet" | "unknown_transfer" | "unknown_org" | "unknown" => StatusCode::NOT_FOUND,
        // The packet is gone for grabbing.
        "sold_out" | "expired" | "cancelled" | "recalled" | "rejected" => StatusCode::GONE,
        // Who may do this.
        "not_eligible" | "not_member" | "not_sender" | "not_receiver" | "not_admin" | "not_org_member"
        | "not_org_packet" | "recall_disabled" | "not_whitelisted" | "own_send" | "not_approver" | "not_guardian"
        | "irrevocable" | "over_limit" | "balance_limit" => StatusCode::FORBIDDEN,
        // Caps of the day and of resources: later may work.
        "daily_limit"
        | "org_daily_limit"
        | "daily_packet_limit"
        | "too_many_open_packets"
        | "too_many_pending"
        | "too_many_orgs"
        | "too_many_subscribers" => StatusCode::TOO_MANY_REQUESTS,
        // The state says no: a conflicting id, too early, too late, already done.
        "id_conflict"
        | "insufficient_funds"
        | "not_open_yet"
        | "too_late"
        | "not_arrived"
        | "already_settled"
        | "already_cancelled"
        | "already_closed"
        | "already_approved"
        | "already_rejected"
        | "not_awaiting_approval"
        | "closed"
        | "group_taken"
        | "guardian_already_set" => StatusCode::CONFLICT,
        // The request itself is invalid.
        "invalid_split"
        | "greeting_too_long"
        | "zero_amount"
        | "to_self"
        | "invalid_delay"
        | "note_too_long"
        | "text_too_long"
        | "reason_too_long"
        | "whitelist_too_long"
        | "too_many_admins"
        | "no_admins"
        | "invalid_guardian"
        | "cooling_off_too_long"
        | "too_many_members"
        | "too_many_groups" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hongbao::{Amount, GrabError, SendError, TransferError};

    #[test]
    fn engine_errors_keep_their_kind_and_fields() {
        let busy = ApiError::engine(&GrabError::Busy);
        assert_eq!((busy.status(), busy.retry_after), (StatusCode::SERVICE_UNAVAILABLE, Some(1)));
        let cap = ApiError::engine(&TransferError::DailyLimit { used: Amount::yuan(150), max: Amount::yuan(200) });
        let body = cap.to_json();
        assert_eq!((body["error"].as_str(), body["max"].as_str()), (Some("daily_limit"), Some("200.00")), "{body}");
        assert_eq!(cap.status(), StatusCode::TOO_MANY_REQUESTS);
        let unknown = ApiError::engine(&GrabError::UnknownPacket);
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        let poor = ApiError::engine(&SendError::InsufficientFunds { balance: Amount::ZERO, needed: Amount::yuan(1) });
        assert_eq!(poor.status(), StatusCode::CONFLICT);
    }
}
