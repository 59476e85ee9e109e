//! The mesh's certificate authority: a trust anchor (what every proxy trusts) and an issuer it
//! certified (what signs proxies' certificates). In embedded mode both are created in the state
//! directory on first start; otherwise they come from files (on Kubernetes, a Secret the chart
//! mounts). The files are re-read when they change, so the issuer can move from A to B while
//! traffic flows.
//!
//! An issuer is only taken into use when it can sign certificates the proxies will accept: its key
//! matches its certificate, it is a CA, it has not expired, and (when the anchors file is known) it
//! chains to one of the trust anchors. Anything else is refused and the current issuer kept.
//!
//! Keys are read as PKCS#8, SEC1 (`EC PRIVATE KEY`, what cert-manager writes into the issuer
//! Secret) or PKCS#1 RSA ([`key_pair_from_pem`]): rcgen with ring signs from PKCS#8 only, so the
//! other two are wrapped first.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, pem::PemObject};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::reload::{Reload, Seen};

/// DESIGN §4: proxies renew at 70 %, so a day gives hours of slack when the controller is down.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Certificates start a little in the past so a proxy whose clock is behind still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Generated anchors and issuers: long enough never to matter for a demo or a test cluster.
const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

pub const ANCHORS_FILE: &str = "trust-anchors.pem";
pub const ANCHOR_KEY_FILE: &str = "trust-anchor-key.pem";
pub const ISSUER_CERT_FILE: &str = "issuer.pem";
pub const ISSUER_KEY_FILE: &str = "issuer-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("certificate or key: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0} holds no certificate")]
    Empty(String),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("the certificate in {0} is not a CA, so it cannot issue certificates")]
    NotCa(String),
    #[error("the issuer in {path} expired at {not_after} (Unix time)")]
    Expired { path: String, not_after: i64 },
    #[error("the issuer in {cert} is not signed by any trust anchor in {anchors}")]
    Untrusted { cert: String, anchors: String },
    #[error(
        "{anchors} exists but {key} does not: the state directory holds an anchor this controller cannot \
         sign with; give --trust-anchors, --issuer-cert and --issuer-key, or remove it"
    )]
    ForeignAnchors { anchors: String, key: String },
    #[error("the CSR is not valid: {0}")]
    Csr(rcgen::Error),
    #[error("the key cannot be used for TLS: {0}")]
    Key(String),
    #[error("{0}: not a private key rcgen can sign with (PKCS#8, SEC1 P-256/P-384 or PKCS#1 RSA): {1}")]
    KeyFormat(String, String),
}

/// Where the issuer comes from, and the anchors it must chain to.
#[derive(Clone, Debug)]
pub struct IssuerFiles {
    /// The issuer's certificate, optionally followed by intermediates up to (not including) an anchor.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The trust anchors bundle the proxies use. When known, an issuer that does not chain to one
    /// of them is refused.
    pub anchors: Option<PathBuf>,
}

/// The issuer in use.
struct Current {
    issuer: Issuer<'static, KeyPair>,
    /// Sent with every leaf: the issuer first, then any intermediates.
    chain_der: Vec<Vec<u8>>,
    not_after: SystemTime,
    subject: String,
    /// Tells issuers apart (a hash of the issuer's certificate).
    id: u64,
}

pub struct Ca {
    current: RwLock<Arc<Current>>,
    /// What the files held when last read, so a bad edit is reported once and not on every poll.
    seen: Seen,
    files: IssuerFiles,
    lifetime: Duration,
}

pub struct Signed {
    pub leaf_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
    pub not_after_unix: u64,
    /// [`Ca::issuer_id`] of the issuer that signed it.
    pub issuer_id: u64,
}

fn read(p: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(p).map_err(|e| CaError::Io(p.display().to_string(), e))
}

