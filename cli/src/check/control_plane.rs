//! The control plane as the chart installs it: the controller Deployment, the injector webhook
//! (its configuration, serving certificate and the CA the API server trusts it with) and the
//! identity issuer the controller signs proxies' certificates with.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment, core::v1::Secret,
        discovery::v1::EndpointSlice,
    },
};
use kube::{Api, api::ListParams};

use super::{
    Check, Ctx, Group,
    certs::{self, pem_certs},
    describe, read_hint,
};

/// The chart's names (see the chart's templates).
pub const CONTROLLER: &str = "strait-controller";
pub const WEBHOOK_SECRET: &str = "strait-webhook-tls";
pub const WEBHOOK_NAME: &str = "inject.strait.io";

/// `controller-deployment`, `controller-ready`.
pub async fn controller(ctx: &Ctx) -> Group {
    let ns = &ctx.namespace;
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let checks = match api.get_opt(CONTROLLER).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            vec![Check::fail("controller-deployment", detail, read_hint(code, &format!("Deployments in {ns}")))]
        }
        Ok(None) => vec![Check::fail(
            "controller-deployment",
            format!("no Deployment {CONTROLLER} in {ns}"),
            format!(
                "install Strait: helm install strait charts/strait -n {ns} --create-namespace \
                 (or give --namespace if it is installed elsewhere)"
            ),
        )],
        Ok(Some(d)) => {
            let wanted = d.spec.replicas.unwrap_or(1);
            let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
            let logs = format!(
                "kubectl -n {ns} describe deployment {CONTROLLER}; kubectl -n {ns} logs deployment/{CONTROLLER}"
            );
            let ready = if available < 1 {
                Check::fail(
                    "controller-ready",
                    format!("0 of {wanted} replicas available"),
                    format!("no controller serves discovery, identity or the injector: see {logs}"),
                )
            } else if available < wanted {
                Check::warn(
                    "controller-ready",
                    format!("{available} of {wanted} replicas available"),
                    format!("the mesh works, without spare replicas: see {logs}"),
                )
            } else {
                Check::ok("controller-ready", format!("{available} of {wanted} replicas available"))
            };
            vec![Check::ok("controller-deployment", format!("Deployment {ns}/{CONTROLLER}")), ready]
        }
    };
    Group { name: "controller", checks }
}

fn secret_field<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Option<&'a [u8]> {
    data.get(key).map(|b| b.0.as_slice()).filter(|b| !b.is_empty())
}

/// Reads a Secret's `data`, or the check that says why it cannot be.
async fn secret(
    ctx: &Ctx,
    check: &'static str,
    name: &str,
    missing_hint: &str,
) -> Result<BTreeMap<String, ByteString>, Check> {
    let ns = &ctx.namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(name).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            Err(Check::fail(check, detail, read_hint(code, &format!("Secret {ns}/{name}"))))
        }
        Ok(None) => Err(Check::fail(check, format!("no Secret {name} in {ns}"), missing_hint.to_string())),
        Ok(Some(s)) => Ok(s.data.unwrap_or_default()),
    }
}

