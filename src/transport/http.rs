//! The public HTTP front: the upgrade checks, answered as plain HTTP before
//! any WebSocket exists, and the operations endpoints when there is no
//! admin listener. Every connection holds a place among the pending ones
//! until it upgrades.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    CONNECTION, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::application::admission::Refused;
use crate::application::authorize::Refusal;
use crate::application::pending::ClientFull;
use crate::domain::ids::SectionId;
use crate::domain::protocol::CloseCode;
use crate::telemetry::events::{PendingClosed, UpgradeRefused};

use super::context::ServerContext;
use super::deflate_offer;
use super::front::{self, Body, CloseSignal, PendingPlace, plain};
use super::mailbox::{ClientInfo, HandedOff, ShardGone};
use super::upgrade::{self, TokenSource};
use super::{ops, session};

/// Why a 503 is a shutdown's (no `Retry-After`: go elsewhere) and not a full
/// instance's.
const DRAINING: &str = "draining";
/// How long a refused client should wait before it tries again, when the
/// instance or the user is at a connection limit: long enough for a
/// reconnect storm to spread out, short enough not to be noticed.
const RETRY_AFTER_SECONDS: &str = "5";

/// Accepts until the shard stops. A connection whose client address holds
/// its share of the pending connections is closed at once, unanswered; one
/// that takes the last place evicts the longest-idle.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<ServerContext>, shard: usize) {
    loop {
        let (stream, peer) = front::accept(&listener).await;
        let peer = peer.ip().to_canonical();
        let close = CloseSignal::default();
        let Ok(entered) = ctx.pending.enter(upgrade::counted_address(peer, &ctx.trusted_proxies), close.clone()) else {
            PendingClosed::ClientFull.emit();
            continue;
        };
        tokio::task::spawn_local(serve_http(stream, peer, entered.place, close, Arc::clone(&ctx), shard));
        if entered.evicted {
            PendingClosed::Evicted.emit();
            // An evicted connection of this shard closes before the next
            // accept takes another descriptor.
            tokio::task::yield_now().await;
        }
    }
}

async fn serve_http(
    stream: TcpStream,
    peer: IpAddr,
    place: PendingPlace,
    close: CloseSignal,
    ctx: Arc<ServerContext>,
    shard: usize,
) {
    let service = service_fn(move |request| {
        let answer = answer(request, peer, &place, &ctx, shard);
        async move { answer }
    });
    front::serve(stream, service, close).await;
}

/// One request: counted under its client first (each request through a
/// trusted proxy names its own), then answered. `Err` has hyper close the
/// connection unanswered.
fn answer(
    request: Request<Incoming>,
    peer: IpAddr,
    place: &PendingPlace,
    ctx: &Arc<ServerContext>,
    shard: usize,
) -> Result<Response<Body>, ClientFull> {
    let client = upgrade::client_address(peer, request.headers(), &ctx.trusted_proxies);
    if let Err(full) = place.request(upgrade::counted_address(client, &ctx.trusted_proxies)) {
        PendingClosed::ClientFull.emit();
        return Err(full);
    }
    if ctx.public_ops
        && let Some(response) = ops::answer(&request, ctx)
    {
        return Ok(response);
    }
    if request.uri().path().starts_with("/ws/") {
        return Ok(upgrade(request, client, place, ctx, shard));
    }
    Ok(front::not_found())
}