fn read_string(p: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(p).map_err(|e| CaError::Io(p.display().to_string(), e))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file; `private`
/// files (keys) are readable by their owner only.
fn write(p: &Path, s: &str, private: bool) -> Result<(), CaError> {
    let io = |e| CaError::Io(p.display().to_string(), e);
    let tmp = p.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(s.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, p).map_err(io)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

/// DER of the AlgorithmIdentifier contents (inside the SEQUENCE) that PKCS#8 wraps each key kind in:
/// id-ecPublicKey with a named curve, or rsaEncryption with NULL parameters (RFC 5480, RFC 8017).
const ALG_EC_P256: &[u8] =
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const ALG_EC_P384: &[u8] =
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ALG_RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];

/// A DER tag-length-value.
fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(value);
    out
}

/// PKCS#8 PrivateKeyInfo (RFC 5208) around a SEC1 or PKCS#1 key: version 0, the algorithm, the key
/// as an OCTET STRING. The inner key is not touched; ring checks it (and a SEC1 key's own curve
/// parameters against `alg`) when rcgen loads the result.
fn pkcs8_wrap(alg: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der_tlv(0x30, alg));
    body.extend(der_tlv(0x04, inner));
    der_tlv(0x30, &body)
}

/// Reads a private key in any of the PEM forms a CA key arrives in: PKCS#8 (`PRIVATE KEY`, what
/// this controller and rcgen write), SEC1 (`EC PRIVATE KEY`, what cert-manager and `openssl ec`
/// write) and PKCS#1 (`RSA PRIVATE KEY`). rcgen with ring takes PKCS#8 only, so the other two are
/// wrapped into PKCS#8 first (SEC1 does not always name its curve, so P-256 then P-384 are tried;
/// ring refuses a key whose own curve parameters disagree).
pub fn key_pair_from_pem(what: &str, pem: &str) -> Result<KeyPair, CaError> {
    let bad = |e: String| CaError::KeyFormat(what.to_string(), e);
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let candidates: Vec<Vec<u8>> = match &der {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Sec1(k) => {
            [ALG_EC_P256, ALG_EC_P384].iter().map(|alg| pkcs8_wrap(alg, k.secret_sec1_der())).collect()
        }
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8_wrap(ALG_RSA, k.secret_pkcs1_der())],
        _ => return Err(bad("a kind of private key this controller does not know".to_string())),
    };
    let mut last = String::new();
    for pkcs8 in candidates {
        match KeyPair::try_from(pkcs8.as_slice()) {
            Ok(key) => return Ok(key),
            Err(e) => last = e.to_string(),
        }
    }
    Err(bad(last))
}

