//! One socket: `hello`, then commands until the socket closes.
//!
//! The socket's one task parses each frame in two steps (its `type` and `ref` first, so
//! even a malformed command is answered under its `ref`), calls the [`Service`], and
//! queues the one answer; all the while it writes the socket's outbox ([`Socket`]).
//! Commands of one socket are handled in order, so answers come back in the order the
//! frames were sent. On shutdown the command in progress finishes (its `ok` is queued)
//! before the socket is closed with 1001.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backchannel_protocol::server::{AppendResult, ReadResult, SessionUser, SubscribeResult};
use backchannel_protocol::{decode, ClientFrame, ConversationId, FrameHead, Ref};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{self, Message};

use super::outbox::{CloseReason, CustomerOutbox, Outbox, StaffOutbox};
use super::socket::{Next, Socket};
use super::{SocketPermit, UserSocket};
use crate::app::AppState;
use crate::auth::Identity;
use crate::error::ServiceError;
use crate::hub::{ConnId, Seat};
use crate::service::Service;
use crate::visibility::{ControlFrame, StaffFrame};
use backchannel_protocol::server::ServerFrame;

/// What an `ok` carries besides `type` and `ref`.
#[derive(Serialize)]
#[serde(untagged)]
enum Reply {
    Appended(AppendResult),
    Read(ReadResult),
    Empty {},
    /// `ping`'s answer: `ok` with its `ref`, else a `pong` frame.
    Pong {},
    /// The `ok` is already queued where it had to go (a `subscribe`'s, by the room).
    #[serde(skip)]
    Queued,
}

pub fn serve(
    socket: super::WebSocket,
    state: Arc<AppState>,
    mut permit: SocketPermit,
) -> impl Future<Output = ()> + Send {
    let (outbox, receiver) = Outbox::new(
        state.limits.send_queue_frames,
        state.limits.heartbeat_interval * 2,
        state.metrics.clone(),
    );
    permit.join(&outbox);
    let mut socket = Socket::new(socket, receiver);
    // An async block rather than an async fn: an async fn moves its arguments into its
    // body's locals, so the socket would be held twice for as long as it is open.
    async move {
        let _permit = permit;
        // The session is boxed, and so is a command's handling inside it: an async fn's
        // state is as large as the largest thing it awaits, and this one lives as long as
        // the socket. Boxed, an idle socket's task holds only the read loop.
        Box::pin(session(&mut socket, &outbox, &state)).await;
        // Whatever ended the session has closed the outbox with its reason; this covers
        // the rest (the first reason given wins).
        outbox.close(CloseReason::ClientGone);
        // Boxed: the closing handshake's state is needed once, not for the socket's life.
        Box::pin(socket.finish()).await;
    }
}

/// `hello`, then commands until the socket closes.
async fn session(socket: &mut Socket, outbox: &Outbox, state: &Arc<AppState>) {
    let Some((identity, _counted)) = Box::pin(hello(socket, outbox, state)).await else {
        return;
    };
    let mut session = Session {
        conn: ConnId::next(),
        identity,
        outbox: outbox.clone(),
        service: state.service.clone(),
        subscriptions: HashSet::new(),
        max_subscriptions: state.limits.max_subscriptions,
        rate: state.rate.connection(),
        state: state.clone(),
    };
    if let Some(staff) = StaffOutbox::new(outbox.clone(), &session.identity) {
        let opened = session
            .service
            .open_session(&session.identity, session.conn, staff);
        socket.drive(Box::pin(opened)).await;
    }
    Box::pin(session.run(socket, state)).await;
    session.leave_all();
    session
        .service
        .close_session(&session.identity, session.conn);
}

