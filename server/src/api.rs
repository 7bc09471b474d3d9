//! The REST routes: every operation of the engine, behind the token each deserves.
//!
//! Ids in request bodies and paths are the engine's ids, chosen by the caller: a retried
//! request is the same request, and returns its first outcome (a repeat grab is `200` with
//! the first share and `already: true`; so are a repeat cancel, recall, accept, decline,
//! approval or rejection).

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use hongbao::{
    Amount, ApprovalError, ApprovalId, Approver, Arrival, CancelError, CoolingOff, Engine, GrabError, Grabbed, GroupId,
    Guardian, NewOrg, NewPacket, NewTransfer, OpId, OpKind, OpQuery, OrgId, PacketId, PacketStatus, PacketView, Policy,
    RecallError, Remittance, Split, Timestamp, TransferError, TransferId, TransferStatus, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::abuse::{self, Action};
use crate::auth::{self, AuthError, Member, Principal, Verifier};
use crate::cluster::Partitions;
use crate::hub::Hub;
use crate::reply::{at, ok, ApiError};
use crate::settings::Settings;

/// What every handler shares.
pub struct Ctx {
    /// Which engine answers: the one engine, or a partition of a cluster.
    pub partitions: Partitions,
    /// The settings the server runs with.
    pub settings: Settings,
    /// Checks tokens.
    pub verifier: Verifier,
    /// Rate limits.
    pub limits: abuse::Limits,
    /// The event fan-out.
    pub hub: Hub,
    /// What each member sent without a recent strong authentication in the current step-up
    /// window. Swept with the rate limiters.
    pub unstepped: dashmap::DashMap<UserId, Window>,
}

/// A member's sends without step-up in one window: when it began, how much, and which sends
/// (a retry of one of them is not counted again).
#[derive(Debug, Default)]
pub struct Window {
    start: u64,
    fen: u64,
    sends: std::collections::HashSet<Send>,
}

/// A send counted in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Send {
    /// A packet, by id.
    Packet(PacketId),
    /// A transfer, by id.
    Transfer(TransferId),
}

type Reply = Result<HttpResponse, ApiError>;

fn fail<E: Serialize + std::fmt::Display>(error: E) -> ApiError {
    ApiError::engine(&error)
}

impl Ctx {
    fn principal(&self, req: &HttpRequest) -> Result<Principal, ApiError> {
        let header = req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // The scheme is case-insensitive (RFC 9110).
        let token = header
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let token = token.ok_or_else(|| ApiError::unauthorized(&AuthError::MissingToken))?;
        let device = req.headers().get(auth::DEVICE_HEADER).and_then(|v| v.to_str().ok());
        self.verifier.verify(token, device).map_err(|e| ApiError::unauthorized(&e))
    }

    /// The member asking; a host token is refused (members act for themselves only).
    fn member(&self, req: &HttpRequest) -> Result<Arc<Member>, ApiError> {
        match self.principal(req)? {
            Principal::Member(member) => Ok(member),
            Principal::Host => {
                Err(ApiError::forbidden("this route is for members; the host acts through its own routes"))
            }
        }
    }

    /// The chat host; a member token is refused.
    fn host(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match self.principal(req)? {
            Principal::Host => Ok(()),
            Principal::Member(_) => Err(ApiError::forbidden("this route needs the host's credential")),
        }
    }

    /// An admin of `org`: by their token's claim, and by the engine's list of the org's admins.
    async fn admin(&self, req: &HttpRequest, org: OrgId) -> Result<Arc<Member>, ApiError> {
        let member = self.member(req)?;
        if !member.administers(org) {
            return Err(
                ApiError::forbidden(format!("the token carries no admin claim for org {}", org.0)).with("org", org.0)
            );
        }
        if !self.partitions.any()?.org(org).await.map_err(fail)?.admins.contains(&member.user) {
            return Err(fail(hongbao::OrgError::NotAdmin { user: member.user }));
        }
        Ok(member)
    }

    /// Whether `member` may act for `org` (claim and engine list), without refusing.
    async fn is_admin(&self, member: &Member, org: OrgId) -> bool {
        let Ok(engine) = self.partitions.any() else { return false };
        member.administers(org) && engine.org(org).await.is_ok_and(|o| o.admins.contains(&member.user))
    }

