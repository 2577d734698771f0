//! `bc-relay`: the floor that Backchannel's fan-out is measured against.
//!
//! A minimal tokio-tungstenite server with no authentication and no store: a client
//! joins a room by sending `{"join":"ROOM"}` (answered `{"joined":"ROOM"}`), and every
//! text frame it sends afterwards is relayed, byte for byte, to every other member of
//! the room. It has the same shape as Backchannel's delivery path, so the difference
//! between the two is what Backchannel does on top: the same tokio runtime (one worker
//! per core it may use), the same socket buffer sizes, one task per socket that reads it
//! and drains its bounded queue (feeding everything queued and flushing once), and frames
//! shared by reference count between recipients. The load generator sends it frames
//! shaped like Backchannel's `event` frames, so both move the same bytes.
//!
//! ```text
//! bc-relay --listen 127.0.0.1:0     # prints `listening on http://ADDR`
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The server's allocator (see `backchannel`'s main.rs), so allocation is not a difference.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Frames queued per socket before it is dropped as too slow (as Backchannel's default).
const SEND_QUEUE: usize = 2048;
/// Most frames fed before one flush (as Backchannel).
const MAX_FRAMES_PER_FLUSH: usize = 256;

type Member = (u64, mpsc::Sender<Message>);
type Room = Arc<Mutex<Vec<Member>>>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            _ => {
                eprintln!("usage: bc-relay [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // The server's backlog (`server/src/main.rs`): tokio's default of 128 drops SYNs
        // when thousands connect at once, and each is retried a second later.
        let address = tokio::net::lookup_host(&listen)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        let listener: TcpListener = socket.listen(4096)?;
        println!("listening on http://{}", listener.local_addr()?);
        let rooms = Arc::new(Rooms::default());
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp, rooms.clone()));
        }
    })
}

/// The server's socket buffers (`server/src/ws/mod.rs`): a 512-byte read chunk, writes
/// through at 16 KiB.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

async fn serve(tcp: TcpStream, rooms: Arc<Rooms>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config())).await else {
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Message>(SEND_QUEUE);
    let id = rooms.next_id.fetch_add(1, Ordering::Relaxed);
    let mut room: Option<Room> = None;
    // One task reads the socket and writes its queue, as Backchannel's sockets do.
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            Some(first) = rx.recv() => {
                if write_queued(&mut ws, &mut rx, first).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(Ok(message)) = message else { break };
        let Message::Text(text) = message else {
            if message.is_close() {
                break;
            }
            continue;
        };
        match &room {
            Some(room) => {
                let members = room.lock().unwrap_or_else(|e| e.into_inner());
                for (member, queue) in members.iter() {
                    // Never waits: a full queue drops the frame (Backchannel would close
                    // the socket; the benchmark never lets it fill).
                    if *member != id {
                        let _ = queue.try_send(Message::Text(text.clone()));
                    }
                }
            }
            None => {
                let Ok(join) = serde_json::from_str::<serde_json::Value>(&text) else {
                    break;
                };
                let Some(name) = join["join"].as_str() else {
                    break;
                };
                let joined = rooms
                    .rooms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name.to_owned())
                    .or_default()
                    .clone();
                joined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, tx.clone()));
                let answer = serde_json::json!({ "joined": name }).to_string();
                if tx.send(Message::text(answer)).await.is_err() {
                    break;
                }
                room = Some(joined);
            }
        }
    }
    if let Some(room) = room {
        room.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(member, _)| *member != id);
    }
    let _ = ws.close(None).await;
}

/// Feeds `first` and whatever else is queued (up to 256 frames), then flushes once.
async fn write_queued(
    ws: &mut WebSocketStream<TcpStream>,
    rx: &mut mpsc::Receiver<Message>,
    first: Message,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.feed(first).await?;
    let mut count = 1;
    while count < MAX_FRAMES_PER_FLUSH {
        match rx.try_recv() {
            Ok(message) => {
                ws.feed(message).await?;
                count += 1;
            }
            Err(_) => break,
        }
    }
    ws.flush().await
}
