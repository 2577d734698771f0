//! One socket's reads and writes, both done by the socket's one task.
//!
//! The task that reads a socket's commands also writes its [`Outbox`]: [`Socket::next`]
//! waits for the next frame while writing what is queued, and [`Socket::drive`] runs a
//! command (or anything else that may wait for room in the outbox) while writing. One
//! task rather than a reader and a writer spares every connection a second task and the
//! lock the two halves of a split socket share (docs/benchmarks.md, memory per idle
//! connection), and a command's `ok` leaves in the same write as the `event` its commit
//! delivered.
//!
//! Writing: what is queued is framed into the socket's [`Wire`] (up to 256 frames or 16
//! KiB) and flushed once, so a burst costs one write. Woken by a burst's first frame, the
//! task yields once first, so that what the same commit readies for this socket joins
//! that write. Once the outbox is closing, writing stops (a socket that stopped reading
//! must not hold its task) and [`Socket::finish`] sends the close frame: after everything
//! still queued if the server is shutting down, at once otherwise.
//!
//! [`Outbox`]: super::outbox::Outbox
//! [`Wire`]: super::wire::Wire

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Sink, SinkExt, Stream};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

use super::outbox::{CloseReason, OutboxReceiver, Outgoing};
use super::WebSocket;

/// Most frames framed before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 256;
/// Most bytes framed before one flush (the frame that crosses it is the last). What is
/// framed is copied into the socket's write buffer, and a socket that stopped reading
/// never empties it: this, not the frame count, bounds that buffer.
const MAX_BYTES_PER_FLUSH: usize = 16 * 1024;
/// How long the close frame may take to leave once the socket is being closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes a closing socket reads and drops from its receive buffer (a kernel's
/// default receive buffer and then some; [`Socket::drop_unread`]).
const MAX_UNREAD_DROPPED: usize = 256 * 1024;

/// What [`Socket::next`] waited for.
pub enum Next {
    /// A frame from the client; `None` once the socket is closed; an error that closes it.
    Frame(Option<Result<Message, Error>>),
    /// The outbox is closing (its reason decides the close code): stop reading.
    Closing,
    /// The node is shutting down: close with 1001 once nothing is in progress.
    Shutdown,
}

/// The socket and the receiving end of its outbox.
pub struct Socket {
    ws: WebSocket,
    queue: OutboxReceiver,
    /// Frames framed since the last flush.
    framed: usize,
    /// A flush has started and not finished.
    flushing: bool,
    /// The queue was found empty: the next frame queued is the first of a burst.
    idle: bool,
    /// A write failed: the connection is gone.
    failed: bool,
}

impl Socket {
    pub fn new(ws: WebSocket, queue: OutboxReceiver) -> Socket {
        Socket {
            ws,
            queue,
            framed: 0,
            flushing: false,
            idle: false,
            failed: false,
        }
    }

    /// The next frame from the client, or word that the socket is closing or the node
    /// shutting down, writing what is queued meanwhile. Cancel-safe: no frame is lost if
    /// this is dropped unfinished. (Closing and shutdown are atomic flags the outbox
    /// wakes this task for: an idle socket's task is woken for every frame it is sent,
    /// and they cost nothing to check each time.)
    pub async fn next(&mut self) -> Next {
        poll_fn(|cx| {
            if self.queue.is_closing() {
                return Poll::Ready(Next::Closing);
            }
            if self.queue.shutdown_requested() {
                return Poll::Ready(Next::Shutdown);
            }
            self.poll_write(cx);
            Pin::new(&mut self.ws).poll_next(cx).map(Next::Frame)
        })
        .await
    }

