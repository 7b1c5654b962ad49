//! Replica discovery by watching `discovery.k8s.io/v1` EndpointSlices: the
//! endpoint `k8s:///SERVICE.NAMESPACE:PORT` stands for every ready endpoint
//! of the Service, as the EndpointSlice controller lists them (the slices
//! labelled `kubernetes.io/service-name=SERVICE`).
//!
//! A list, then a watch from the list's resourceVersion; when the watch ends
//! (the server's timeout, a `410 Gone` for a version too old) it lists again,
//! so no deletion is missed. An API error keeps the last answer and retries
//! with a backoff: an API server that is away does not empty the set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use tokio::sync::watch;

use crate::shared_client;

/// The label the EndpointSlice controller puts on the slices of a Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The server ends a watch after this long; it is listed again then.
const WATCH_TIMEOUT_SECS: u32 = 290;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The port of the replicas behind a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// The pods' port number (the Service's `targetPort`, as with `dns:///`).
    Number(u16),
    /// The name of the port in the slices (the Service port's name).
    Name(String),
}

/// A parsed `k8s:///SERVICE[.NAMESPACE]:PORT` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceTarget {
    pub service: String,
    /// `None`: the client's namespace (the pod's own).
    pub namespace: Option<String>,
    pub port: PortRef,
}

/// An RFC 1123 DNS label (Kubernetes names of Services and namespaces).
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Parse `k8s:///SERVICE:PORT` or `k8s:///SERVICE.NAMESPACE:PORT` (also
/// `kubernetes:///...`); PORT is a number or the name of the Service's port.
/// `None` when `endpoint` has another scheme; the reason when it is invalid.
pub fn parse_endpoint_slice_target(endpoint: &str) -> Option<Result<EndpointSliceTarget, String>> {
    let endpoint = endpoint.trim();
    let rest = endpoint
        .strip_prefix("k8s:")
        .or_else(|| endpoint.strip_prefix("kubernetes:"))?;
    let target = rest.strip_prefix("///").unwrap_or(rest);
    Some(parse_target(target))
}

fn parse_target(target: &str) -> Result<EndpointSliceTarget, String> {
    const EXPECTED: &str = "expected k8s:///SERVICE.NAMESPACE:PORT";
    let (name, port) = target
        .rsplit_once(':')
        .ok_or_else(|| EXPECTED.to_string())?;
    let (service, namespace) = match name.split_once('.') {
        Some((service, namespace)) => (service, Some(namespace)),
        None => (name, None),
    };
    if !is_dns_label(service) {
        return Err(format!(
            "{EXPECTED}: {service:?} is not a Service name (a lowercase DNS label)"
        ));
    }
    if let Some(namespace) = namespace {
        if !is_dns_label(namespace) {
            return Err(format!(
                "{EXPECTED}: {namespace:?} is not a namespace (a lowercase DNS label)"
            ));
        }
    }
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("the port is not a number from 1 to 65535".into()),
        Ok(number) => PortRef::Number(number),
        Err(_) if port.len() <= 15 && is_dns_label(port) => PortRef::Name(port.to_string()),
        Err(_) => {
            return Err(format!(
                "{EXPECTED}: the port {port:?} is neither a number nor a port name"
            ))
        }
    };
    Ok(EndpointSliceTarget {
        service: service.to_string(),
        namespace: namespace.map(str::to_string),
        port,
    })
}

/// Watch the EndpointSlices of `target` and publish the addresses of its
/// ready endpoints (sorted, distinct) on `answer_tx`, until every receiver
/// is gone. The value stays `None` until the first list answered.
pub async fn watch_endpoint_slices(
    target: EndpointSliceTarget,
    answer_tx: watch::Sender<Option<Vec<SocketAddr>>>,
) {
    tokio::select! {
        _ = watch_loop(&target, &answer_tx) => {}
        _ = answer_tx.closed() => {}
    }
}