/// A new self-signed trust anchor: (certificate PEM, key PEM).
pub fn new_anchor(name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, ANCHOR_LIFETIME);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new issuer certified by the anchor: (certificate PEM, key PEM).
pub fn new_issuer(anchor_cert_pem: &str, anchor_key_pem: &str, name: &str) -> Result<(String, String), CaError> {
    let anchor_key = key_pair_from_pem("the trust anchor's key", anchor_key_pem)?;
    let anchor = Issuer::from_ca_cert_pem(anchor_cert_pem, anchor_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, ISSUER_LIFETIME);
    let cert = params.signed_by(&key, &anchor)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Ca {
    /// Embedded mode: use the anchor and issuer in `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path, lifetime: Duration) -> Result<Self, CaError> {
        std::fs::create_dir_all(dir).map_err(|e| CaError::Io(dir.display().to_string(), e))?;
        let anchors = dir.join(ANCHORS_FILE);
        let files = IssuerFiles {
            cert: dir.join(ISSUER_CERT_FILE),
            key: dir.join(ISSUER_KEY_FILE),
            anchors: Some(anchors.clone()),
        };
        if !files.cert.exists() || !files.key.exists() {
            let anchor_key = dir.join(ANCHOR_KEY_FILE);
            let (anchor_pem, anchor_key_pem) = match (anchors.exists(), anchor_key.exists()) {
                (true, true) => (read_string(&anchors)?, read_string(&anchor_key)?),
                (true, false) => {
                    return Err(CaError::ForeignAnchors {
                        anchors: anchors.display().to_string(),
                        key: anchor_key.display().to_string(),
                    });
                }
                (false, _) => {
                    let (c, k) = new_anchor("strait trust anchor")?;
                    write(&anchor_key, &k, true)?;
                    write(&anchors, &c, false)?;
                    (c, k)
                }
            };
            let (c, k) = new_issuer(&anchor_pem, &anchor_key_pem, "strait issuer")?;
            write(&files.key, &k, true)?;
            write(&files.cert, &c, false)?;
            tracing::info!(dir = %dir.display(), "created a trust anchor and an issuer");
        }
        Self::from_files(files, lifetime)
    }

    /// Uses the issuer in `files`; fails when it cannot sign certificates proxies would accept.
    pub fn from_files(files: IssuerFiles, lifetime: Duration) -> Result<Self, CaError> {
        let seen = fingerprint(&files);
        let current = load_issuer(&files)?;
        Ok(Ca { current: RwLock::new(Arc::new(current)), seen: Seen::new(seen), files, lifetime })
    }

    pub fn files(&self) -> &IssuerFiles {
        &self.files
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Which issuer signs now: changes when a reload brings another one.
    pub fn issuer_id(&self) -> u64 {
        self.current().id
    }

    /// The issuer's subject, for logs.
    pub fn issuer_subject(&self) -> String {
        self.current().subject.clone()
    }

    /// When the issuer in use expires (Unix seconds).
    pub fn issuer_not_after_unix(&self) -> u64 {
        unix(self.current().not_after)
    }

    /// Re-reads the files when their contents changed (issuer, key or anchors). A pair that cannot
    /// be used is reported once and the current issuer kept; the next change is tried again (so
    /// replacing the certificate and the key one after the other works).
    pub fn reload_if_changed(&self) -> Result<bool, CaError> {
        if !self.seen.changed(fingerprint(&self.files)) {
            return Ok(false);
        }
        let next = load_issuer(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(true)
    }

    /// Signs a proxy's CSR for `spiffe` (already authenticated by the caller). Only the CSR's
    /// public key is used (its signature proves the caller holds the private key): the identity
    /// comes from the proof, never from what the CSR asks for. The leaf never outlives the issuer.
    pub fn sign(&self, csr_der: &[u8], spiffe: &str) -> Result<Signed, CaError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(CaError::Csr)?;
        let current = self.current();
        let now = SystemTime::now();
        if current.not_after <= now {
            return Err(CaError::Expired { path: self.files.cert.display().to_string(), not_after: unix(current.not_after) as i64 });
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(spiffe.to_string())?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        let not_after = (now + self.lifetime).min(current.not_after);
        params.not_after = not_after.into();
        let cert = params.signed_by(&csr.public_key, &current.issuer)?;
        Ok(Signed {
            leaf_der: cert.der().to_vec(),
            chain_der: current.chain_der.clone(),
            not_after_unix: unix(not_after),
            issuer_id: current.id,
        })
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A hash of the files' contents (or of why they could not be read).
fn fingerprint(f: &IssuerFiles) -> u64 {
    crate::reload::fingerprint([Some(&f.cert), Some(&f.key), f.anchors.as_ref()].into_iter().flatten().map(PathBuf::as_path))
}

impl Reload for Ca {
    type Error = CaError;

    fn reload_if_changed(&self) -> Result<bool, CaError> {
        Ca::reload_if_changed(self)
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Parse(path.display().to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(CaError::Empty(path.display().to_string()));
    }
    Ok(certs)
}

fn parse<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| CaError::Parse(path.display().to_string(), e.to_string()))
}

fn load_issuer(files: &IssuerFiles) -> Result<Current, CaError> {
    let cert_path = files.cert.display().to_string();
    let chain = certs(&files.cert)?;
    let key = key_pair_from_pem(&files.key.display().to_string(), &read_string(&files.key)?)?;
    let x509 = parse(&files.cert, &chain[0])?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch { cert: cert_path, key: files.key.display().to_string() });
    }
    if !x509.is_ca() {
        return Err(CaError::NotCa(cert_path));
    }
    let not_after = x509.validity().not_after.timestamp();
    if not_after <= unix(SystemTime::now()) as i64 {
        return Err(CaError::Expired { path: cert_path, not_after });
    }
    let parsed = chain.iter().map(|c| parse(&files.cert, c)).collect::<Result<Vec<_>, _>>()?;
    for pair in parsed.windows(2) {
        if pair[0].verify_signature(Some(pair[1].public_key())).is_err() {
            return Err(CaError::Parse(cert_path, format!("{} is not signed by the next certificate", pair[0].subject())));
        }
    }
    let mut anchors_der = Vec::new();
    if let Some(anchors_path) = &files.anchors {
        anchors_der = certs(anchors_path)?;
        let anchors = anchors_der.iter().map(|a| parse(anchors_path, a)).collect::<Result<Vec<_>, _>>()?;
        let top = &chain[chain.len() - 1];
        let top_parsed = &parsed[parsed.len() - 1];
        let trusted = anchors_der.iter().any(|a| a == top)
            || anchors.iter().any(|a| top_parsed.verify_signature(Some(a.public_key())).is_ok());
        if !trusted {
            return Err(CaError::Untrusted { cert: cert_path, anchors: anchors_path.display().to_string() });
        }
    }
    let subject = x509.subject().to_string();
    let not_after = UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    let chain_der: Vec<Vec<u8>> = chain.iter().filter(|c| !anchors_der.contains(c)).map(|c| c.to_vec()).collect();
    let issuer = Issuer::from_ca_cert_der(&chain[0], key)?;
    let id = {
        let mut h = DefaultHasher::new();
        chain_der.hash(&mut h);
        h.finish()
    };
    Ok(Current { issuer, chain_der, not_after, subject, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        // What the CSR asks for is ignored.
        p.subject_alt_names = vec![SanType::URI("spiffe://evil/ns/kube-system/sa/admin".try_into().unwrap())];
        p.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn creates_signs_and_keeps_its_anchor_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(dir.path().join(ANCHORS_FILE).exists());
        use std::os::unix::fs::PermissionsExt;
        for key in [ISSUER_KEY_FILE, ANCHOR_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{key} is private");
        }
        let s = ca.sign(&csr(), "spiffe://cluster.local/ns/demo/sa/orders").unwrap();
        assert_eq!(s.chain_der.len(), 1);
        let leaf = parse(Path::new("leaf"), &s.leaf_der).unwrap();
        let uris: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(uris, ["URI(spiffe://cluster.local/ns/demo/sa/orders)"]);
        assert!(!leaf.is_ca());
        let now = unix(SystemTime::now()) as i64;
        assert!((leaf.validity().not_after.timestamp() - now - 60).abs() <= 2);
        assert!(leaf.validity().not_before.timestamp() <= now - BACKDATE.as_secs() as i64 + 2);
        // The leaf chains to the anchor through the issuer.
        let issuer = parse(Path::new("issuer"), &s.chain_der[0]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();

        let anchors = std::fs::read(dir.path().join(ANCHORS_FILE)).unwrap();
        let _ = Ca::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(anchors, std::fs::read(dir.path().join(ANCHORS_FILE)).unwrap());
        assert!(matches!(ca.sign(b"garbage", "spiffe://td/ns/a/sa/b"), Err(CaError::Csr(_))));
    }

    #[test]
    fn reloads_a_new_issuer_and_refuses_one_that_would_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        let first = ca.issuer_subject();
        assert!(!ca.reload_if_changed().unwrap(), "nothing changed");

        // A second issuer from the same anchor replaces the first.
        let anchor = std::fs::read_to_string(dir.path().join(ANCHORS_FILE)).unwrap();
        let anchor_key = std::fs::read_to_string(dir.path().join(ANCHOR_KEY_FILE)).unwrap();
        let (c, k) = new_issuer(&anchor, &anchor_key, "issuer two").unwrap();
        write(&ca.files().cert, &c, false).unwrap();
        // The certificate without its key: refused, the current issuer keeps signing.
        assert!(matches!(ca.reload_if_changed(), Err(CaError::KeyMismatch { .. })));
        assert_eq!(ca.issuer_subject(), first);
        ca.sign(&csr(), "spiffe://td/ns/a/sa/b").unwrap();
        write(&ca.files().key, &k, true).unwrap();
        assert!(ca.reload_if_changed().unwrap());
        assert_eq!(ca.issuer_subject(), "CN=issuer two");

        // An issuer from an anchor the proxies do not trust is refused.
        let (other_anchor, other_key) = new_anchor("other").unwrap();
        let (c, k) = new_issuer(&other_anchor, &other_key, "issuer three").unwrap();
        write(&ca.files().key, &k, true).unwrap();
        write(&ca.files().cert, &c, false).unwrap();
        assert!(matches!(ca.reload_if_changed(), Err(CaError::Untrusted { .. })));
        assert!(!ca.reload_if_changed().unwrap(), "a refused edit is reported once");
        assert_eq!(ca.issuer_subject(), "CN=issuer two");
        // ... until the anchors bundle holds its anchor too.
        let bundle = format!("{anchor}{other_anchor}");
        write(dir.path().join(ANCHORS_FILE).as_path(), &bundle, false).unwrap();
        assert!(ca.reload_if_changed().unwrap());
        assert_eq!(ca.issuer_subject(), "CN=issuer three");
    }

    #[test]
    fn a_leaf_never_outlives_its_issuer_and_an_expired_issuer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (anchor, anchor_key) = new_anchor("a").unwrap();
        let anchor_kp = KeyPair::from_pem(&anchor_key).unwrap();
        let signer = Issuer::from_ca_cert_pem(&anchor, anchor_kp).unwrap();
        let issuer_with = |lifetime_from_now: i64| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "short");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
            let now = SystemTime::now();
            p.not_after = if lifetime_from_now >= 0 {
                now + Duration::from_secs(lifetime_from_now as u64)
            } else {
                now - Duration::from_secs((-lifetime_from_now) as u64)
            }
            .into();
            (p.signed_by(&key, &signer).unwrap().pem(), key.serialize_pem())
        };
        let files = IssuerFiles {
            cert: dir.path().join("i.pem"),
            key: dir.path().join("k.pem"),
            anchors: Some(dir.path().join("a.pem")),
        };
        write(files.anchors.as_ref().unwrap(), &anchor, false).unwrap();
        let (c, k) = issuer_with(600);
        write(&files.cert, &c, false).unwrap();
        write(&files.key, &k, true).unwrap();
        let ca = Ca::from_files(files.clone(), DEFAULT_LEAF_LIFETIME).unwrap();
        let s = ca.sign(&csr(), "spiffe://td/ns/a/sa/b").unwrap();
        assert_eq!(s.not_after_unix, ca.issuer_not_after_unix());

        let (c, k) = issuer_with(-60);
        write(&files.cert, &c, false).unwrap();
        write(&files.key, &k, true).unwrap();
        assert!(matches!(ca.reload_if_changed(), Err(CaError::Expired { .. })));
        assert!(matches!(Ca::from_files(files, DEFAULT_LEAF_LIFETIME), Err(CaError::Expired { .. })));
    }

    /// An issuer whose key is `key_pem` (any format), certified by a new anchor; the Ca built on it
    /// signs a leaf that verifies under the issuer.
    fn ca_with_issuer_key(key_pem: &str) -> Result<Ca, CaError> {
        let dir = tempfile::tempdir().unwrap();
        let (anchor, anchor_key) = new_anchor("a").unwrap();
        let signer = Issuer::from_ca_cert_pem(&anchor, KeyPair::from_pem(&anchor_key).unwrap()).unwrap();
        let key = key_pair_from_pem("issuer key", key_pem)?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "issuer");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        validity(&mut p, Duration::from_secs(3600));
        let cert = p.signed_by(&key, &signer).unwrap().pem();
        let files = IssuerFiles {
            cert: dir.path().join("i.pem"),
            key: dir.path().join("k.pem"),
            anchors: Some(dir.path().join("a.pem")),
        };
        write(files.anchors.as_ref().unwrap(), &anchor, false).unwrap();
        write(&files.cert, &cert, false).unwrap();
        // The file keeps the format it came in, as a mounted Secret would.
        write(&files.key, key_pem, true).unwrap();
        let ca = Ca::from_files(files, Duration::from_secs(60))?;
        let s = ca.sign(&csr(), "spiffe://td/ns/a/sa/b").unwrap();
        let leaf = parse(Path::new("leaf"), &s.leaf_der).unwrap();
        let issuer = parse(Path::new("issuer"), &s.chain_der[0]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        Ok(ca)
    }

    fn pem(label: &str, der: &[u8]) -> String {
        ::pem::encode(&::pem::Pem::new(label, der.to_vec()))
    }

    #[test]
    fn issuer_keys_in_sec1_and_pkcs1_are_accepted() {
        // What cert-manager writes (SEC1 with the curve named), and PKCS#1 RSA: fixtures made once by
        // another implementation (testdata/README.md).
        for fixture in [
            include_str!("testdata/sec1-p256.key"),
            include_str!("testdata/sec1-p384.key"),
            include_str!("testdata/pkcs1-rsa2048.key"),
        ] {
            let label = fixture.lines().next().unwrap_or_default().to_string();
            ca_with_issuer_key(fixture).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
        // PKCS#8 as before.
        let generated = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        ca_with_issuer_key(&generated.serialize_pem()).unwrap();
        // The SEC1 key inside a PKCS#8 one (ring writes it without the optional curve parameters):
        // same key, same public key once loaded.
        let pkcs8 = generated.serialize_der();
        let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).unwrap();
        let sec1 = info.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
        let sec1_pem = pem("EC PRIVATE KEY", &sec1);
        let loaded = key_pair_from_pem("sec1", &sec1_pem).unwrap();
        assert_eq!(loaded.public_key_raw(), generated.public_key_raw());
        ca_with_issuer_key(&sec1_pem).unwrap();
    }

    #[test]
    fn keys_that_are_not_keys_are_refused_with_the_file_named() {
        let garbage = pem("EC PRIVATE KEY", b"\x30\x03\x02\x01\x01");
        let e = key_pair_from_pem("/etc/issuer/tls.key", &garbage).unwrap_err();
        assert!(matches!(e, CaError::KeyFormat(..)), "{e}");
        assert!(e.to_string().contains("/etc/issuer/tls.key"), "{e}");
        let e = key_pair_from_pem("k", "not pem").unwrap_err();
        assert!(matches!(e, CaError::KeyFormat(..)), "{e}");
        // A P-256 SEC1 key that says it is on P-384 is refused (ring compares the parameters).
        let generated = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = generated.serialize_der();
        let (_, info) = x509_parser::der_parser::parse_der(&pkcs8).unwrap();
        let sec1 = info.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
        let (_, ec) = x509_parser::der_parser::parse_der(&sec1).unwrap();
        let fields = ec.as_sequence().unwrap();
        let mut body = vec![0x02, 0x01, 0x01];
        body.extend(der_tlv(0x04, fields[1].as_slice().unwrap()));
        body.extend(der_tlv(0xa0, &ALG_EC_P384[9..]));
        body.extend(der_tlv(0xa1, &der_tlv(0x03, &[&[0u8][..], generated.public_key_raw()].concat())));
        let lying = pem("EC PRIVATE KEY", &der_tlv(0x30, &body));
        assert!(key_pair_from_pem("k", &lying).is_err());
        // ... and accepted when it tells the truth.
        let mut body = vec![0x02, 0x01, 0x01];
        body.extend(der_tlv(0x04, fields[1].as_slice().unwrap()));
        body.extend(der_tlv(0xa0, &ALG_EC_P256[9..]));
        body.extend(der_tlv(0xa1, &der_tlv(0x03, &[&[0u8][..], generated.public_key_raw()].concat())));
        let honest = pem("EC PRIVATE KEY", &der_tlv(0x30, &body));
        assert_eq!(key_pair_from_pem("k", &honest).unwrap().public_key_raw(), generated.public_key_raw());
    }
}