    /// Runs `work` to completion, writing what is queued meanwhile: anything that may
    /// wait for room in this socket's outbox must run here, or nothing would drain it.
    pub async fn drive<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            self.poll_write(cx);
            Poll::Pending
        })
        .await
    }

    /// Sends the close frame the outbox's close reason calls for, then closes: what is
    /// still queued goes first on a graceful shutdown or a refused `hello`, and is
    /// dropped otherwise.
    pub async fn finish(mut self) {
        let reason = self.queue.reason();
        if !self.failed {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if matches!(
                    reason,
                    CloseReason::GoingAway
                        | CloseReason::Unauthorized
                        | CloseReason::TooManySockets
                ) {
                    // What was acknowledged or delivered before still goes out (nothing
                    // new is queued once the outbox is closing), written as it is framed
                    // so the buffer stays within its bound and the close frame fits
                    // behind it. A refused `hello` has its `error` queued, which says
                    // why (expired, bad signature, ...): the close code alone does not.
                    while let Some(outgoing) = self.queue.pop() {
                        frame_into(&mut self.ws, &outgoing);
                        if self.ws.get_ref().buffered() >= MAX_BYTES_PER_FLUSH
                            && SinkExt::flush(&mut self.ws).await.is_err()
                        {
                            return;
                        }
                    }
                }
                if let Some((code, text)) = reason.code() {
                    let frame = CloseFrame {
                        code: code.into(),
                        reason: text.into(),
                    };
                    let _ = self.ws.send(Message::Close(Some(frame))).await;
                }
                let _ = SinkExt::close(&mut self.ws).await;
            })
            .await;
        }
        // Frames still queued (a slow consumer's) are dropped with the socket.
        self.queue.clear();
        self.drop_unread();
    }

    /// Reads and drops what the client sent that was never read, as far as it has
    /// already arrived. A socket closed with unread bytes in its receive buffer makes the
    /// kernel reset the connection instead of ending it, and the reset can destroy the
    /// close frame before the client reads it: a client that sent commands and read none
    /// of their answers saw "connection reset" rather than 4008. Never waits, and stops
    /// after [`MAX_UNREAD_DROPPED`]: what has not arrived is not waited for.
    fn drop_unread(&mut self) {
        let mut chunk = [0u8; 4096];
        let mut dropped = 0;
        while dropped < MAX_UNREAD_DROPPED {
            match self.ws.get_mut().read(&mut chunk).now_or_never() {
                Some(Ok(read)) if read > 0 => dropped += read,
                _ => break,
            }
        }
    }

    /// Writes what is queued until the queue is empty or the socket cannot take more;
    /// the task is woken when either changes.
    fn poll_write(&mut self, cx: &mut Context<'_>) {
        while !self.failed && !self.queue.is_closing() {
            if self.flushing {
                match Pin::new(&mut self.ws).poll_flush(cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {
                        self.flushing = false;
                        self.queue.flushed(self.framed);
                        self.framed = 0;
                        continue;
                    }
                    Poll::Ready(Err(_)) => return self.fail(),
                }
            }
            if self.framed == 0 {
                // Registered before looking, so a frame queued in between wakes the task.
                self.queue.register(cx.waker());
                if self.queue.is_empty() {
                    self.idle = true;
                    return;
                }
                if std::mem::take(&mut self.idle) {
                    // Woken by the first frame of a burst: let the tasks made ready with
                    // it run first. A commit delivers its events, then answers the
                    // commands; without this, a sender's `event` and `ok` left in two
                    // writes (two syscalls, two TCP segments) instead of one.
                    cx.waker().wake_by_ref();
                    return;
                }
            }
            if self.framed >= MAX_FRAMES_PER_FLUSH
                || self.ws.get_ref().buffered() >= MAX_BYTES_PER_FLUSH
            {
                self.flushing = true;
                continue;
            }
            let Some(outgoing) = self.queue.pop() else {
                self.flushing = true;
                continue;
            };
            frame_into(&mut self.ws, &outgoing);
            self.framed += 1;
        }
    }

    /// The connection is gone: nothing more may be queued for it.
    fn fail(&mut self) {
        self.failed = true;
        self.queue.close(CloseReason::ClientGone);
        self.queue.clear();
    }
}

/// Frames `outgoing` into the socket's write buffer (written at the next flush).
fn frame_into(ws: &mut WebSocket, outgoing: &Outgoing) {
    match outgoing {
        Outgoing::Text(text) => ws.get_mut().push_text(text.as_str()),
        Outgoing::Ping => ws.get_mut().push_ping(),
    }
}