    /// A send of `amount` needs a recent strong authentication when it is above the step-up
    /// threshold, or when it would take what the member sent without one in the current
    /// window (`step_up_secs`) above it: a password alone moves at most `step_up_fen` per
    /// window, however it is split.
    ///
    /// The amount is reserved here, and given back by [`Ctx::release`] if the engine refuses the
    /// send; a retry of a send already counted is not counted again. Returns whether it reserved.
    fn step_up(&self, member: &Member, send: Send, amount: Option<Amount>) -> Result<bool, ApiError> {
        let now = auth::unix_now();
        if member.stepped_up(now, self.settings.step_up_secs) {
            return Ok(false);
        }
        let fen = amount.map_or(u64::MAX, Amount::as_fen);
        let mut window =
            self.unstepped.entry(member.user).or_insert_with(|| Window { start: now, ..Window::default() });
        if now.saturating_sub(window.start) >= self.settings.step_up_secs {
            *window = Window { start: now, ..Window::default() };
        }
        if window.sends.contains(&send) {
            return Ok(false);
        }
        match window.fen.checked_add(fen).filter(|&total| total <= self.settings.step_up_fen) {
            Some(total) => {
                window.fen = total;
                window.sends.insert(send);
                Ok(true)
            }
            None => Err(self
                .step_up_required("sends above this in a window")
                .with("sent_without_step_up", Amount::fen(window.fen).to_string())),
        }
    }

    /// Gives back what [`Ctx::step_up`] reserved for a send the engine refused (unless its
    /// outcome is unknown: then it may have happened, and stays counted).
    fn release(&self, member: &Member, send: Send, amount: Option<Amount>, error: &ApiError) {
        if error.kind() == "outcome_unknown" {
            return;
        }
        if let Some(mut window) = self.unstepped.get_mut(&member.user) {
            if window.sends.remove(&send) {
                window.fen = window.fen.saturating_sub(amount.map_or(u64::MAX, Amount::as_fen));
            }
        }
    }

    /// Changing what protects a member (cooling-off, a guardian) needs a recent strong
    /// authentication: a lifted password token must not switch protection off, nor lock the
    /// member behind a guardian of the thief's choosing.
    fn step_up_always(&self, member: &Member) -> Result<(), ApiError> {
        if member.stepped_up(auth::unix_now(), self.settings.step_up_secs) {
            return Ok(());
        }
        Err(self.step_up_required("changing cooling-off or a guardian"))
    }

    fn step_up_required(&self, what: &str) -> ApiError {
        let message = format!(
            "{what} needs biometrics or a PIN within {} s (sends: above {} in {} s)",
            self.settings.step_up_secs,
            Amount::fen(self.settings.step_up_fen),
            self.settings.step_up_secs
        );
        ApiError::new(StatusCode::FORBIDDEN, "step_up_required", message)
            .with("threshold", Amount::fen(self.settings.step_up_fen).to_string())
            .with("within_secs", self.settings.step_up_secs)
    }

    /// Forgets step-up windows that have passed.
    pub fn sweep(&self) {
        let (now, secs) = (auth::unix_now(), self.settings.step_up_secs);
        self.unstepped.retain(|_, window| now.saturating_sub(window.start) < secs);
        self.limits.sweep();
    }

    fn limit(&self, req: &HttpRequest, action: Action, user: UserId) -> Result<(), ApiError> {
        self.limits.check(action, user, self.client_ip(req))
    }

    /// The client's address: the peer's, or the one the node that forwarded the request names.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        self.partitions.client_ip(req)
    }
}

/// Every route of the API, under `/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // The hot path first: resources are tried in order.
    cfg.service(at("/v1/packets/{packet}/grab").route(web::post().to(grab)))
        // The host: money in and out, rosters, orgs, the audit.
        .service(at("/v1/wallets/{user}").route(web::get().to(wallet)))
        .service(at("/v1/wallets/{user}/deposit").route(web::post().to(deposit)))
        .service(at("/v1/wallets/{user}/withdraw").route(web::post().to(withdraw)))
        .service(at("/v1/groups/{group}/members").route(web::put().to(set_members)).route(web::get().to(members)))
        .service(at("/v1/groups/{group}/members/add").route(web::post().to(add_members)))
        .service(at("/v1/groups/{group}/members/remove").route(web::post().to(remove_members)))
        .service(at("/v1/orgs").route(web::post().to(create_org)))
        .service(at("/v1/audit").route(web::get().to(audit)))
        // A member, for themselves.
        .service(at("/v1/me").route(web::get().to(me)))
        .service(at("/v1/me/cooling-off").route(web::put().to(set_cooling_off)))
        .service(at("/v1/me/guardian").route(web::put().to(set_guardian)))
        .service(at("/v1/wallets/{user}/guardian/remove").route(web::post().to(remove_guardian)))
        .service(at("/v1/packets").route(web::post().to(send_packet)))
        .service(at("/v1/packets/{packet}").route(web::get().to(packet)))
        .service(at("/v1/packets/{packet}/cancel").route(web::post().to(cancel)))
        .service(at("/v1/packets/{packet}/approve").route(web::post().to(approve_packet)))
        .service(at("/v1/packets/{packet}/reject").route(web::post().to(reject_packet)))
        .service(at("/v1/transfers").route(web::post().to(send_transfer)))
        .service(at("/v1/transfers/{transfer}").route(web::get().to(transfer)))
        .service(at("/v1/transfers/{transfer}/recall").route(web::post().to(recall_transfer)))
        .service(at("/v1/transfers/{transfer}/accept").route(web::post().to(accept_transfer)))
        .service(at("/v1/transfers/{transfer}/decline").route(web::post().to(decline_transfer)))
        .service(at("/v1/transfers/{transfer}/approve").route(web::post().to(approve_transfer)))
        .service(at("/v1/transfers/{transfer}/reject").route(web::post().to(reject_transfer)))
        // An org's admins.
        .service(at("/v1/orgs/{org}").route(web::get().to(org)))
        .service(at("/v1/orgs/{org}/policy").route(web::put().to(set_policy)))
        .service(at("/v1/orgs/{org}/groups").route(web::post().to(attach_group)))
        .service(at("/v1/orgs/{org}/log").route(web::get().to(operation_log)))
        .service(at("/v1/packets/{packet}/recall").route(web::post().to(admin_recall)))
        // The nodes of a cluster, for each other.
        .service(at(crate::cluster::AWAIT_PATH).route(web::post().to(await_remittance)));
}

