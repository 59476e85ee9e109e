//! HTTP/1 upgrades (WebSocket and friends): once the server answers 101, the client's connection
//! and the server's become one byte stream, copied both ways. The stream is registered with the
//! drain (handed over in the request's extensions by [`super::server`]), so shutdown waits for it
//! until the grace period ends.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    ProxyError, Request,
    client::{self, Upstream},
};
use crate::{
    drain::{Drain, Watch},
    transport::tcp,
};

/// Joins the two upgraded connections once both sides have switched protocols; `watch` keeps the
/// drain waiting for the stream.
pub fn splice(client: OnUpgrade, rsp: &mut Upstream, watch: Option<Watch>) {
    let server = hyper::upgrade::on(rsp);
    tokio::spawn(async move {
        let _watch = watch;
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut c, mut s) = (TokioIo::new(client), TokioIo::new(server));
        if let Err(e) = tcp::forward(&mut c, &mut s).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}

/// Sends an upgrade request on its own HTTP/1 connection and, on 101, joins the two sides.
pub async fn send<T>(io: T, mut req: Request) -> Result<Upstream, ProxyError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let on_client = hyper::upgrade::on(&mut req);
    let drain = req.extensions_mut().remove::<Drain>();
    let mut rsp = client::send_h1_upgrade(io, req).await?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        splice(on_client, &mut rsp, drain.map(|d| d.watch()));
    }
    Ok(rsp)
}
