//! The CRDs in the helm chart are generated from the Rust types; this
//! fails when the two drift (`UPDATE_CRD=1 cargo test --workspace --test
//! crd` rewrites the chart's copies). Every McpServer the repository ships
//! (templates, the example registry) validates.

const CHART_CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/switchboard/crds");

#[test]
fn the_chart_crds_match_the_rust_types() {
    let mut files = Vec::new();
    for crd in control_plane::resource::crds() {
        let name = crd.metadata.name.clone().expect("named");
        let generated = serde_yaml::to_string(&crd).expect("CRD serialises");
        let path = format!("{CHART_CRDS}/{name}.yaml");
        if std::env::var_os("UPDATE_CRD").is_some() {
            std::fs::write(&path, &generated).expect("write the chart CRD");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "charts/switchboard/crds/{name}.yaml is out of date: \
             run `UPDATE_CRD=1 cargo test --workspace --test crd`"
        );
        files.push(format!("{name}.yaml"));
    }
    let mut in_chart: Vec<String> = std::fs::read_dir(CHART_CRDS)
        .expect("the chart's crds/")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    in_chart.sort();
    files.sort();
    assert_eq!(in_chart, files, "a CRD in the chart that no type makes");
}

#[test]
fn every_kind_is_namespaced_in_the_switchboard_category() {
    for crd in control_plane::resource::crds() {
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["switchboard".to_owned()][..])
        );
        assert!(crd.spec.names.short_names.is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn the_crd_carries_validation_and_printer_columns() {
    let crd = serde_json::to_value(&control_plane::resource::crds()[0]).expect("CRD");
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
