//! A TCP proxy for fault injection: put between a handler process and one of its dependencies, it forwards
//! bytes both ways, refuses every connection, or stalls, until told otherwise. TLS passes through untouched, so
//! the dependency's own certificate is what the handler checks.
//!
//! - [`Mode::Refuse`]: a dependency that is down. A new connection is closed at once, and the connections the
//!   proxy was forwarding are cut.
//! - [`Mode::Stall`]: a dependency that hangs (a process stopped by the scheduler, a deadlock, a saturated
//!   server). New connections are accepted, as a hung server's kernel accepts them into its backlog, and every
//!   connection, new or already open, is kept open with nothing forwarded either way: no handshake, no answer, no
//!   reset. Only the client's own timeout ends a call. Back in [`Mode::Forward`] the stalled connections
//!   **resume**: what the client sent meanwhile reaches the dependency, and its answers flow back, as when a hung
//!   process wakes up and works through what queued in its sockets. This is the harder case for the client: a
//!   request it gave up on may still take effect late (a Service Bus send stored after its timeout, which the
//!   outbox's at-least-once delivery and `MessageId` absorb). A connection its client closed during the stall is
//!   forwarded what it sent, then closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards to the upstream.
    Forward,
    /// Closes new connections at once and cuts the open ones: a dependency that is down.
    Refuse,
    /// Keeps every connection open and forwards nothing until the mode changes: a dependency that hangs.
    Stall,
}

/// A running proxy on `127.0.0.1:port`, forwarding to `upstream` while in [`Mode::Forward`].
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        Self::start_to(("127.0.0.1".to_owned(), upstream_port)).await
    }

    /// Starts forwarding to `host:port` (a SQL Server that may not be on this machine).
    pub async fn start_to(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watching) = watch::channel(Mode::Forward);
        let watching = Arc::new(watching);
        let upstream = Arc::new(upstream);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let mode = watching.as_ref().clone();
                tokio::spawn(serve(client, upstream.clone(), mode));
            }
        });
        FaultProxy { port, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the proxy stalls; true once it forwards, false once it refuses (or is gone).
async fn unstalled(mode: &mut watch::Receiver<Mode>) -> bool {
    matches!(mode.wait_for(|m| *m != Mode::Stall).await.map(|m| *m), Ok(Mode::Forward))
}

/// One client connection, for as long as the mode lets it live.
async fn serve(mut client: TcpStream, upstream: Arc<(String, u16)>, mut mode: watch::Receiver<Mode>) {
    // Refused: dropping the socket closes it. Stalled: the upstream is not even called until it wakes up.
    if !unstalled(&mut mode).await {
        return;
    }
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((upstream.0.as_str(), upstream.1))).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    // Either direction ending (a close, an error, or Refuse) ends both: dropping the sockets cuts the connection.
    tokio::select! {
        () = pump(&mut client_read, &mut upstream_write, mode.clone()) => {}
        () = pump(&mut upstream_read, &mut client_write, mode) => {}
    }
}

/// Copies `from` to `to` while the proxy forwards; holds still (reading nothing, so the bytes wait in the socket
/// buffers) while it stalls; returns on end of stream, an error, or Refuse.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut mode: watch::Receiver<Mode>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !unstalled(&mut mode).await {
            return;
        }
        // A read is cancel-safe: a mode change while it waits loses no bytes.
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = mode.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
