//! An axum server on a thread of its own with a tokio runtime (as the DNS thread): serve's API
//! and the metrics listener of `send` and `bench`.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

/// A server, running.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    /// Binds `listen` (an error here is the caller's to report) and serves `router` on a thread
    /// named `name`; handlers see the peer's address (`ConnectInfo<SocketAddr>`).
    pub fn start(listen: SocketAddr, router: Router, name: &str) -> std::io::Result<HttpServer> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| std::io::Error::new(e.kind(), format!("listen on {listen}: {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
            })
        })?;
        Ok(HttpServer { addr, shutdown: Some(shutdown), thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, lets requests under way finish, and ends the thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.finish()
    }

    /// Stops taking connections and requests; those under way go on until
    /// [`HttpServer::stop`] waits for them.
    pub fn request_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.request_stop();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| std::io::Error::other("the HTTP thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