fn refuse(status: StatusCode, why: &str, route: &'static str) -> Response<Body> {
    UpgradeRefused { status: status.as_u16(), why, route }.emit();
    let text = match status {
        StatusCode::BAD_REQUEST => "sectionId must be a UUID\n",
        StatusCode::UNAUTHORIZED => "missing or invalid token\n",
        StatusCode::FORBIDDEN => "token lacks an allowed role or the required permission\n",
        StatusCode::UPGRADE_REQUIRED => "WebSocket upgrade required\n",
        StatusCode::SERVICE_UNAVAILABLE if why == DRAINING => "server is shutting down\n",
        StatusCode::SERVICE_UNAVAILABLE => "server is at its connection limit; retry shortly\n",
        StatusCode::TOO_MANY_REQUESTS => "too many connections for this user\n",
        _ => "not found\n",
    };
    let mut response = plain(status, text);
    let headers = response.headers_mut();
    match status {
        StatusCode::UPGRADE_REQUIRED => {
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
        StatusCode::TOO_MANY_REQUESTS => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        StatusCode::SERVICE_UNAVAILABLE if why != DRAINING => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        _ => {}
    }
    response
}

fn upgrade(
    mut request: Request<Incoming>,
    client: IpAddr,
    place: &PendingPlace,
    ctx: &Arc<ServerContext>,
    shard: usize,
) -> Response<Body> {
    let route = upgrade::route_kind(request.uri());
    let Some(target) = upgrade::parse_target(request.uri(), request.headers()) else {
        return refuse(StatusCode::NOT_FOUND, "unknown path", route);
    };
    if ctx.shutdown.is_triggered() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, DRAINING, route);
    }
    let Some(key) = upgrade::websocket_key(request.method(), request.headers()) else {
        return refuse(StatusCode::UPGRADE_REQUIRED, "not a websocket upgrade", route);
    };
    let accept_key = derive_accept_key(key);
    let Some(section) = SectionId::parse(target.section) else {
        return refuse(StatusCode::BAD_REQUEST, "sectionId is not a UUID", route);
    };
    let token_source = target.token.as_ref().map(|(_, source)| *source);
    let offers_bearer = target.offers_bearer;
    let deflate = ctx.session.compression.and_then(|_| deflate_offer::negotiate(request.headers()));
    let resume = target.resume;
    let token = target.token.map(|(token, _)| token);
    let claims = match ctx.authorizer.authorize(token.as_deref()) {
        Ok(claims) => claims,
        Err(Refusal::Unauthenticated(why)) => return refuse(StatusCode::UNAUTHORIZED, &why, route),
        Err(Refusal::Forbidden(denial)) => return refuse(StatusCode::FORBIDDEN, &format!("{denial:?}"), route),
    };
    let token = token.expect("authorized requests carry a token");
    let permit = match ctx.admission.admit(&claims.subject) {
        Ok(permit) => permit,
        Err(Refused::InstanceFull) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "instance full", route),
        Err(Refused::UserFull) => return refuse(StatusCode::TOO_MANY_REQUESTS, "user at their limit", route),
    };
    let client = ClientInfo { addr: client, request_id: uuid::Uuid::new_v4().simple().to_string() };
    // A session from here on, counted by admission.
    place.leave();
    tracing::debug!(
        %section,
        sub = %claims.subject,
        client = %client.addr,
        request_id = %client.request_id,
        token_source = token_source.map(TokenSource::label),
        shard,
        "upgrade accepted"
    );

    let on_upgrade = hyper::upgrade::on(&mut request);
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_local(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "upgrade did not complete"),
        };
        // Take the raw socket back from hyper so that the owning shard can
        // register it with its own reactor.
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => parts,
            Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
        };
        let stream = match parts.io.into_inner().into_std() {
            Ok(stream) => stream,
            Err(error) => return tracing::warn!(%error, "could not detach the upgraded socket"),
        };
        let read_buf = parts.read_buf;
        let deflate = deflate.is_some();
        let handed_off = HandedOff { stream, read_buf, section, token, claims, client, permit, resume, deflate };
        if let Err(ShardGone(handed_off)) = ctx.shards.owner(section).adopt(Box::new(handed_off)) {
            tracing::error!(%section, "the shard that owns this section has stopped");
            session::close_unadopted(handed_off.stream, CloseCode::INTERNAL_ERROR).await;
        }
    });

    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept_key.parse().expect("base64 is a valid header value"));
    if offers_bearer {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("bearer"));
    }
    if let Some(accepted) = deflate {
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(accepted));
    }
    response
}