/// Waits for a valid `hello` and answers `welcome`; `None` if the socket must close.
async fn hello(
    socket: &mut Socket,
    outbox: &Outbox,
    state: &Arc<AppState>,
) -> Option<(Identity, UserSocket)> {
    let deadline = Instant::now() + state.limits.hello_timeout;
    loop {
        let message = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                outbox.close(CloseReason::Unauthorized);
                return None;
            }
            next = socket.next() => match next {
                Next::Frame(message) => message,
                Next::Closing => return None,
                Next::Shutdown => {
                    outbox.close(CloseReason::GoingAway);
                    return None;
                }
            },
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                let refused = refuse(outbox, None, "the first frame must be a JSON `hello`");
                socket.drive(refused).await;
                return None;
            }
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Err(e)) => {
                outbox.close(read_error_reason(e));
                return None;
            }
        };
        state.metrics.frames_in.inc();
        let head: FrameHead = serde_json::from_str(&text).unwrap_or_default();
        let reference = head.reference();
        let token = match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Hello { token }) => token,
            _ => {
                let refused = refuse(
                    outbox,
                    reference.as_ref(),
                    "the first frame must be `hello`",
                );
                socket.drive(refused).await;
                return None;
            }
        };
        return socket
            .drive(welcome(&token, reference.as_ref(), outbox, state))
            .await;
    }
}

/// Authenticates `hello`'s token and answers `welcome`, or refuses it; a user with the
/// most sockets the node allows is refused with 4029.
async fn welcome(
    token: &str,
    reference: Option<&Ref>,
    outbox: &Outbox,
    state: &Arc<AppState>,
) -> Option<(Identity, UserSocket)> {
    match state.service.authenticate(token).await {
        Ok(identity) => {
            let Some(counted) = UserSocket::acquire(state, &identity.user_id) else {
                let limit = state.limits.max_connections_per_user;
                let frame: ServerFrame<'_, ()> = ServerFrame::Error {
                    reference,
                    code: backchannel_protocol::ErrorCode::RateLimited,
                    message: &format!("this user has {limit} sockets open on this node already"),
                    missed: None,
                };
                outbox.control(ControlFrame::new(&frame)).await;
                outbox.close(CloseReason::TooManySockets);
                return None;
            };
            let user = SessionUser {
                id: identity.user_id.clone(),
                role: identity.role,
                name: identity.name.clone(),
            };
            let session_id = uuid::Uuid::new_v4().to_string();
            let welcome: ServerFrame<'_, ()> = ServerFrame::Welcome {
                reference,
                session_id: &session_id,
                user: &user,
                heartbeat_ms: state.limits.heartbeat_interval.as_millis() as u64,
            };
            outbox.control(ControlFrame::new(&welcome)).await;
            Some((identity, counted))
        }
        Err(e) => {
            refuse(outbox, reference, &e.to_string()).await;
            None
        }
    }
}

/// Answers `unauthorized` and closes the socket with 4001.
async fn refuse(outbox: &Outbox, reference: Option<&Ref>, message: &str) {
    let frame: ServerFrame<'_, ()> = ServerFrame::Error {
        reference,
        code: backchannel_protocol::ErrorCode::Unauthorized,
        message,
        missed: None,
    };
    outbox.control(ControlFrame::new(&frame)).await;
    outbox.close(CloseReason::Unauthorized);
}

/// A read error closes the socket: a frame over the limit with 1009, a protocol
/// violation with 1002, a text frame that is not UTF-8 with 1007 (RFC 6455, 7.4.1); a
/// connection that is gone gets no close frame.
fn read_error_reason(error: tungstenite::Error) -> CloseReason {
    match error {
        tungstenite::Error::Capacity(_) => CloseReason::TooBig,
        tungstenite::Error::Protocol(_) => CloseReason::ProtocolError,
        tungstenite::Error::Utf8(_) => CloseReason::InvalidPayload,
        _ => CloseReason::ClientGone,
    }
}

struct Session {
    conn: ConnId,
    identity: Identity,
    outbox: Outbox,
    service: Arc<Service>,
    subscriptions: HashSet<ConversationId>,
    max_subscriptions: usize,
    rate: crate::rate::ConnectionRate,
    state: Arc<AppState>,
}

