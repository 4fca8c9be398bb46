//! Leader election among control-plane pods: one pod of an installation
//! writes status, the Lease passes on when it dies or stops, and each
//! installation in a namespace has a Lease of its own.

use std::time::{Duration, Instant};

use e2e::{EVENTUALLY, Switchboard, eventually, scripted_replica::RefusingReplica};
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn one_control_plane_pod_leads_and_another_takes_over() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let args = |identity: &str| pod_args(&api, &["--identity", identity, "--lease-duration", "2s"]);
    let first_args = args("pod-a");
    let first: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut sb = Switchboard::start_with(&[], &first, &[]).await;
    wait_for_leader(&api, DEFAULT_LEASE, "pod-a", EVENTUALLY).await;
    // A second pod serves config too, but does not lead.
    let mut second = Switchboard::unstarted();
    second.control_args = args("pod-b");
    second.start_control_plane().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let holder = api.objects("leases")[0]["spec"]["holderIdentity"].clone();
    assert_eq!(holder, "pod-a", "a live leader keeps the lease");

    // The leader crashes: pod-b takes the lease and writes status.
    sb.control.as_mut().expect("pod-a").kill_hard().await;
    wait_for_leader(&api, DEFAULT_LEASE, "pod-b", EVENTUALLY).await;
    let demo = demo_resource("demo", &format!("lease-{}", std::process::id()));
    apply(&api, home.path(), "demo.yaml", &demo)
        .await
        .expect("kubectl apply");
    eventually("status from the new leader", EVENTUALLY, || async {
        let object = get_mcp(&api, home.path(), "demo").await?;
        (condition(&object, "Accepted")["status"] == "True")
            .then_some(())
            .ok_or(object.to_string())
    })
    .await;
    let transitions = api.objects("leases")[0]["spec"]["leaseTransitions"].clone();
    assert_eq!(transitions, 1, "one takeover");
}

