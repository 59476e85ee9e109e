//! The webhook's errors: all of them are about start-up or the serving certificate; a review never
//! fails (bad input is answered `allowed: true` with a warning).

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("{0}: {1}")]
    Pem(String, String),
    #[error("the key in {0} cannot be used: {1}")]
    Key(String, String),
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("--injector-config {0}: {1}")]
    InjectorConfig(String, String),
    #[error("building the injector: {0}")]
    Mutator(String),
}
