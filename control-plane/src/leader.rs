//! Leader election among control-plane pods with a `coordination.k8s.io`
//! `Lease`. Every pod watches the registry and serves the config stream;
//! only the leader writes status and events, so two pods never fight over
//! a resource's status. The holder renews the lease every third of its
//! duration; another pod takes it over once the lease has not changed for
//! a whole duration by its own clock (as client-go's `observedTime` does:
//! the holder's `renewTime` is never compared with this pod's clock, so
//! skewed clocks cannot make a live lease look expired). Updates carry the
//! lease's `resourceVersion`, so of two pods racing for an expired lease
//! the API server lets exactly one win. On shutdown the leader hands the
//! lease back, so the next pod need not wait for it to lapse.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, Resource},
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a pod that does not lead looks at the lease (client-go's
/// retry period).
const FOLLOWER_RETRY: Duration = Duration::from_secs(2);
/// How long handing the lease back may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    /// One lease per installation (the chart names it after the release),
    /// so two releases in one namespace elect their leaders apart.
    pub name: String,
    /// This pod's identity in the lease (its pod name in a cluster).
    pub identity: String,
    pub duration: Duration,
}

/// The lease as this pod last saw it change, by its own clock.
#[derive(Debug)]
struct Observed {
    /// The lease's `resourceVersion`: every renewal changes it.
    version: Option<String>,
    at: Instant,
}

/// The campaign for the lease, to be run until `cancel` (and awaited: on
/// the way out it hands the lease back); the receiver says whether this
/// pod leads.
pub fn campaign(
    client: Client,
    config: LeaseConfig,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, impl Future<Output = ()>) {
    let (leading, rx) = watch::channel(false);
    (rx, run(client, config, leading, cancel))
}

async fn run(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let renew = config.duration / 3;
    let mut observed = None;
    loop {
        // A hung API call must not keep this pod acting as leader past
        // the point another may take the lease.
        let attempt = tokio::time::timeout(renew, try_lead(&api, &config, &mut observed)).await;
        let leads = match attempt.unwrap_or(Ok(false)) {
            Ok(leads) => leads,
            Err(err) => {
                warn!(lease = %config.name, error = %err, "leader election: cannot read or renew the lease");
                // Without a renewal the lease lapses; stop acting as leader
                // before another pod may take over.
                false
            }
        };
        if leading.send_if_modified(|current| std::mem::replace(current, leads) != leads) {
            if leads {
                info!(lease = %config.name, identity = %config.identity, "leading: writing McpServer status");
            } else {
                info!(lease = %config.name, "not leading: another control-plane pod writes status");
            }
        }
        // The leader renews every third of the duration; the others look
        // more often, so a lease handed back is taken within a moment.
        let wait = if leads {
            renew
        } else {
            renew.min(FOLLOWER_RETRY)
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if tokio::time::timeout(RELEASE_TIMEOUT, release(&api, &config))
            .await
            .is_err()
        {
            warn!(lease = %config.name, "could not release the lease in time; it lapses on its own");
        }
    }
}

/// Takes or renews the lease; `Ok(false)` while another pod holds it.
async fn try_lead(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    let version = lease.metadata.resource_version.clone();
    if observed.as_ref().is_none_or(|seen| seen.version != version) {
        *observed = Some(Observed {
            version,
            at: Instant::now(),
        });
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let held_for = Duration::from_secs(
        u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
    );
    let expired = observed
        .as_ref()
        .is_none_or(|seen| seen.at.elapsed() >= held_for);
    if !mine && !expired && spec.holder_identity.is_some() {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(seconds);
    let name = lease.meta().name.clone().unwrap_or_default();
    match api.replace(&name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        // Someone else renewed or took it first.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Hands the lease back so another pod need not wait for it to lapse.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    if let Err(err) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        warn!(error = %err, "could not release the lease; it lapses on its own");
    } else {
        info!(lease = %config.name, "lease released");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "ops".into(),
            name: "switchboard-a".into(),
            identity: "pod-b".into(),
            duration: DURATION,
        }
    }

    /// An API server holding a lease of `pod-a`, whose clock is an hour
    /// behind: its `renewTime` is always an hour old. `version` is the
    /// lease's resourceVersion (pod-a renews by bumping it). Counts the
    /// writes that try to take the lease.
    fn api_server(version: Arc<AtomicU32>, takeovers: Arc<AtomicU32>) -> Client {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                if request.method() == Method::PUT {
                    takeovers.fetch_add(1, Ordering::Relaxed);
                }
                let an_hour_ago =
                    Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {
                        "name": "switchboard-a", "namespace": "ops",
                        "resourceVersion": version.load(Ordering::Relaxed).to_string()
                    },
                    "spec": {
                        "holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                        "renewTime": an_hour_ago.to_string()
                    }
                });
                let body = Body::from(lease.to_string().into_bytes());
                respond.send_response(Response::builder().body(body).expect("response"));
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_taken_after_a_duration_without_change_by_this_pods_clock() {
        let version = Arc::new(AtomicU32::new(1));
        let takeovers = Arc::new(AtomicU32::new(0));
        let api: Api<Lease> =
            Api::namespaced(api_server(version.clone(), takeovers.clone()), "ops");
        let config = config();
        let mut observed = None;
        // pod-a keeps renewing, with a clock an hour slow: never taken.
        for _ in 0..12 {
            let leads = try_lead(&api, &config, &mut observed).await.expect("read");
            assert!(!leads);
            version.fetch_add(1, Ordering::Relaxed);
            tokio::time::advance(DURATION / 3).await;
        }
        assert_eq!(takeovers.load(Ordering::Relaxed), 0);
        // pod-a stops: the lease is taken once it has sat unchanged for a
        // whole duration, and not before.
        let mut tries = 0;
        while !try_lead(&api, &config, &mut observed).await.expect("read") {
            tries += 1;
            tokio::time::advance(DURATION / 3).await;
        }
        assert_eq!(tries, 3, "taken after one duration of silence");
        assert_eq!(takeovers.load(Ordering::Relaxed), 1);
    }
}
