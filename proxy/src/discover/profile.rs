//! What an authority resolves to, parsed once when discovery delivers it so the data path never
//! parses addresses or policy per request.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use strait_proto::discovery::v1 as pb;

#[derive(Debug)]
pub struct ServiceProfile {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// The authority used as a metric label: `name.namespace:port`.
    pub authority: Arc<str>,
    pub port: u16,
    pub protocol: pb::Protocol,
    pub endpoints: Arc<[Endpoint]>,
    pub policy: pb::Policy,
    /// In the controller's order: the first that matches names the request's route.
    pub routes: Arc<[Route]>,
    /// Round-robin cursor until the balancer stage replaces it.
    next: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The application's own listener.
    pub addr: SocketAddr,
    /// The endpoint's sidecar inbound listener, when meshed.
    pub proxy: Option<SocketAddr>,
    /// The identity its sidecar must present.
    pub identity: Option<Arc<str>>,
    /// The workload behind it, when discovery names one (the `dst_workload` label).
    pub workload: Option<Arc<str>>,
    pub weight: u32,
}

/// A route of the service: requests it matches are counted under its name (the `route` label),
/// a value discovery chose, whatever path or headers a client sends.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub name: Arc<str>,
    /// Any one matches; none at all matches every request (as a Gateway API rule without matches).
    matches: Vec<RouteMatch>,
}

#[derive(Debug, PartialEq, Eq)]
struct RouteMatch {
    path_prefix: String,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, String)>,
}

impl RouteMatch {
    fn matches<B>(&self, req: &http::Request<B>) -> bool {
        req.uri().path().starts_with(&self.path_prefix)
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(n, v)| req.headers().get_all(n).iter().any(|h| h.as_bytes() == v.as_bytes()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("endpoint address {0:?} is not ip:port")]
    Address(String),
    #[error("endpoint proxy address {0:?} is not ip:port")]
    ProxyAddress(String),
    #[error("route {0:?}: a route needs a name, a valid method and valid header names")]
    Route(String),
}

impl ServiceProfile {
    pub fn from_proto(svc: &pb::Service) -> Result<Self, ProfileError> {
        let mut endpoints = Vec::with_capacity(svc.endpoints.len());
        for e in &svc.endpoints {
            let addr = e.address.parse().map_err(|_| ProfileError::Address(e.address.clone()))?;
            let proxy = if e.proxy_address.is_empty() {
                None
            } else {
                Some(e.proxy_address.parse().map_err(|_| ProfileError::ProxyAddress(e.proxy_address.clone()))?)
            };
            endpoints.push(Endpoint {
                addr,
                proxy,
                identity: (!e.identity.is_empty()).then(|| Arc::from(e.identity.as_str())),
                workload: (!e.workload.is_empty()).then(|| Arc::from(e.workload.as_str())),
                weight: e.weight.max(1),
            });
        }
        let routes = svc.routes.iter().map(route).collect::<Result<Vec<_>, _>>()?;
        Ok(ServiceProfile {
            name: Arc::from(svc.name.as_str()),
            namespace: Arc::from(svc.namespace.as_str()),
            authority: Arc::from(format!("{}.{}:{}", svc.name, svc.namespace, svc.port)),
            port: svc.port as u16,
            protocol: svc.protocol(),
            endpoints: endpoints.into(),
            policy: svc.policy.clone().unwrap_or_default(),
            routes: routes.into(),
            next: AtomicUsize::new(0),
        })
    }

    /// Whether `other` says the same (a controller sending an authority again after a reconnection).
    pub fn same_as(&self, other: &ServiceProfile) -> bool {
        self.name == other.name
            && self.namespace == other.namespace
            && self.port == other.port
            && self.protocol == other.protocol
            && self.endpoints == other.endpoints
            && self.policy == other.policy
            && self.routes == other.routes
    }

    /// The name of the first route that matches `req`, if any.
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&Arc<str>> {
        self.routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(req))).map(|r| &r.name)
    }

    pub fn is_opaque(&self) -> bool {
        self.protocol == pb::Protocol::Opaque
    }

    /// Picks the next endpoint, round robin.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

/// Parses a route once, when discovery delivers it, so matching compares ready values.
fn route(r: &pb::Route) -> Result<Route, ProfileError> {
    let bad = || ProfileError::Route(r.name.clone());
    if r.name.is_empty() {
        return Err(bad());
    }
    let matches = r
        .matches
        .iter()
        .map(|m| {
            let method = if m.method.is_empty() {
                None
            } else {
                Some(http::Method::from_bytes(m.method.to_ascii_uppercase().as_bytes()).map_err(|_| bad())?)
            };
            let headers = m
                .headers
                .iter()
                .map(|h| Ok((http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?, h.value.clone())))
                .collect::<Result<_, ProfileError>>()?;
            Ok(RouteMatch { path_prefix: m.path_prefix.clone(), method, headers })
        })
        .collect::<Result<_, ProfileError>>()?;
    Ok(Route { name: Arc::from(r.name.as_str()), matches })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_route_names_the_request() {
        let m = |path: &str, method: &str, headers: &[(&str, &str)]| pb::RouteMatch {
            path_prefix: path.into(),
            method: method.into(),
            headers: headers.iter().map(|(n, v)| pb::HeaderMatch { name: (*n).into(), value: (*v).into() }).collect(),
        };
        let svc = pb::Service {
            name: "orders".into(),
            namespace: "demo".into(),
            port: 8080,
            routes: vec![
                pb::Route { name: "create".into(), matches: vec![m("/orders", "post", &[])], policy: None },
                pb::Route { name: "beta".into(), matches: vec![m("/", "", &[("x-beta", "1")])], policy: None },
                pb::Route { name: "read".into(), matches: vec![m("/orders", "", &[])], policy: None },
            ],
            ..Default::default()
        };
        let p = ServiceProfile::from_proto(&svc).unwrap();
        let name = |method: &str, path: &str, beta: bool| {
            let mut b = http::Request::builder().method(method).uri(path);
            if beta {
                b = b.header("x-beta", "1");
            }
            p.route(&b.body(()).unwrap()).map(|n| n.to_string())
        };
        assert_eq!(name("POST", "/orders/1", false).as_deref(), Some("create"));
        assert_eq!(name("GET", "/orders/1", false).as_deref(), Some("read"));
        assert_eq!(name("GET", "/orders/1", true).as_deref(), Some("beta"));
        assert_eq!(name("GET", "/other", false), None);

        let mut bad = svc.clone();
        bad.routes[0].matches[0].method = "NOT A METHOD".into();
        assert!(matches!(ServiceProfile::from_proto(&bad), Err(ProfileError::Route(n)) if n == "create"));
    }
}
