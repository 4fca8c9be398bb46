//! The CRD in the helm chart is generated from the Rust types; this fails
//! when the two drift (`UPDATE_CRD=1 cargo test --workspace --test crd`
//! rewrites the chart's copy). Every McpServer the repository ships
//! (templates, the example registry) validates.

const CHART_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../charts/switchboard/crds/mcpservers.switchboard.dev.yaml"
);

#[test]
fn the_chart_crd_matches_the_rust_types() {
    let generated = control_plane::resource::crd_yaml().expect("CRD serialises");
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(CHART_CRD, &generated).expect("write the chart CRD");
    }
    let checked_in = std::fs::read_to_string(CHART_CRD).unwrap_or_default();
    assert!(
        checked_in == generated,
        "charts/switchboard/crds/mcpservers.switchboard.dev.yaml is out of date: \
         run `UPDATE_CRD=1 cargo test --workspace --test crd`"
    );
}

#[test]
fn the_crd_carries_validation_and_printer_columns() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&control_plane::resource::crd_yaml().expect("CRD")).expect("YAML");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "mcps");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Prefix",
            "Transport",
            "Ready",
            "Replicas",
            "Tools",
            "Breaker",
            "Age"
        ]
    );
    let schema = &version["schema"]["openAPIV3Schema"];
    let transport = &schema["properties"]["spec"]["properties"]["transport"];
    assert_eq!(
        transport["x-kubernetes-validations"][0]["rule"],
        "[has(self.stdio), has(self.http), has(self.sse)].filter(x, x).size() == 1"
    );
    assert!(
        schema["properties"]["spec"]["properties"]["namespace"]["pattern"].is_string(),
        "{schema}"
    );
    let described = schema["properties"]["spec"]["properties"]["transport"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(!described.is_empty(), "kubectl explain needs field docs");
}

#[test]
fn every_template_and_bundled_resource_validates() {
    for dir in ["templates/mcpservers", "deploy/local/registry"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir);
        let registry = control_plane::registry::directory::DirectorySource::new(&path)
            .scan()
            .expect("scan");
        assert!(registry.issues.is_empty(), "{dir}: {:?}", registry.issues);
        assert!(!registry.servers.is_empty(), "{dir} is empty");
    }
}
