//! `strait-testsrv grpc`: the `strait.test.echo.Echo` service of `tests/proto/echo.proto`.
//!
//! - `Unary` answers with the request's message and the `:authority` it arrived with. A message
//!   `fail:<code>` (a gRPC status number, e.g. `fail:14`) is answered with that status instead, for
//!   retry tests.
//! - `Bidi` echoes every message as it arrives.
//! - `ServerStream` sends `repeat` replies, reply `i` (from 0) carrying `<message> <i>`; with a
//!   message `fail:<code>`, the replies are followed by that status (in trailers, after a body).
//!
//! Every response carries the `x-served-by: NAME` metadata.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tonic::codegen::Service;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Status, Streaming};

use super::accept_loop;
use crate::echo::echo_server::{Echo, EchoServer};
use crate::echo::{EchoReply, EchoRequest};

/// The `:authority` (else `Host`) a request arrived with, handed from the HTTP layer to the handlers.
#[derive(Debug, Clone)]
struct SeenAuthority(String);

pub struct EchoService {
    served_by: MetadataValue<Ascii>,
    name: String,
}

impl EchoService {
    pub fn new(name: &str) -> EchoService {
        let served_by =
            MetadataValue::try_from(name).unwrap_or(MetadataValue::from_static("invalid-name"));
        EchoService { served_by, name: name.to_owned() }
    }

    fn reply<T>(&self, message: T) -> tonic::Response<T> {
        let mut response = tonic::Response::new(message);
        response
            .metadata_mut()
            .insert("x-served-by", self.served_by.clone());
        response
    }
}

fn seen_authority<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<SeenAuthority>()
        .map(|a| a.0.clone())
        .unwrap_or_default()
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        let seen_authority = seen_authority(&request);
        let mut message = request.into_inner().message;
        // `fail-if:<name>:<code>`: only the server of that name fails (one bad endpoint of several).
        if let Some(rest) = message.strip_prefix("fail-if:") {
            match rest.split_once(':') {
                Some((name, code)) if name == self.name => message = format!("fail:{code}"),
                _ => message = "ok".to_owned(),
            }
        }
        if let Some(code) = message.strip_prefix("fail:") {
            let code = code
                .trim()
                .parse::<i32>()
                .map_err(|_| Status::invalid_argument("bad fail code"))?;
            let mut status = Status::new(Code::from(code), "failing as asked");
            status
                .metadata_mut()
                .insert("x-served-by", self.served_by.clone());
            return Err(status);
        }
        Ok(self.reply(EchoReply {
            message,
            seen_authority,
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: tonic::Request<Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let seen_authority = seen_authority(&request);
        let replies = request.into_inner().map(move |message| {
            message.map(|m| EchoReply {
                message: m.message,
                seen_authority: seen_authority.clone(),
            })
        });
        Ok(self.reply(Box::pin(replies) as ReplyStream))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<ReplyStream>, Status> {
        let seen_authority = seen_authority(&request);
        let EchoRequest { message, repeat } = request.into_inner();
        let end = message
            .strip_prefix("fail:")
            .and_then(|code| code.trim().parse::<i32>().ok())
            .map(|code| Err(Status::new(Code::from(code), "failing after the replies, as asked")));
        let replies = futures_util::stream::iter(0..repeat).map(move |i| {
            Ok(EchoReply {
                message: format!("{message} {i}"),
                seen_authority: seen_authority.clone(),
            })
        });
        let replies = replies.chain(futures_util::stream::iter(end));
        Ok(self.reply(Box::pin(replies) as ReplyStream))
    }
}

/// Serves the gRPC echo service on `listener` (HTTP/2 prior knowledge) until dropped.
pub async fn serve(listener: TcpListener, name: &str) -> io::Result<()> {
    let echo = EchoServer::from_arc(Arc::new(EchoService::new(name)));
    accept_loop(listener, move |stream| {
        let echo = echo.clone();
        async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                let authority = request
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| request.headers().get(http::header::HOST).and_then(host_str))
                    .unwrap_or_default();
                request.extensions_mut().insert(SeenAuthority(authority));
                let mut echo = echo.clone();
                async move { echo.call(request).await }
            });
            auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    })
    .await
}

fn host_str(value: &HeaderValue) -> Option<String> {
    value.to_str().ok().map(str::to_owned)
}