async fn watch_loop(
    target: &EndpointSliceTarget,
    answer_tx: &watch::Sender<Option<Vec<SocketAddr>>>,
) {
    let selector = format!("{SERVICE_NAME_LABEL}={}", target.service);
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = match shared_client().await {
            Ok(client) => {
                let api: Api<EndpointSlice> = match &target.namespace {
                    Some(namespace) => Api::namespaced(client, namespace),
                    None => Api::default_namespaced(client),
                };
                list_then_watch(&api, target, &selector, answer_tx)
                    .await
                    .map_err(|error| error.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(error) => {
                tracing::warn!(service = %target.service, %error, "endpointslice watch failed, keeping the last answer");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One list and the watch that follows it; Ok when the watch ended in a way
/// that only needs a new list.
async fn list_then_watch(
    api: &Api<EndpointSlice>,
    target: &EndpointSliceTarget,
    selector: &str,
    answer_tx: &watch::Sender<Option<Vec<SocketAddr>>>,
) -> Result<(), kube::Error> {
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let mut slices = BTreeMap::new();
    for slice in list.items {
        remember(&mut slices, target, slice);
    }
    publish(answer_tx, target, &slices);
    let version = list.metadata.resource_version.unwrap_or_default();
    let params = WatchParams::default()
        .labels(selector)
        .timeout(WATCH_TIMEOUT_SECS);
    let events = api.watch(&params, &version).await?;
    futures::pin_mut!(events);
    while let Some(event) = events.try_next().await? {
        match event {
            WatchEvent::Added(slice) | WatchEvent::Modified(slice) => {
                remember(&mut slices, target, slice);
            }
            WatchEvent::Deleted(slice) => {
                slices.remove(&slice.metadata.name.unwrap_or_default());
            }
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(error) if error.code == 410 => return Ok(()),
            WatchEvent::Error(error) => return Err(kube::Error::Api(error)),
        }
        publish(answer_tx, target, &slices);
    }
    Ok(())
}

/// Keep `slice` when it belongs to the Service (the selector says so on a
/// real API server; checked again here for servers that ignore selectors on
/// watches), forget it when it no longer does.
fn remember(
    slices: &mut BTreeMap<String, EndpointSlice>,
    target: &EndpointSliceTarget,
    slice: EndpointSlice,
) {
    let name = slice.metadata.name.clone().unwrap_or_default();
    let belongs = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
        .is_some_and(|service| *service == target.service);
    if belongs {
        slices.insert(name, slice);
    } else {
        slices.remove(&name);
    }
}

fn publish(
    answer_tx: &watch::Sender<Option<Vec<SocketAddr>>>,
    target: &EndpointSliceTarget,
    slices: &BTreeMap<String, EndpointSlice>,
) {
    let addresses = ready_addresses(target, slices.values());
    answer_tx.send_if_modified(|answer| {
        if answer.as_ref() == Some(&addresses) {
            return false;
        }
        *answer = Some(addresses);
        true
    });
}

/// Every address of a ready endpoint with the target's port. An endpoint
/// whose `ready` condition is absent counts as ready (the API's definition);
/// FQDN slices and slices without the named port are skipped.
fn ready_addresses<'a>(
    target: &EndpointSliceTarget,
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let port = match &target.port {
            PortRef::Number(number) => Some(*number),
            PortRef::Name(name) => slice
                .ports
                .iter()
                .flatten()
                .find(|port| port.name.as_deref() == Some(name.as_str()))
                .and_then(|port| port.port)
                .and_then(|port| u16::try_from(port).ok()),
        };
        let Some(port) = port else { continue };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|conditions| conditions.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            addresses.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|address| address.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn endpoints_name_a_service_a_namespace_and_a_port() {
        let parsed = parse_endpoint_slice_target("k8s:///starling-router.chat:7000")
            .unwrap()
            .unwrap();
        assert_eq!(
            parsed,
            EndpointSliceTarget {
                service: "starling-router".into(),
                namespace: Some("chat".into()),
                port: PortRef::Number(7000),
            }
        );
        let parsed = parse_endpoint_slice_target("kubernetes:///router:grpc")
            .unwrap()
            .unwrap();
        assert_eq!(parsed.namespace, None);
        assert_eq!(parsed.port, PortRef::Name("grpc".into()));
        assert!(parse_endpoint_slice_target("dns:///router:7000").is_none());
        for bad in [
            "k8s:///router",
            "k8s:///Router:7000",
            "k8s:///router.ns.svc:7000",
            "k8s:///router:0",
            "k8s:///:7000",
            "k8s:///router:not_a_port",
        ] {
            assert!(
                parse_endpoint_slice_target(bad).unwrap().is_err(),
                "{bad} accepted"
            );
        }
    }

    fn slice(name: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            endpoints: endpoints
                .iter()
                .map(|(address, ready)| Endpoint {
                    addresses: vec![address.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("grpc".into()),
                port: Some(7100),
                ..EndpointPort::default()
            }]),
        }
    }

    #[test]
    fn ready_endpoints_of_every_slice_are_replicas() {
        let slices = [
            slice("a", &[("10.0.0.2", Some(true)), ("10.0.0.3", Some(false))]),
            slice("b", &[("10.0.0.1", None), ("10.0.0.2", Some(true))]),
        ];
        let by_number = EndpointSliceTarget {
            service: "router".into(),
            namespace: None,
            port: PortRef::Number(7000),
        };
        assert_eq!(
            ready_addresses(&by_number, slices.iter()),
            [
                "10.0.0.1:7000".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:7000".parse().unwrap()
            ]
        );
        let by_name = EndpointSliceTarget {
            port: PortRef::Name("grpc".into()),
            ..by_number.clone()
        };
        assert_eq!(
            ready_addresses(&by_name, slices.iter()),
            [
                "10.0.0.1:7100".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:7100".parse().unwrap()
            ]
        );
        let missing_port = EndpointSliceTarget {
            port: PortRef::Name("http".into()),
            ..by_number
        };
        assert!(ready_addresses(&missing_port, slices.iter()).is_empty());
    }
}
