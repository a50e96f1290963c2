//! Sockets and threads: the only place that touches `std::net` (DESIGN §1, §2).
//!
//! Filled in by the transport work; this file pins the interface the event loop uses.

use crate::client::{Reply, Request};
use crate::protocol::message::Envelope;
use crate::protocol::types::ReplicaId;
use crossbeam_channel::Sender;

/// Identifies one client connection inside this process.
pub type ConnId = u64;

/// Everything the transport threads tell the event loop.
#[derive(Debug)]
pub enum Event {
    /// A decoded message from an authenticated peer link. `env.from` equals the
    /// id the link's handshake proved; other messages are dropped by the reader.
    Peer(Envelope),
    /// Our outbound link to this peer completed its handshake.
    LinkUp(ReplicaId),
    /// A link to or from this peer failed or hit EOF (as after kill -9).
    LinkDown(ReplicaId),
    /// A client connected; replies for it go to `reply_tx` as (seq, reply).
    ClientOpen { conn: ConnId, reply_tx: Sender<(u64, Reply)> },
    /// A client command; `seq` numbers the connection's commands from 0.
    Client { conn: ConnId, seq: u64, request: Request },
    /// The client connection is gone; drop its pending replies.
    ClientClosed { conn: ConnId },
}
