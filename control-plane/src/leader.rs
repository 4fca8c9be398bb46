//! Leader election among control-plane pods with a `coordination.k8s.io`
//! `Lease`. Every pod watches the registry and serves the config stream;
//! only the leader writes status and events, so two pods never fight over
//! a resource's status. The holder renews the lease every third of its
//! duration; another pod takes it over once it has not been renewed for a
//! whole duration. Updates carry the lease's `resourceVersion`, so of two
//! pods racing for an expired lease the API server lets exactly one win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, Resource},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This pod's identity in the lease (its pod name in a cluster).
    pub identity: String,
    pub duration: Duration,
}

/// Campaigns for the lease until `cancel`; the receiver says whether this
/// pod leads. Leadership is given up (the lease released) on shutdown.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let (leading, rx) = watch::channel(false);
    tokio::spawn(campaign(client, config, leading, cancel));
    rx
}

async fn campaign(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let retry = config.duration / 3;
    loop {
        // A hung API call must not keep this pod acting as leader past
        // the point another may take the lease.
        let attempt = tokio::time::timeout(retry, try_lead(&api, &config)).await;
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
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(retry) => {}
        }
    }
    if *leading.borrow() {
        release(&api, &config).await;
    }
}

/// Takes or renews the lease; `Ok(false)` while another pod holds it.
async fn try_lead(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
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
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let held_for =
        SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        renewed
            .0
            .saturating_add(held_for)
            .is_ok_and(|until| until < now)
    });
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