/// The leader stops (SIGTERM, as in a rolling update): it clears the
/// Lease's holder on the way out, so the other pod takes over long before
/// the Lease could lapse. Before, the Lease was left to expire: with a
/// 60-second Lease, a minute without status writes.
#[tokio::test]
async fn a_stopping_leader_hands_the_lease_over() {
    const LEASE_DURATION: Duration = Duration::from_secs(60);
    let api = KubeApiServer::start().await;
    let mut first = start_pod(&api, &["--identity", "pod-a", "--lease-duration", "60s"]).await;
    wait_for_leader(&api, DEFAULT_LEASE, "pod-a", EVENTUALLY).await;
    let _second = start_pod(&api, &["--identity", "pod-b", "--lease-duration", "60s"]).await;
    // pod-b has seen pod-a's Lease: it renews, and pod-b does not take it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(holder(&api, DEFAULT_LEASE), "pod-a");

    let status = first
        .control
        .as_mut()
        .expect("pod-a")
        .terminate()
        .await
        .expect("pod-a stops");
    let stopped = Instant::now();
    assert!(status.success(), "{status:?}");
    let released = api
        .history("leases")
        .into_iter()
        .any(|(kind, lease)| kind == "MODIFIED" && lease["spec"]["holderIdentity"].is_null());
    assert!(
        released,
        "pod-a cleared the holder: {:#?}",
        api.history("leases")
    );

    // Well inside the Lease's duration: only the release explains it.
    wait_for_leader(&api, DEFAULT_LEASE, "pod-b", LEASE_DURATION / 2).await;
    eprintln!("pod-b leads {:?} after pod-a stopped", stopped.elapsed());
    let lease = api
        .objects("leases")
        .into_iter()
        .find(|l| l["metadata"]["name"] == DEFAULT_LEASE)
        .expect("the Lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
}

/// Two installations in one namespace (`--lease-name`, which the chart
/// sets to the release's name): each elects its own leader, and neither
/// takes the other's Lease. Before, both campaigned for one Lease, so one
/// installation had no leader and wrote no status.
#[tokio::test]
async fn two_installations_in_one_namespace_elect_their_own_leaders() {
    let api = KubeApiServer::start().await;
    let pod = |release: &'static str, identity: &'static str| {
        let api = &api;
        async move {
            let args = [
                "--lease-name",
                release,
                "--identity",
                identity,
                "--lease-duration",
                "3s",
            ];
            start_pod(api, &args).await
        }
    };
    let _pods = [
        pod("team-a", "team-a-1").await,
        pod("team-a", "team-a-2").await,
        pod("team-b", "team-b-1").await,
        pod("team-b", "team-b-2").await,
    ];
    let holders = || (holder(&api, "team-a"), holder(&api, "team-b"));
    let elected = eventually("a leader per installation", EVENTUALLY, || async {
        let (a, b) = holders();
        let a_ok = a.as_str().is_some_and(|h| h.starts_with("team-a-"));
        let b_ok = b.as_str().is_some_and(|h| h.starts_with("team-b-"));
        (a_ok && b_ok).then(&holders).ok_or(format!("{a} {b}"))
    })
    .await;
    // Over a few renewals, nobody takes anybody's Lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(holders(), elected);
    let leases: Vec<Value> = api.objects("leases");
    let names: Vec<&str> = leases
        .iter()
        .filter_map(|l| l["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["team-a", "team-b"], "no Lease by the default name");
    for lease in &leases {
        assert_eq!(lease["spec"]["leaseTransitions"], 0, "{lease}");
    }
}

/// A control-plane pod with one gateway replica connected to it.
async fn pod_with_replica(api: &KubeApiServer, identity: &str, replica: &str) -> Switchboard {
    let mut pod = start_pod(api, &["--identity", identity, "--lease-duration", "2s"]).await;
    pod.gateway = Some(pod.spawn_replica(pod.gateway_addr, replica));
    pod
}

/// Waits until the `demo` resource's status counts `want` replicas, all
/// updated and ready.
async fn wait_for_replica_counts(api: &KubeApiServer, home: &Path, want: u64) -> Value {
    eventually(
        &format!("status of {want} replicas"),
        EVENTUALLY,
        || async {
            let object = get_mcp(api, home, "demo").await?;
            let status = &object["status"];
            let counts = [
                &status["replicas"],
                &status["updatedReplicas"],
                &status["readyReplicas"],
            ];
            let ready = condition(&object, "Ready");
            let all = counts.iter().all(|c| c.as_u64() == Some(want));
            (all && ready["status"] == "True"
                && ready["message"] == format!("ready on {want} of {want} replicas"))
            .then_some(object.clone())
            .ok_or(object.to_string())
        },
    )
    .await
}

#[tokio::test]
async fn status_counts_every_replica_whichever_control_plane_pod_it_reached() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let mut a = pod_with_replica(&api, "pod-a", "gw-a").await;
    wait_for_leader(&api, DEFAULT_LEASE, "pod-a", EVENTUALLY).await;
    let b = pod_with_replica(&api, "pod-b", "gw-b").await;
    let demo = demo_resource("demo", &format!("ha-{}", std::process::id()));
    apply(&api, home.path(), "demo.yaml", &demo)
        .await
        .expect("kubectl apply");

    tracing::info!("the leader, pod-a, counts gw-b too, which only pod-b hears from");
    let object = wait_for_replica_counts(&api, home.path(), 2).await;
    assert_eq!(condition(&object, "Accepted")["status"], "True", "{object}");
    assert_eq!(object["status"]["replicaSummary"], "2/2", "{object}");
    assert!(object["status"]["tools"].as_u64() > Some(0), "{object}");
    for pod in [&a, &b] {
        let status = pod.control_status().await;
        for replica in ["gw-a", "gw-b"] {
            assert_eq!(status["replicas"][replica]["connected"], true, "{status}");
        }
    }

    tracing::info!("pod-a stops: pod-b leads and counts what is left");
    let stopped = a.control.as_mut().expect("pod-a").terminate().await;
    assert!(stopped.expect("pod-a stops").success());
    wait_for_leader(&api, DEFAULT_LEASE, "pod-b", EVENTUALLY).await;
    let reports: Vec<String> = api
        .objects("configmaps")
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str().map(str::to_owned))
        .filter(|n| n.contains("-replicas-"))
        .collect();
    assert_eq!(
        reports,
        [format!("{DEFAULT_LEASE}-replicas-pod-b")],
        "pod-a removed its report"
    );
    let object = wait_for_replica_counts(&api, home.path(), 1).await;
    assert_eq!(object["status"]["replicaSummary"], "1/1", "{object}");
    let status = b.control_status().await;
    assert_eq!(status["replicas"]["gw-a"], Value::Null, "{status}");
}

/// Every field of the `demo` resource's status that replicas decide, with
/// its two conditions as `[status, reason, message]`.
async fn replica_status(api: &KubeApiServer, home: &Path) -> Result<Value, String> {
    let object = get_mcp(api, home, "demo").await?;
    let status = &object["status"];
    let brief = |kind: &str| {
        let c = condition(&object, kind);
        json!([c["status"], c["reason"], c["message"]])
    };
    let mut fields = json!({ "Accepted": brief("Accepted"), "Ready": brief("Ready") });
    for field in [
        "observedGeneration",
        "prefix",
        "transport",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "replicaSummary",
        "tools",
        "breaker",
    ] {
        fields[field] = status[field].clone();
    }
    fields["protocolVersion"] = json!(
        status["protocolVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    Ok(fields)
}

/// Waits until the status is `want`, field for field.
async fn expect_status(api: &KubeApiServer, home: &Path, step: &str, want: Value) {
    eventually(step, EVENTUALLY, || async {
        let got = replica_status(api, home).await?;
        (got == want)
            .then_some(())
            .ok_or(format!("got {got:#}\nwant {want:#}"))
    })
    .await;
}

/// Gateways split over two control-plane pods, one of them refusing the
/// resource: the leader reports the refusal it only hears of through the
/// other pod, and after each step (leader failover, the refusing replica
/// leaving, a gateway joining the new leader) every field is right.
#[tokio::test]
async fn a_refusal_heard_by_the_other_pod_reaches_status_through_failover() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let mut a = pod_with_replica(&api, "pod-a", "gw-a").await;
    wait_for_leader(&api, DEFAULT_LEASE, "pod-a", EVENTUALLY).await;
    let mut b = start_pod(&api, &["--identity", "pod-b", "--lease-duration", "2s"]).await;
    let refusal = "unknown field `naming` (gateway 0.0.1)";
    let older = RefusingReplica::connect(b.grpc, "gw-old", refusal).await;
    let demo = demo_resource("demo", &format!("split-{}", std::process::id()));
    apply(&api, home.path(), "demo.yaml", &demo)
        .await
        .expect("kubectl apply");

    let rejected = json!(["False", "Rejected", format!("replica gw-old: {refusal}")]);
    expect_status(
        &api,
        home.path(),
        "the leader, pod-a, reports gw-old's refusal, heard by pod-b",
        json!({
            "Accepted": rejected,
            "Ready": ["True", "Ready", "ready on 1 of 2 replicas"],
            "observedGeneration": 1, "prefix": "demo", "transport": "stdio",
            "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "replicaSummary": "1/2",
            "tools": 12, "breaker": "closed", "protocolVersion": true,
        }),
    )
    .await;

    tracing::info!("pod-a stops: pod-b leads, with only gw-old connected");
    let stopped = a.control.as_mut().expect("pod-a").terminate().await;
    assert!(stopped.expect("pod-a stops").success());
    wait_for_leader(&api, DEFAULT_LEASE, "pod-b", EVENTUALLY).await;
    expect_status(
        &api,
        home.path(),
        "pod-b reports gw-old alone",
        json!({
            "Accepted": rejected,
            "Ready": ["Unknown", "Pending", "no replica has reported on it yet"],
            "observedGeneration": 1, "prefix": "demo", "transport": "stdio",
            "replicas": 1, "updatedReplicas": 0, "readyReplicas": 0, "replicaSummary": "0/1",
            "tools": null, "breaker": null, "protocolVersion": false,
        }),
    )
    .await;

    tracing::info!("gw-old leaves: accepted again, and no replica");
    drop(older);
    expect_status(
        &api,
        home.path(),
        "no replica connected",
        json!({
            "Accepted": ["True", "Valid", "the spec is valid"],
            "Ready": ["False", "NoReplicas", "no gateway replica is connected"],
            "observedGeneration": 1, "prefix": "demo", "transport": "stdio",
            "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0, "replicaSummary": "0/0",
            "tools": null, "breaker": null, "protocolVersion": false,
        }),
    )
    .await;

    tracing::info!("a gateway joins pod-b, the leader now");
    b.gateway = Some(b.spawn_replica(b.gateway_addr, "gw-b"));
    expect_status(
        &api,
        home.path(),
        "gw-b serves it",
        json!({
            "Accepted": ["True", "Valid", "the spec is valid"],
            "Ready": ["True", "Ready", "ready on 1 of 1 replicas"],
            "observedGeneration": 1, "prefix": "demo", "transport": "stdio",
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "replicaSummary": "1/1",
            "tools": 12, "breaker": "closed", "protocolVersion": true,
        }),
    )
    .await;
}