// ---- the host ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Money {
    op: OpId,
    amount: Amount,
}

async fn wallet(ctx: web::Data<Ctx>, req: HttpRequest, user: web::Path<u64>) -> Reply {
    ctx.host(&req)?;
    let user = UserId(*user);
    wallet_of(&ctx.partitions.of_user(user)?, user).await
}

async fn wallet_of(engine: &Engine, user: UserId) -> Reply {
    let balance = engine.balance(user).await.map_err(fail)?;
    let usage = engine.usage(user).await.map_err(fail)?;
    Ok(ok(json!({ "user": user, "balance": balance, "usage": usage })))
}

async fn deposit(ctx: web::Data<Ctx>, req: HttpRequest, user: web::Path<u64>, body: web::Json<Money>) -> Reply {
    ctx.host(&req)?;
    let user = UserId(*user);
    let balance = ctx.partitions.of_user(user)?.deposit(body.op, user, body.amount).await.map_err(fail)?;
    Ok(ok(json!({ "user": user, "op": body.op, "balance": balance })))
}

async fn withdraw(ctx: web::Data<Ctx>, req: HttpRequest, user: web::Path<u64>, body: web::Json<Money>) -> Reply {
    ctx.host(&req)?;
    let user = UserId(*user);
    let balance = ctx.partitions.of_user(user)?.withdraw(body.op, user, body.amount).await.map_err(fail)?;
    Ok(ok(json!({ "user": user, "op": body.op, "balance": balance })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Roster {
    members: Vec<UserId>,
}

async fn set_members(ctx: web::Data<Ctx>, req: HttpRequest, group: web::Path<u64>, body: web::Json<Roster>) -> Reply {
    change_roster(&ctx, &req, GroupId(*group), body.into_inner(), RosterChange::Set).await
}

async fn add_members(ctx: web::Data<Ctx>, req: HttpRequest, group: web::Path<u64>, body: web::Json<Roster>) -> Reply {
    change_roster(&ctx, &req, GroupId(*group), body.into_inner(), RosterChange::Add).await
}

async fn remove_members(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    group: web::Path<u64>,
    body: web::Json<Roster>,
) -> Reply {
    change_roster(&ctx, &req, GroupId(*group), body.into_inner(), RosterChange::Remove).await
}

#[derive(Clone, Copy)]
enum RosterChange {
    Set,
    Add,
    Remove,
}

/// The host changes a roster, in every partition.
async fn change_roster(ctx: &Ctx, req: &HttpRequest, group: GroupId, roster: Roster, change: RosterChange) -> Reply {
    ctx.host(req)?;
    ctx.partitions
        .everywhere(req, |engine| {
            let members = roster.members.clone();
            async move {
                match change {
                    RosterChange::Set => engine.set_members(group, members).await,
                    RosterChange::Add => engine.add_members(group, members).await,
                    RosterChange::Remove => engine.remove_members(group, members).await,
                }
                .map_err(fail)?;
                roster_reply(&engine, group).await
            }
        })
        .await
}

/// After a roster change: the roster, or (if reading it back is refused) the change alone,
/// which did happen: a `busy` here would say it had not.
async fn roster_reply(engine: &Engine, group: GroupId) -> Reply {
    roster(engine, group).await.or_else(|_| Ok(ok(json!({ "group": group }))))
}

/// The read view of a roster.
async fn roster(engine: &Engine, group: GroupId) -> Reply {
    let members = engine.members(group).await.map_err(fail)?;
    Ok(ok(json!({ "group": group, "count": members.len(), "members": members })))
}

/// The host, or a member of the group.
async fn members(ctx: web::Data<Ctx>, req: HttpRequest, group: web::Path<u64>) -> Reply {
    let group = GroupId(*group);
    let engine = ctx.partitions.any()?;
    if let Principal::Member(member) = ctx.principal(&req)? {
        if !engine.is_member(group, member.user) {
            return Err(ApiError::forbidden(format!("not a member of group {}", group.0)));
        }
    }
    roster(&engine, group).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    id: OrgId,
    #[serde(flatten)]
    spec: NewOrg,
}

async fn create_org(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<CreateOrg>) -> Reply {
    ctx.host(&req)?;
    let CreateOrg { id, spec } = body.into_inner();
    ctx.partitions
        .everywhere(&req, |engine| {
            let spec = spec.clone();
            async move { Ok(ok(engine.create_org(id, spec).await.map_err(fail)?)) }
        })
        .await
}

/// Conservation and the engine's invariants, now (the host's view of the whole engine). On a
/// cluster: every partition's audit, read at once, and conservation over them with the
/// remittances in flight counted (a share applied by its receiver after its sender was read
/// shows as "more arrived than left": ask a quiet cluster).
async fn audit(ctx: web::Data<Ctx>, req: HttpRequest) -> Reply {
    ctx.host(&req)?;
    let parts = &ctx.partitions;
    if let Some(index) = parts.leg(&req).or((parts.count() == 1).then_some(0)) {
        let audit = parts.at(index)?.audit().await.map_err(fail)?;
        let mut body = serde_json::to_value(&audit).unwrap_or_default();
        body["balanced"] = json!(audit.is_balanced());
        return Ok(ok(body));
    }
    let req = &req;
    let each = |index: u32| async move {
        let audit = match parts.at(index) {
            Ok(engine) => engine.audit().await.map_err(fail)?,
            Err(_) => serde_json::from_value::<hongbao::Audit>(parts.ask(index, req).await?)
                .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "internal", format!("partition {index}: {e}")))?,
        };
        Ok::<_, ApiError>((index, audit))
    };
    let mut audits = futures::future::try_join_all((0..parts.count()).map(each)).await?;
    // Partitions are read at once, not at one instant: one read before a remittance it sent
    // was applied elsewhere is read again, until the cut is consistent.
    for _ in 0..crate::cluster::AUDIT_CATCH_UP_ROUNDS {
        let behind = hongbao::ClusterAudit::behind(&audits);
        if behind.is_empty() {
            break;
        }
        for (index, audit) in futures::future::try_join_all(behind.into_iter().map(each)).await? {
            audits[index as usize].1 = audit;
        }
    }
    let cluster = hongbao::ClusterAudit::of(&audits);
    let mut body = serde_json::to_value(&cluster).unwrap_or_default();
    body["balanced"] = json!(cluster.is_balanced());
    body["each"] = serde_json::to_value(audits.iter().map(|(_, a)| a).collect::<Vec<_>>()).unwrap_or_default();
    Ok(ok(body))
}

// ---- a member ----

async fn me(ctx: web::Data<Ctx>, req: HttpRequest) -> Reply {
    let member = ctx.member(&req)?;
    wallet_of(&ctx.partitions.of_user(member.user)?, member.user).await
}

async fn set_cooling_off(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<CoolingOff>) -> Reply {
    let member = ctx.member(&req)?;
    let engine = ctx.partitions.of_user(member.user)?;
    ctx.step_up_always(&member)?;
    engine.set_cooling_off(member.user, *body).await.map_err(fail)?;
    Ok(ok(json!({ "user": member.user, "cooling_off": *body })))
}

async fn set_guardian(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<Guardian>) -> Reply {
    let member = ctx.member(&req)?;
    let engine = ctx.partitions.of_user(member.user)?;
    ctx.step_up_always(&member)?;
    engine.set_guardian(member.user, *body).await.map_err(fail)?;
    Ok(ok(json!({ "user": member.user, "guardian": *body })))
}

/// The guardian releases the user (only they may).
async fn remove_guardian(ctx: web::Data<Ctx>, req: HttpRequest, user: web::Path<u64>) -> Reply {
    let member = ctx.member(&req)?;
    let engine = ctx.partitions.of_user(UserId(*user))?;
    ctx.step_up_always(&member)?;
    engine.remove_guardian(UserId(*user), member.user).await.map_err(fail)?;
    Ok(ok(json!({ "user": UserId(*user), "guardian": Value::Null })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendPacket {
    id: PacketId,
    group: GroupId,
    split: Split,
    #[serde(default)]
    greeting: String,
}

async fn send_packet(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<SendPacket>) -> Reply {
    let member = ctx.member(&req)?;
    let SendPacket { id, group, split, greeting } = body.into_inner();
    let engine = ctx.partitions.of_user(member.user)?;
    ctx.limit(&req, Action::Send, member.user)?;
    let (send, total) = (Send::Packet(id), split.total());
    let reserved = ctx.step_up(&member, send, total)?;
    let spec = NewPacket { id, sender: member.user, group, split, greeting };
    let answer = match engine.send_packet(spec).await {
        Ok(view) => match engine.remitted_packet(view.id) {
            Some(remittance) => held_elsewhere(&ctx, &remittance, without_seed(&view)).await,
            None => Ok(ok(without_seed(&view))),
        },
        Err(e) => Err(fail(e)),
    };
    if let (Err(error), true) = (&answer, reserved) {
        ctx.release(&member, send, total, error);
    }
    answer
}

/// The answer to a send whose packet or transfer is held in another partition than its
/// sender's wallet (debited already): once that partition has it (waiting up to
/// [`crate::cluster::CREDIT_WAIT`], here or on the node serving it), its view there, or why it
/// was not taken in (its amount is then on its way back). If it has not arrived by then, or
/// its partition cannot say now (changing hands, shutting down), 202 with `sent`, the view it
/// was sent with: it is on its way, and the send stands.
async fn held_elsewhere(ctx: &Ctx, remittance: &Remittance, sent: Value) -> Reply {
    let arrived = match ctx.partitions.at(remittance.to) {
        Ok(engine) => arrival_here(&engine, remittance).await,
        Err(_) => match ctx.partitions.arrival(remittance).await {
            Some(answer) => answer.map(ok),
            None => Err(not_yet()),
        },
    };
    match arrived {
        // Only these say it was not taken in: anything else leaves the send standing.
        Err(e) if !matches!(e.kind(), "id_conflict" | "too_many_open_packets" | "too_many_pending") => {
            Ok(HttpResponse::Accepted().json(sent))
        }
        answer => answer,
    }
}

fn not_yet() -> ApiError {
    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_yet", "it has not arrived in its partition yet")
}

/// What became of a packet or transfer sent from another partition to this one, once it
/// arrives (up to [`crate::cluster::CREDIT_WAIT`]; 504 `not_yet` past it).
async fn arrival_here(engine: &Engine, remittance: &Remittance) -> Reply {
    let arrived = async {
        match remittance.transfer {
            Some(_) => engine.transfer_arrival(remittance).await.map(ok).map_err(fail),
            None => engine.arrival(remittance).await.map(|view| ok(without_seed(&view))).map_err(fail),
        }
    };
    tokio::time::timeout(crate::cluster::CREDIT_WAIT, arrived).await.unwrap_or_else(|_| Err(not_yet()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimsPage {
    /// Claims after this position.
    #[serde(default)]
    after: u32,
    #[serde(default)]
    limit: Option<usize>,
}

/// A packet, for its group's members, its sender and the host, with one page of its claims.
async fn packet(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>, page: web::Query<ClaimsPage>) -> Reply {
    let principal = ctx.principal(&req)?;
    let engine = ctx.partitions.of_packet(PacketId(*id))?;
    let view = engine.packet(PacketId(*id)).await.map_err(fail)?;
    if let Principal::Member(member) = &principal {
        let approver = view.approval.map(|a| a.approver);
        let sees = view.sender == member.user
            || engine.is_member(view.group, member.user)
            || may_approve(&ctx, member, approver).await
            || admin_of_group(&ctx, member, view.group).await;
        if !sees {
            return Err(ApiError::forbidden(
                "only the packet's group, its sender, its approver and its org's admins may see it",
            ));
        }
    }
    let limit = page.limit.unwrap_or(ctx.settings.claims_page_max).clamp(1, ctx.settings.claims_page_max);
    let claims: Vec<_> = view.claims.iter().filter(|c| c.position > page.after).take(limit).cloned().collect();
    let next = (claims.last().is_some_and(|c| c.position < view.claims.len() as u32))
        .then(|| claims.last().map(|c| c.position));
    let mut body = match principal {
        Principal::Host => serde_json::to_value(&view).unwrap_or_default(),
        Principal::Member(_) => without_seed(&view),
    };
    body["claims"] = serde_json::to_value(claims).unwrap_or_default();
    body["claims_next"] = json!(next.flatten());
    Ok(ok(body))
}

/// A packet as a member may see it: without the seed of its draw, which would tell every
/// share (and the best position) before anyone grabs. The host sees it (audits re-derive the
/// shares from it).
fn without_seed(view: &PacketView) -> Value {
    let mut body = serde_json::to_value(view).unwrap_or_default();
    if let Value::Object(fields) = &mut body {
        fields.remove("seed");
    }
    body
}

/// What a grab answers, over HTTP and WebSocket: the share, or (`already`) the first share
/// again.
#[derive(Serialize)]
pub struct GrabReply {
    packet: PacketId,
    amount: Amount,
    position: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    shares_left: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<Amount>,
    already: bool,
    /// On a cluster, a share won for a wallet another partition holds that was not seen
    /// there in time ([`crate::cluster::CREDIT_WAIT`]): the remittance carrying it, which
    /// arrives. Absent when the share is in the wallet as the answer is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    remitted: Option<Remittance>,
}

/// A grab's result as its reply; `credited` says whether a share that left for another
/// partition was seen in its wallet.
pub fn grab_reply(packet: PacketId, result: Result<Grabbed, GrabError>, credited: bool) -> Result<GrabReply, ApiError> {
    match result {
        Ok(won) => Ok(GrabReply {
            packet,
            amount: won.amount,
            position: won.position,
            shares_left: Some(won.shares_left),
            remaining: Some(won.remaining),
            already: false,
            remitted: won.remitted.filter(|_| !credited),
        }),
        Err(GrabError::AlreadyGrabbed { amount, position }) => Ok(GrabReply {
            packet,
            amount,
            position,
            shares_left: None,
            remaining: None,
            already: true,
            remitted: None,
        }),
        Err(e) => Err(fail(e)),
    }
}

async fn grab(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    let member = ctx.member(&req)?;
    let packet = PacketId(*id);
    ctx.limit(&req, Action::Grab, member.user)?;
    // Here, or over the link to the node serving the packet (not forwarded whole: a link
    // carries many grabs at once).
    let started = std::time::Instant::now();
    let (result, credited) = ctx.partitions.grab(packet, member.user).await;
    crate::telemetry::grab_latency(started.elapsed());
    Ok(ok(grab_reply(packet, result, credited)?))
}

async fn cancel(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    let member = ctx.member(&req)?;
    let packet = PacketId(*id);
    match ctx.partitions.of_packet(packet)?.cancel_packet(packet, member.user).await {
        Ok(refunded) => Ok(ok(json!({ "packet": packet, "refunded": refunded, "already": false }))),
        Err(CancelError::AlreadyCancelled { refunded }) => {
            Ok(ok(json!({ "packet": packet, "refunded": refunded, "already": true })))
        }
        Err(e) => Err(fail(e)),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    #[serde(default)]
    reason: String,
}

/// Whether `member` is the approver a send waits (waited) for.
async fn may_approve(ctx: &Ctx, member: &Member, approver: Option<Approver>) -> bool {
    match approver {
        Some(Approver::Guardian(guardian)) => guardian == member.user,
        Some(Approver::OrgAdmins(org)) => ctx.is_admin(member, org).await,
        _ => false,
    }
}

/// Whether `member` administers an org `group` is attached to (among the orgs of their
/// claims).
async fn admin_of_group(ctx: &Ctx, member: &Member, group: GroupId) -> bool {
    let Ok(engine) = ctx.partitions.any() else { return false };
    for &org in &member.admin_of {
        if let Ok(view) = engine.org(org).await {
            if view.groups.contains(&group) && view.admins.contains(&member.user) {
                return true;
            }
        }
    }
    false
}

/// A body that may be empty (then `T::default()`), but when given must parse: a malformed
/// reason is refused, not dropped.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &web::Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Json deserialize error: {e}")))
}

/// Who may approve `subject`, as the engine recorded it: an org's admins must also hold the
/// org's admin claim.
async fn approver_of(engine: &Engine, subject: ApprovalId) -> Result<Option<Approver>, ApiError> {
    let approval = match subject {
        ApprovalId::Packet(id) => engine.packet(id).await.map_err(fail)?.approval,
        ApprovalId::Transfer(id) => engine.transfer_view(id).await.map_err(fail)?.approval,
    };
    Ok(approval.map(|a| a.approver))
}

async fn decide(ctx: &Ctx, req: &HttpRequest, subject: ApprovalId, reject: Option<String>) -> Reply {
    let member = ctx.member(req)?;
    let engine = match subject {
        ApprovalId::Packet(id) => ctx.partitions.of_packet(id)?,
        ApprovalId::Transfer(id) => ctx.partitions.of_transfer(id)?,
    };
    if let Some(Approver::OrgAdmins(org)) = approver_of(&engine, subject).await? {
        ctx.admin(req, org).await?;
    }
    let (result, already) = match reject {
        None => match engine.approve(subject, member.user).await {
            Ok(()) => (json!({ "approved": true }), false),
            Err(ApprovalError::AlreadyApproved) => (json!({ "approved": true }), true),
            Err(e) => return Err(fail(e)),
        },
        Some(reason) => match engine.reject(subject, member.user, reason).await {
            Ok(refunded) => (json!({ "rejected": true, "refunded": refunded }), false),
            Err(ApprovalError::AlreadyRejected) => (json!({ "rejected": true }), true),
            Err(e) => return Err(fail(e)),
        },
    };
    let mut body = result;
    body["subject"] = json!(subject);
    body["already"] = json!(already);
    Ok(ok(body))
}

async fn approve_packet(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    decide(&ctx, &req, ApprovalId::Packet(PacketId(*id)), None).await
}

async fn reject_packet(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>, body: web::Bytes) -> Reply {
    let reason = optional_body::<Reason>(&body)?.reason;
    decide(&ctx, &req, ApprovalId::Packet(PacketId(*id)), Some(reason)).await
}

async fn approve_transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    decide(&ctx, &req, ApprovalId::Transfer(TransferId(*id)), None).await
}

async fn reject_transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>, body: web::Bytes) -> Reply {
    let reason = optional_body::<Reason>(&body)?.reason;
    decide(&ctx, &req, ApprovalId::Transfer(TransferId(*id)), Some(reason)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendTransfer {
    id: TransferId,
    to: UserId,
    amount: Amount,
    #[serde(default = "instant")]
    arrival: Arrival,
    #[serde(default)]
    note: String,
    #[serde(default)]
    org: Option<OrgId>,
}

fn instant() -> Arrival {
    Arrival::Instant
}

async fn send_transfer(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<SendTransfer>) -> Reply {
    let member = ctx.member(&req)?;
    let SendTransfer { id, to, amount, arrival, note, org } = body.into_inner();
    let engine = ctx.partitions.of_user(member.user)?;
    ctx.limit(&req, Action::Transfer, member.user)?;
    let send = Send::Transfer(id);
    let reserved = ctx.step_up(&member, send, Some(amount))?;
    let spec = NewTransfer { id, from: member.user, to, amount, arrival, note, org };
    let answer = match engine.transfer(spec).await {
        Ok(view) => match engine.remitted_transfer(view.id) {
            Some(remittance) => held_elsewhere(&ctx, &remittance, json!(view)).await,
            None => Ok(ok(view)),
        },
        Err(e) => Err(fail(e)),
    };
    if let (Err(error), true) = (&answer, reserved) {
        ctx.release(&member, send, Some(amount), error);
    }
    answer
}

/// A transfer, for its two parties and its approver.
async fn transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    let member = ctx.member(&req)?;
    let view = ctx.partitions.of_transfer(TransferId(*id))?.transfer_view(TransferId(*id)).await.map_err(fail)?;
    let approver = view.approval.map(|a| a.approver);
    if view.from != member.user && view.to != member.user && !may_approve(&ctx, &member, approver).await {
        return Err(ApiError::forbidden("only the transfer's parties and its approver may see it"));
    }
    Ok(ok(view))
}

/// A party's move on a transfer; a retry of a move that settled it returns the transfer.
async fn act(ctx: &Ctx, req: &HttpRequest, id: u64, done: TransferStatus) -> Reply {
    let member = ctx.member(req)?;
    let (id, by) = (TransferId(id), member.user);
    let engine = ctx.partitions.of_transfer(id)?;
    ctx.limit(req, Action::Transfer, member.user)?;
    let result = match done {
        TransferStatus::Recalled => engine.recall_transfer(id, by).await,
        TransferStatus::Accepted => engine.accept_transfer(id, by).await,
        _ => engine.decline_transfer(id, by).await,
    };
    let (view, already) = match result {
        Ok(view) => (view, false),
        Err(TransferError::AlreadySettled { status } | TransferError::TooLate { status }) if status == done => {
            let view = engine.transfer_view(id).await.map_err(fail)?;
            // Only a party's retry: someone else hears the usual refusal.
            let party = if done == TransferStatus::Recalled { view.from } else { view.to };
            if party != by {
                return Err(fail(TransferError::TooLate { status }));
            }
            (view, true)
        }
        Err(e) => return Err(fail(e)),
    };
    let mut body = serde_json::to_value(view).unwrap_or_default();
    body["already"] = json!(already);
    Ok(ok(body))
}

async fn recall_transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    act(&ctx, &req, *id, TransferStatus::Recalled).await
}

async fn accept_transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    act(&ctx, &req, *id, TransferStatus::Accepted).await
}

async fn decline_transfer(ctx: web::Data<Ctx>, req: HttpRequest, id: web::Path<u64>) -> Reply {
    act(&ctx, &req, *id, TransferStatus::Declined).await
}

// ---- an org's admins ----

async fn org(ctx: web::Data<Ctx>, req: HttpRequest, org: web::Path<u64>) -> Reply {
    let org = OrgId(*org);
    ctx.admin(&req, org).await?;
    Ok(ok(ctx.partitions.any()?.org(org).await.map_err(fail)?))
}

async fn set_policy(ctx: web::Data<Ctx>, req: HttpRequest, org: web::Path<u64>, body: web::Json<Policy>) -> Reply {
    let org = OrgId(*org);
    let by = ctx.admin(&req, org).await?.user;
    let policy = body.into_inner();
    ctx.partitions
        .everywhere(&req, |engine| {
            let policy = policy.clone();
            async move { Ok(ok(engine.set_policy(org, by, policy).await.map_err(fail)?)) }
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Attach {
    group: GroupId,
}

async fn attach_group(ctx: web::Data<Ctx>, req: HttpRequest, org: web::Path<u64>, body: web::Json<Attach>) -> Reply {
    let org = OrgId(*org);
    let admin = ctx.admin(&req, org).await?;
    let (group, by) = (body.group, admin.user);
    ctx.partitions
        .everywhere(&req, |engine| async move { Ok(ok(engine.attach_group(org, group, by).await.map_err(fail)?)) })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    since: Option<u64>,
    until: Option<u64>,
    actor: Option<u64>,
    kind: Option<OpKind>,
    after: Option<u64>,
    #[serde(default)]
    limit: usize,
    /// On a cluster: the partition whose log to read.
    partition: Option<u32>,
}

async fn operation_log(ctx: web::Data<Ctx>, req: HttpRequest, org: web::Path<u64>, q: web::Query<LogQuery>) -> Reply {
    let org = OrgId(*org);
    ctx.admin(&req, org).await?;
    let q = q.into_inner();
    let query = OpQuery {
        since: q.since.map(Timestamp),
        until: q.until.map(Timestamp),
        actor: q.actor.map(UserId),
        kind: q.kind,
        after: q.after,
        limit: q.limit,
    };
    let engine = match (q.partition, ctx.partitions.count()) {
        (_, 1) => ctx.partitions.at(0)?,
        (Some(index), count) if index < count => ctx.partitions.at(index)?,
        (_, count) => {
            return Err(ApiError::invalid(format!(
                "each of the cluster's {count} partitions keeps its own log: name one with ?partition=0…{}",
                count - 1
            )))
        }
    };
    Ok(ok(engine.operations(org, query).await.map_err(fail)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRecall {
    org: OrgId,
    #[serde(default)]
    reason: String,
}

/// An admin recalls an org packet's unclaimed remainder. The body names the org, whose admin
/// claim the token must carry; the packet must be in one of its groups.
async fn admin_recall(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    id: web::Path<u64>,
    body: web::Json<AdminRecall>,
) -> Reply {
    let AdminRecall { org, reason } = body.into_inner();
    let packet = PacketId(*id);
    let engine = ctx.partitions.of_packet(packet)?;
    let admin = ctx.admin(&req, org).await?;
    let view = engine.packet(packet).await.map_err(fail)?;
    let groups = engine.org(org).await.map_err(fail)?.groups;
    if !groups.contains(&view.group) {
        return Err(fail(RecallError::NotOrgPacket));
    }
    match engine.admin_recall(packet, admin.user, reason).await {
        Ok(refunded) => Ok(ok(json!({ "packet": packet, "refunded": refunded, "already": false }))),
        // A retry: the packet was recalled, and its refund is in its view.
        Err(RecallError::AlreadyClosed) => match engine.packet(packet).await.map_err(fail)?.status {
            PacketStatus::Recalled { refunded } => {
                Ok(ok(json!({ "packet": packet, "refunded": refunded, "already": true })))
            }
            _ => Err(fail(RecallError::AlreadyClosed)),
        },
        Err(e) => Err(fail(e)),
    }
}

// ---- the nodes of a cluster ----

/// Another node waits (up to [`crate::cluster::CREDIT_WAIT`]) until a share it remitted is in
/// its wallet here, to answer its grab with the share credited.
async fn await_remittance(ctx: web::Data<Ctx>, req: HttpRequest, body: web::Json<Remittance>) -> Reply {
    if !ctx.partitions.forwarded(&req) {
        return Err(ApiError::forbidden("this route is for the nodes of the cluster"));
    }
    let remittance = body.into_inner();
    let engine = ctx.partitions.at(remittance.to)?;
    if remittance.packet.is_some() || remittance.transfer.is_some() {
        return arrival_here(&engine, &remittance).await;
    }
    match tokio::time::timeout(crate::cluster::CREDIT_WAIT, engine.await_remittance(&remittance)).await {
        Ok(Ok(())) => Ok(ok(json!({ "credited": true }))),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_yet", "the share has not arrived yet")),
    }
}
