//! A TCP proxy that injects faults between two components (tests only, loopback only).
//!
//! Put it between a client and a server (`FaultProxy::start(server_addr)`, then point the
//! client at [`FaultProxy::url`]) and change what it does at any time with
//! [`FaultProxy::set`]. Every chunk of every connection, already open or not, follows the
//! current fault, so long-lived HTTP/2 connections are affected at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward everything, each chunk this much later.
    Latency(Duration),
    /// Reset every connection: new ones at once, open ones at their next chunk.
    Refuse,
    /// Accept and hold connections, forwarding nothing either way.
    Blackhole,
    /// Forward requests, but reset the connection when the server's answer arrives, so
    /// the server has done the work and the client never hears of it.
    CutResponses,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end when they see the proxy gone.
        self.fault.send_replace(Fault::Refuse);
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 (an ephemeral port) to `target`, forwarding everything.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, watcher) = watch::channel(Fault::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, target, watcher.clone()));
            }
        });
        Ok(FaultProxy {
            addr,
            fault,
            connections,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://<address>`: in front of a gRPC service (TLS passes through untouched).
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Changes what the proxy does, for new and open connections alike.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn serve(client: TcpStream, target: SocketAddr, fault: watch::Receiver<Fault>) {
    // Closing with a reset (not a FIN), so the peer sees a failed connection at once.
    let _ = client.set_zero_linger();
    let _ = client.set_nodelay(true);
    let current = *fault.borrow();
    match current {
        Fault::Refuse => return,
        Fault::Blackhole => {
            hold(client, fault.clone()).await;
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return; // The client sees the reset: as if the server refused.
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_zero_linger();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either direction ending ends the connection: both halves of both sockets drop.
    tokio::select! {
        () = pump(client_read, server_write, fault.clone(), false) => {}
        () = pump(server_read, client_write, fault, true) => {}
    }
}

/// Holds a connection open, reading and dropping what comes, until the fault changes to
/// something else (then it is reset) or the peer closes.
async fn hold(mut stream: TcpStream, mut fault: watch::Receiver<Fault>) {
    let mut sink = [0_u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { return },
            changed = fault.changed() => if changed.is_err() || *fault.borrow() != Fault::Blackhole { return },
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    fault: watch::Receiver<Fault>,
    to_client: bool,
) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let current = *fault.borrow();
        match current {
            Fault::Pass => {}
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::Refuse => return,
            Fault::Blackhole => continue,
            Fault::CutResponses if to_client => return,
            Fault::CutResponses => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
