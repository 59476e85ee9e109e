//! The injector's errors. Only its configuration can fail: a template it does not understand is
//! left alone with a reason (bad input never blocks a pod), so injection itself has no error type.

/// A broken `--injector-config` file (the chart's `strait-injector` ConfigMap).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the injector configuration is not valid YAML for its fields: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("the injector configuration is invalid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A manifest stream `strait inject` could not read at all (a document it does not understand is
/// written back unchanged instead).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the input is not UTF-8 text")]
    NotUtf8,
    #[error("writing an injected document as YAML: {0}")]
    Serialize(#[from] serde_yaml::Error),
}
