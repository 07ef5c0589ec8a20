//! The HTTP/1 server under the stand-in API and the floor-plan page.
//!
//! It runs on its own thread and runtime, so it keeps answering whatever the caller's runtime is
//! doing (a test blocked in a synchronous call, a dev command busy producing).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running server. Dropping it shuts it down.
pub(crate) struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds 127.0.0.1:`port` (0: any free port) and starts answering every request with
    /// `handler`. Fails, naming `name`, when the port cannot be bound.
    pub(crate) fn start<H, F>(name: &str, port: u16, handler: H) -> Result<Self, String>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot bind the {name} to 127.0.0.1:{port}: {e}"))?;
        listener.set_nonblocking(true).expect("cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("listener has no address");
        let (shutdown, stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build a server runtime")
                    // Returning drops the runtime, which closes every open connection.
                    .block_on(serve(listener, handler, stop))
            })
            .expect("cannot spawn a server thread");
        Ok(Self { addr, shutdown, thread: Some(thread) })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops accepting and closes every open connection; later connection attempts are refused.
    /// Idempotent.
    pub(crate) fn shutdown(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve<H, F>(listener: std::net::TcpListener, handler: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::from_std(listener).expect("cannot register the listener");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    // Errors here are clients hanging up: nothing to report.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
