//! Trace context in gRPC metadata (unary calls): the client puts the
//! current context in the `traceparent`/`tracestate` metadata of the request
//! (see `starling_proto`'s interceptor), and [`RemoteParentLayer`], a tower
//! layer on the gRPC server, makes it the parent of whatever spans the
//! handler creates. No extra span is made for the transport, so a trace has
//! the same spans whether the services call each other in one process or
//! over gRPC.

use std::task::{Context as TaskContext, Poll};

use crate::{with_remote_parent, TraceContext, WithRemoteParent};

/// Tower layer for the gRPC server: each request's handler runs under the
/// trace context found in its metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteParentLayer;

impl<S> tower_layer::Layer<S> for RemoteParentLayer {
    type Service = RemoteParentService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RemoteParentService { inner }
    }
}

/// The service of [`RemoteParentLayer`].
#[derive(Debug, Clone)]
pub struct RemoteParentService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for RemoteParentService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = WithRemoteParent<S::Future>;

    fn poll_ready(&mut self, task: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(task)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let parent = TraceContext::from_headers(request.headers());
        with_remote_parent(&parent, || self.inner.call(request))
    }
}
