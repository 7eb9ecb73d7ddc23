//! A TCP proxy for fault injection: put between a handler process and one of its dependencies, it forwards
//! bytes both ways, or refuses every connection (an accepted socket is closed at once, and the connections it
//! was forwarding are cut), until told otherwise. TLS passes through untouched, so the dependency's own
//! certificate is what the handler checks.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards to the upstream.
    Forward,
    /// Closes new connections at once and cuts the open ones: a dependency that is down.
    Refuse,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watching) = watch::channel(Mode::Forward);
        let watching = Arc::new(watching);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let mode = watching.as_ref().clone();
                tokio::spawn(serve(client, upstream_port, mode));
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

/// One client connection, for as long as the mode lets it live.
async fn serve(mut client: TcpStream, upstream_port: u16, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Refuse {
        return; // dropping the socket closes it
    }
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", upstream_port))).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let forward = async {
        tokio::select! {
            _ = tokio::io::copy(&mut client_read, &mut upstream_write) => {}
            _ = tokio::io::copy(&mut upstream_read, &mut client_write) => {}
        }
    };
    let leave_forwarding = async {
        while mode.changed().await.is_ok() {
            if *mode.borrow() != Mode::Forward {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    // Leaving Forward cuts the connection.
    tokio::select! {
        () = forward => {}
        () = leave_forwarding => {}
    }
}
