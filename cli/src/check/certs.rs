//! Certificates as the checks need them: PEM bundles to DER, who signed what, names, and expiry
//! judged against [`EXPIRY_WARNING`].

use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::{
    extensions::GeneralName,
    pem::Pem,
    prelude::{FromDer, X509Certificate},
};

use super::{Check, EXPIRY_WARNING};

/// Every `CERTIFICATE` block of a PEM bundle, as DER; an error when there is none or one does not
/// parse as X.509.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&block.contents).map_err(|e| format!("a certificate does not parse: {e}"))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err("no PEM certificate in it".to_string());
    }
    Ok(out)
}

/// What the checks read of one certificate.
pub struct Info {
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub dns_names: Vec<String>,
}

pub fn info(der: &[u8]) -> Result<Info, String> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let dns_names = match c.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Info {
        subject: c.subject().to_string(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        is_ca: c.is_ca(),
        dns_names,
    })
}

/// Whether `child` carries a valid signature by `issuer`'s key (and names it as its issuer).
pub fn signed_by(child: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, i))) = (X509Certificate::from_der(child), X509Certificate::from_der(issuer)) else {
        return false;
    };
    c.issuer() == i.subject() && c.verify_signature(Some(i.public_key())).is_ok()
}

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn in_words(seconds: i64) -> String {
    let s = seconds.abs();
    if s >= 2 * 86400 {
        format!("{} days", s / 86400)
    } else if s >= 2 * 3600 {
        format!("{} hours", s / 3600)
    } else {
        format!("{} minutes", s / 60)
    }
}

/// Expired or not yet valid: fail; less than [`EXPIRY_WARNING`] left: warn; else ok.
pub fn expiry(name: &'static str, what: &str, cert: &Info, now: i64, renew: &str) -> Check {
    let left = cert.not_after - now;
    if cert.not_before > now {
        Check::fail(
            name,
            format!("{what} is not valid yet (for {} more)", in_words(cert.not_before - now)),
            format!("check the clocks of this machine and the cluster; {renew}"),
        )
    } else if left <= 0 {
        Check::fail(name, format!("{what} expired {} ago", in_words(left)), renew.to_string())
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Check::warn(name, format!("{what} expires in {}", in_words(left)), renew.to_string())
    } else {
        Check::ok(name, format!("{what} is valid for {} more", in_words(left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    fn cert(not_before: i64, not_after: i64) -> Info {
        Info { subject: "CN=x".into(), not_before, not_after, is_ca: true, dns_names: vec![] }
    }

    #[test]
    fn expiry_levels() {
        let now = 1_000_000_000;
        let day = 86400;
        assert_eq!(expiry("e", "it", &cert(now - day, now + 30 * day), now, "renew").status, Status::Ok);
        assert_eq!(expiry("e", "it", &cert(now - day, now + 6 * day), now, "renew").status, Status::Warn);
        assert_eq!(expiry("e", "it", &cert(now - day, now - 1), now, "renew").status, Status::Fail);
        assert_eq!(expiry("e", "it", &cert(now + day, now + 30 * day), now, "renew").status, Status::Fail);
        assert!(expiry("e", "it", &cert(now - 9 * day, now - 3 * day), now, "renew").detail.contains("3 days ago"));
    }

    #[test]
    fn bundles() {
        assert!(pem_certs(b"").is_err());
        assert!(pem_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }
}