/// `webhook-config`, `webhook-secret`, `webhook-ca-bundle`, `webhook-cert-chain`,
/// `webhook-cert-name`, `webhook-cert-expiry`, `webhook-endpoints`.
pub async fn webhook(ctx: &Ctx) -> Group {
    let ns = &ctx.namespace;
    let config_name = format!("strait-injector-{ns}");
    let host = format!("{CONTROLLER}.{ns}.svc");
    let reinstall = format!("the chart creates it: helm upgrade --install strait charts/strait -n {ns}");
    let renew = format!(
        "renew the serving certificate: kubectl -n {ns} delete secret {WEBHOOK_SECRET}, then helm upgrade strait \
         charts/strait -n {ns} (with cert-manager: check its Certificate {ns}/strait-webhook and that cainjector runs)"
    );
    let mut checks = Vec::new();

    let api: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let ca_bundle = match api.get_opt(&config_name).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            checks.push(Check::fail("webhook-config", detail, read_hint(code, "MutatingWebhookConfigurations")));
            None
        }
        Ok(None) => {
            checks.push(Check::fail(
                "webhook-config",
                format!("no MutatingWebhookConfiguration {config_name}"),
                format!("{reinstall}; until then new pods get no proxy"),
            ));
            None
        }
        Ok(Some(config)) => {
            let hook = config.webhooks.unwrap_or_default().into_iter().find(|w| w.name == WEBHOOK_NAME);
            match hook {
                None => {
                    checks.push(Check::fail(
                        "webhook-config",
                        format!("{config_name} has no webhook {WEBHOOK_NAME}"),
                        reinstall.clone(),
                    ));
                    None
                }
                Some(hook) => {
                    let service = hook.client_config.service.as_ref();
                    let to_us = service.is_some_and(|s| s.name == CONTROLLER && s.namespace == *ns);
                    if to_us {
                        checks.push(Check::ok(
                            "webhook-config",
                            format!("{config_name} calls Service {ns}/{CONTROLLER}"),
                        ));
                    } else {
                        let to = match (service, &hook.client_config.url) {
                            (Some(s), _) => format!("Service {}/{}", s.namespace, s.name),
                            (None, Some(url)) => url.clone(),
                            (None, None) => "nowhere".to_string(),
                        };
                        checks.push(Check::fail(
                            "webhook-config",
                            format!("{config_name} calls {to}, not Service {ns}/{CONTROLLER}"),
                            reinstall.clone(),
                        ));
                    }
                    Some(hook.client_config.ca_bundle.map(|b| b.0).unwrap_or_default())
                }
            }
        }
    };

    let data = match secret(ctx, "webhook-secret", WEBHOOK_SECRET, &format!("{reinstall} (or cert-manager writes it)"))
        .await
    {
        Ok(d) => d,
        Err(check) => {
            checks.push(check);
            return Group { name: "webhook", checks };
        }
    };
    let parsed = |key: &str| -> Result<Vec<Vec<u8>>, String> {
        let bytes = secret_field(&data, key).ok_or_else(|| format!("Secret {ns}/{WEBHOOK_SECRET} has no {key}"))?;
        pem_certs(bytes).map_err(|e| format!("{key} of Secret {ns}/{WEBHOOK_SECRET}: {e}"))
    };
    let (ca, serving) = match (parsed("ca.crt"), parsed("tls.crt")) {
        (Ok(ca), Ok(serving)) => {
            checks.push(Check::ok("webhook-secret", format!("Secret {ns}/{WEBHOOK_SECRET} holds ca.crt and tls.crt")));
            (ca, serving)
        }
        (Err(e), _) | (_, Err(e)) => {
            checks.push(Check::fail("webhook-secret", e, renew.clone()));
            return Group { name: "webhook", checks };
        }
    };

    if let Some(bundle) = ca_bundle {
        checks.push(match pem_certs(&bundle) {
            Err(e) => Check::fail(
                "webhook-ca-bundle",
                format!("the caBundle of {config_name}: {e}"),
                format!("the API server cannot verify the webhook: {reinstall}"),
            ),
            Ok(b) if b == ca => {
                Check::ok("webhook-ca-bundle", format!("{config_name}'s caBundle is ca.crt of {WEBHOOK_SECRET}"))
            }
            Ok(_) => Check::fail(
                "webhook-ca-bundle",
                format!("the caBundle of {config_name} is not ca.crt of Secret {ns}/{WEBHOOK_SECRET}"),
                format!("the API server will refuse the webhook's certificate, so pods start without proxies: {renew}"),
            ),
        });
    }

    let leaf = &serving[0];
    let chained = ca.iter().any(|c| signed_by(leaf, c, &serving));
    checks.push(if chained {
        Check::ok("webhook-cert-chain", format!("tls.crt is signed by ca.crt of {WEBHOOK_SECRET}"))
    } else {
        Check::fail(
            "webhook-cert-chain",
            format!("tls.crt of Secret {ns}/{WEBHOOK_SECRET} is not signed by its ca.crt (another CA issued it)"),
            format!("the API server will refuse the webhook's certificate, so pods start without proxies: {renew}"),
        )
    });
    match certs::info(leaf) {
        Err(e) => checks.push(Check::fail("webhook-cert-name", format!("tls.crt: {e}"), renew.clone())),
        Ok(info) => {
            checks.push(if info.dns_names.contains(&host) {
                Check::ok("webhook-cert-name", format!("tls.crt names {host}"))
            } else {
                Check::fail(
                    "webhook-cert-name",
                    format!("tls.crt names {:?}, not {host}", info.dns_names),
                    format!("the API server calls the webhook as {host}: {renew}"),
                )
            });
            checks.push(certs::expiry(
                "webhook-cert-expiry",
                "the webhook's serving certificate",
                &info,
                certs::now_unix(),
                &renew,
            ));
        }
    }

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("kubernetes.io/service-name={CONTROLLER}");
    checks.push(match slices.list(&ListParams::default().labels(&selector)).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            Check::fail("webhook-endpoints", detail, read_hint(code, &format!("EndpointSlices in {ns}")))
        }
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .count();
            if ready > 0 {
                Check::ok("webhook-endpoints", format!("Service {ns}/{CONTROLLER} has {ready} ready endpoints"))
            } else {
                Check::fail(
                    "webhook-endpoints",
                    format!("Service {ns}/{CONTROLLER} has no ready endpoint"),
                    format!(
                        "the API server cannot reach the injector (failurePolicy Ignore: pods start without proxies); \
                         see kubectl -n {ns} get pods -l app.kubernetes.io/name=strait-controller"
                    ),
                )
            }
        }
    });
    Group { name: "webhook", checks }
}

