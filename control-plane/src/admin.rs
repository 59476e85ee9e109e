//! The admin HTTP server: `/live`, `/ready` (after the first full load of the mesh) and `/metrics`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, store::MeshStatus};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub status: watch::Receiver<Arc<MeshStatus>>,
}

/// Serves admin requests on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(req.method(), req.uri().path(), &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Answers one admin request.
pub fn respond(method: &Method, path: &str, state: &AdminState) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.status.borrow().loaded => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "the mesh is not loaded yet\n"),
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(prometheus::TEXT_FORMAT));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /live, /ready or /metrics\n"),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Mesh, store};

    #[tokio::test]
    async fn ready_only_after_the_first_load() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (store, reader, publisher) = store::new("cluster.local", store::DEFAULT_PUSH_INTERVAL, metrics.clone());
        let mut rx = reader.status();
        let state = AdminState { metrics, status: rx.clone() };
        assert_eq!(respond(&Method::GET, "/live", &state).status(), StatusCode::OK);
        assert_eq!(respond(&Method::GET, "/ready", &state).status(), StatusCode::SERVICE_UNAVAILABLE);

        let shutdown = CancellationToken::new();
        tokio::spawn(publisher.run(shutdown.clone()));
        store.publish(Mesh::default());
        rx.wait_for(|s| s.loaded).await.unwrap();
        assert_eq!(respond(&Method::GET, "/ready", &state).status(), StatusCode::OK);
        let metrics = respond(&Method::GET, "/metrics", &state);
        assert_eq!(metrics.headers()[header::CONTENT_TYPE], prometheus::TEXT_FORMAT);
        assert_eq!(respond(&Method::GET, "/nope", &state).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/live", &state).status(), StatusCode::METHOD_NOT_ALLOWED);
        shutdown.cancel();
    }
}
