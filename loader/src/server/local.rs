//! [`LocalServer`]: the daemon on a thread of the calling process.

use std::path::{Path, PathBuf};

use super::config::{ServeConfig, ServeError};
use super::listener::Server;

/// A daemon on a thread of this process: a one-machine trainer (`trainer train --shards`) gets
/// the same rings and protocol as from `loader serve`, without a second process. Stops when
/// dropped.
pub struct LocalServer {
    socket: PathBuf,
    /// The private folder made for the socket when the config named none (removed on drop).
    private: Option<tempfile::TempDir>,
    metrics: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalServer {
    /// Binds `config`'s socket (default: a private path under the temporary directory) and
    /// serves on a background thread.
    pub fn start(mut config: ServeConfig) -> Result<LocalServer, ServeError> {
        let mut private = None;
        if config.socket.is_none() {
            // A random name, made 0700 by us: under a name one could predict, a neighbour
            // could have made the folder first, own it, and swap in a socket of their own.
            let dir = tempfile::Builder::new()
                .prefix("rsb-loader-")
                .tempdir()
                .map_err(|source| ServeError::Start {
                    what: "private socket folder",
                    source,
                })?;
            config.socket = Some(dir.path().join("loader.sock"));
            private = Some(dir);
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServeError::Start {
                            what: "async runtime",
                            source: e,
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Server::bind(config) {
                        Ok(server) => {
                            let _ = ready_tx
                                .send(Ok((server.socket().to_path_buf(), server.metrics_addr())));
                            server
                                .run(async {
                                    let _ = stopped.await;
                                })
                                .await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|source| ServeError::Start {
                what: "thread",
                source,
            })?;
        let (socket, metrics) = ready_rx.recv().map_err(|_| ServeError::Stopped)??;
        Ok(LocalServer {
            socket,
            private,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where its Prometheus endpoint listens, with `metrics_listen`.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The private folder made in `start`, if any; a folder the config named stays.
        drop(self.private.take());
    }
}