impl Session {
    async fn run(&mut self, socket: &mut Socket, state: &AppState) {
        let interval = state
            .limits
            .heartbeat_interval
            .max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= interval * 2 {
                        self.outbox.close(CloseReason::HeartbeatTimeout);
                        return;
                    }
                    // A token is good until its `exp`, on a socket as over HTTP: checked
                    // at each heartbeat rather than by a timer of its own, which every
                    // idle socket would carry for its whole life. The client fetches a
                    // new token on 4001 and resumes with `since`.
                    if self.identity.expired_at(crate::auth::unix_now()) {
                        let expired = refuse(
                            &self.outbox,
                            None,
                            "token expired: reconnect with a new token",
                        );
                        socket.drive(Box::pin(expired)).await;
                        return;
                    }
                    // Boxed, as the branches below: this future lives as long as the
                    // socket, and inlined, each await's state would be part of it.
                    if !socket.drive(Box::pin(self.outbox.ping())).await {
                        return;
                    }
                }
                next = socket.next() => {
                    let message = match next {
                        Next::Frame(Some(Ok(message))) => message,
                        Next::Frame(Some(Err(e))) => {
                            self.outbox.close(read_error_reason(e));
                            return;
                        }
                        Next::Frame(None) | Next::Closing => return,
                        Next::Shutdown => {
                            // The command before has its answer queued: it goes out
                            // before the close frame.
                            self.outbox.close(CloseReason::GoingAway);
                            return;
                        }
                    };
                    last_seen = Instant::now();
                    state.metrics.frames_in.inc();
                    match message {
                        Message::Text(text) => socket.drive(Box::pin(self.handle_text(&text))).await,
                        Message::Binary(_) => {
                            let error = self.over_rate().err().unwrap_or_else(|| {
                                ServiceError::bad_request(
                                    "binary frames are not accepted; send JSON text frames",
                                )
                            });
                            socket.drive(Box::pin(self.answer(None, Err(error)))).await;
                        }
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    async fn handle_text(&mut self, text: &str) {
        let decoded = decode(text);
        let reference = decoded.reference.clone();
        // Every frame but a ping counts against the rate first, malformed ones too: each
        // costs an answer.
        if !decoded.is_ping() {
            if let Err(limited) = self.over_rate() {
                return self.answer(reference.as_ref(), Err(limited)).await;
            }
        }
        // (This future is boxed by `run`: the largest command's state is not inlined
        // into every idle socket's task for its whole life.)
        let result = match decoded.frame {
            Ok(frame) => self.dispatch(frame, reference.as_ref()).await,
            Err(e) => Err(ServiceError::bad_request(e.to_string())),
        };
        self.answer(reference.as_ref(), result).await;
    }

    async fn dispatch(
        &mut self,
        frame: ClientFrame,
        reference: Option<&Ref>,
    ) -> Result<Reply, ServiceError> {
        let who = &self.identity;
        if !matches!(frame, ClientFrame::Ping) {
            self.service.touch(who);
        }
        match frame {
            ClientFrame::WatchAgents => {
                let Some(outbox) = StaffOutbox::new(self.outbox.clone(), who) else {
                    return Err(ServiceError::forbidden(
                        "only supervisors and admins see the agents' presence",
                    ));
                };
                let agents = self
                    .service
                    .watch_agents(who, self.conn, outbox.clone())
                    .await?;
                outbox.push_wait(&StaffFrame::agents(&agents)).await;
                Ok(Reply::Empty {})
            }
            ClientFrame::UnwatchAgents => {
                self.service.unwatch_agents(self.conn);
                Ok(Reply::Empty {})
            }
            ClientFrame::Hello { .. } => Err(ServiceError::bad_request("already said hello")),
            ClientFrame::Ping => Ok(Reply::Pong {}),
            ClientFrame::Subscribe {
                conversation_id,
                since,
            } => {
                if !self.subscriptions.contains(&conversation_id)
                    && self.subscriptions.len() >= self.max_subscriptions
                {
                    return Err(ServiceError::bad_request(format!(
                        "at most {} subscriptions per socket",
                        self.max_subscriptions
                    )));
                }
                let seat = self.seat();
                let ok = |result: &SubscribeResult| {
                    reference.and_then(|reference| {
                        ControlFrame::new(&ServerFrame::Ok { reference, result })
                    })
                };
                match self
                    .service
                    .subscribe(who, self.conn, seat, conversation_id, since, &ok)
                    .await
                {
                    Ok(_) => {
                        self.subscriptions.insert(conversation_id);
                        Ok(Reply::Queued)
                    }
                    Err(e) => {
                        self.subscriptions.remove(&conversation_id);
                        Err(e)
                    }
                }
            }
            ClientFrame::Unsubscribe { conversation_id } => {
                self.service.unsubscribe(self.conn, conversation_id);
                self.subscriptions.remove(&conversation_id);
                Ok(Reply::Empty {})
            }
            ClientFrame::Send {
                conversation_id,
                client_id,
                body,
                based_on_seq,
            } => self
                .service
                .send_message(who, conversation_id, client_id, body, based_on_seq)
                .await
                .map(Reply::Appended),
            ClientFrame::EditNote {
                conversation_id,
                note_id,
                body,
            } => self
                .service
                .edit_note(who, conversation_id, note_id, body)
                .await
                .map(Reply::Appended),
            ClientFrame::PinNote {
                conversation_id,
                note_id,
                pinned,
            } => self
                .service
                .pin_note(who, conversation_id, note_id, pinned)
                .await
                .map(Reply::Appended),
            ClientFrame::Assign {
                conversation_id,
                assignee_id,
                team_id,
                note,
            } => self
                .service
                .assign(who, conversation_id, assignee_id, team_id, note)
                .await
                .map(Reply::Appended),
            ClientFrame::SetStatus {
                conversation_id,
                status,
            } => self
                .service
                .set_status(who, conversation_id, status)
                .await
                .map(Reply::Appended),
            ClientFrame::Tag {
                conversation_id,
                add,
                remove,
            } => self
                .service
                .tag(who, conversation_id, add, remove)
                .await
                .map(|r| r.map_or(Reply::Empty {}, Reply::Appended)),
            ClientFrame::SetFields { target, id, fields } => self
                .service
                .set_fields(who, target, id, fields)
                .await
                .map(Reply::Appended),
            ClientFrame::ReadNotifications { ids, up_to } => self
                .service
                .read_notifications(who, ids, up_to)
                .await
                .map(Reply::Read),
            ClientFrame::Note {
                conversation_id,
                client_id,
                body,
                note_type,
                audience,
            } => self
                .service
                .write_note(who, conversation_id, client_id, body, note_type, audience)
                .await
                .map(Reply::Appended),
            ClientFrame::Typing {
                conversation_id,
                audience,
            } => {
                if !self.subscriptions.contains(&conversation_id) {
                    return Err(ServiceError::bad_request(
                        "subscribe to the conversation before sending `typing`",
                    ));
                }
                self.service
                    .typing(who, self.conn, conversation_id, audience)
                    .map(|()| Reply::Empty {})
            }
        }
    }

    fn over_rate(&self) -> Result<(), ServiceError> {
        self.state.rate.check(&self.rate, &self.identity.user_id)
    }

    /// This socket's place in a room: a customer's socket can only ever get a customer
    /// seat, whose outbox takes public frames only.
    fn seat(&self) -> Seat {
        match StaffOutbox::new(self.outbox.clone(), &self.identity) {
            Some(staff) => Seat::Staff(staff),
            None => Seat::Customer(CustomerOutbox::new(self.outbox.clone())),
        }
    }

    /// Queues the one answer a frame gets: `ok` if it had a `ref`, `error` if it failed.
    async fn answer(&self, reference: Option<&Ref>, result: Result<Reply, ServiceError>) {
        let frame = match (&result, reference) {
            (Ok(Reply::Queued), _) => return,
            (Ok(reply), Some(reference)) => ControlFrame::new(&ServerFrame::Ok {
                reference,
                result: reply,
            }),
            (Ok(Reply::Pong {}), None) => ControlFrame::new::<()>(&ServerFrame::Pong),
            (Ok(_), None) => return,
            (Err(error), reference) => {
                let message = error.to_string();
                let missed = match error {
                    ServiceError::Conflict { missed, .. } => Some(missed.as_slice()),
                    _ => None,
                };
                ControlFrame::new::<()>(&ServerFrame::Error {
                    reference,
                    code: error.code(),
                    message: &message,
                    missed,
                })
            }
        };
        self.outbox.control(frame).await;
    }

    fn leave_all(&mut self) {
        for conversation in self.subscriptions.drain() {
            self.service.unsubscribe(self.conn, conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The socket's task lives as long as the socket: it must hold the socket once and
    /// little else (an async fn's copy of its arguments, or a command's state inlined,
    /// each once cost every idle connection hundreds of bytes; docs/benchmarks.md).
    #[test]
    fn an_idle_sockets_task_holds_the_socket_and_little_else() {
        let task = future_size(serve);
        let socket = std::mem::size_of::<Socket>();
        assert!(
            task <= socket + 128,
            "the socket task's future is {task} bytes, the socket {socket}"
        );
    }
}