/// `leaf` chains to `root` directly or through intermediates sent along in `chain`.
fn signed_by(leaf: &[u8], root: &[u8], chain: &[Vec<u8>]) -> bool {
    let mut current = leaf.to_vec();
    for _ in 0..=chain.len() {
        if certs::signed_by(&current, root) {
            return true;
        }
        match chain.iter().find(|c| **c != current && certs::signed_by(&current, c)) {
            Some(next) => current = next.clone(),
            None => return false,
        }
    }
    false
}

/// `issuer-secret`, `trust-anchors`, `anchor-expiry`, `issuer-cert`, `issuer-chain`,
/// `issuer-expiry`.
pub async fn identity(ctx: &Ctx) -> Group {
    let ns = &ctx.namespace;
    let name = &ctx.issuer_secret;
    let renew = format!(
        "rotate the issuer: put a new issuer (signed by a trust anchor the proxies have) in Secret {ns}/{name} \
         (tls.crt, tls.key; ca.crt = the anchors); the controller picks it up without a restart"
    );
    let mut checks = Vec::new();
    let data = match secret(
        ctx,
        "issuer-secret",
        name,
        &format!(
            "the chart creates it (or give identity.issuer.existingSecret and pass the same name with --issuer-secret); \
             without it the controller signs no certificates: helm upgrade --install strait charts/strait -n {ns}"
        ),
    )
    .await
    {
        Ok(d) => d,
        Err(check) => {
            checks.push(check);
            return Group { name: "identity", checks };
        }
    };
    let missing: Vec<&str> =
        ["ca.crt", "tls.crt", "tls.key"].into_iter().filter(|k| secret_field(&data, k).is_none()).collect();
    if !missing.is_empty() {
        checks.push(Check::fail("issuer-secret", format!("Secret {ns}/{name} has no {}", missing.join(", ")), renew));
        return Group { name: "identity", checks };
    }
    checks.push(Check::ok("issuer-secret", format!("Secret {ns}/{name} holds ca.crt, tls.crt, tls.key")));
    let now = certs::now_unix();

    let anchors = match secret_field(&data, "ca.crt").map(pem_certs) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            checks.push(Check::fail("trust-anchors", format!("ca.crt of {name}: {e}"), renew.clone()));
            return Group { name: "identity", checks };
        }
        None => return Group { name: "identity", checks },
    };
    checks.push(Check::ok("trust-anchors", format!("{} trust anchor(s) in ca.crt", anchors.len())));
    let anchor_renew = format!(
        "rotate the trust anchor: add the new anchor to ca.crt next to the old one, restart the meshed workloads so \
         their proxies trust both, then move the issuer to the new anchor (Secret {ns}/{name})"
    );
    // The anchor that lives longest is what the mesh depends on once a rotation is done.
    let anchor_infos: Vec<certs::Info> = anchors.iter().filter_map(|a| certs::info(a).ok()).collect();
    if let Some(latest) = anchor_infos.iter().max_by_key(|i| i.not_after) {
        checks.push(certs::expiry(
            "anchor-expiry",
            &format!("trust anchor {}", latest.subject),
            latest,
            now,
            &anchor_renew,
        ));
    }

    let chain = match secret_field(&data, "tls.crt").map(pem_certs) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            checks.push(Check::fail("issuer-cert", format!("tls.crt of {name}: {e}"), renew.clone()));
            return Group { name: "identity", checks };
        }
        None => return Group { name: "identity", checks },
    };
    let issuer = match certs::info(&chain[0]) {
        Ok(i) => i,
        Err(e) => {
            checks.push(Check::fail("issuer-cert", format!("tls.crt of {name}: {e}"), renew.clone()));
            return Group { name: "identity", checks };
        }
    };
    checks.push(if issuer.is_ca {
        Check::ok("issuer-cert", format!("issuer {}", issuer.subject))
    } else {
        Check::fail(
            "issuer-cert",
            format!("issuer {} is not a CA certificate, so it cannot sign proxies' certificates", issuer.subject),
            renew.clone(),
        )
    });
    let trusted = anchors.iter().any(|a| *a == chain[0] || signed_by(&chain[0], a, &chain));
    checks.push(if trusted {
        Check::ok("issuer-chain", "the issuer chains to a trust anchor in ca.crt")
    } else {
        Check::fail(
            "issuer-chain",
            format!("issuer {} is not signed by any trust anchor in ca.crt", issuer.subject),
            format!("proxies would refuse every certificate it signs (the controller refuses it too): {renew}"),
        )
    });
    checks.push(certs::expiry("issuer-expiry", &format!("issuer {}", issuer.subject), &issuer, now, &renew));
    Group { name: "identity", checks }
}
