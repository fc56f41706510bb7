//! The cluster's certificates (rcgen, ECDSA P-256 through aws-lc-rs): a CA, the apiserver's
//! serving certificate, client certificates for kube-controller-manager, kube-scheduler and the
//! real node's kubelet, and the service-account signing key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files written into the cluster's `pki/` directory, and the CA in PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub kcm_cert_pem: String,
    pub kcm_key_pem: String,
    /// kube-scheduler's client certificate (`system:kube-scheduler`, bound by the bootstrap RBAC).
    pub scheduler: ClientCert,
    /// The real node's kubelet (`system:node:<NODE_NAME>` in `system:nodes`).
    pub node: ClientCert,
    pub sa_private_key: PathBuf,
    pub sa_public_key: PathBuf,
}

/// A client certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The real node's name, which is also its address: a kubelet whose `--hostname-override` is
/// an IP address reports it as the Node's InternalIP without the check that refuses loopback
/// for `--node-ip`, so pods with `hostNetwork: true` get 127.0.0.1 as their IP and the
/// kubelet's probes dial 127.0.0.1 (see node.rs).
pub const NODE_NAME: &str = "127.0.0.1";

/// The service CIDR's first address: the `kubernetes` Service's ClusterIP.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

impl Pki {
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pacer-e2e-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            KUBERNETES_SERVICE_IP.to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let client = |common_name: &str, organization: Option<&str>| -> Result<ClientCert> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            if let Some(o) = organization {
                params.distinguished_name.push(DnType::OrganizationName, o);
            }
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &issuer)?;
            Ok(ClientCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        let kcm = client("system:kube-controller-manager", None)?;
        let scheduler = client("system:kube-scheduler", None)?;
        let node = client(&format!("system:node:{NODE_NAME}"), Some("system:nodes"))?;

        // kube-apiserver's --service-account-key-file wants the public key on its own.
        let sa_key = KeyPair::generate()?;

        Ok(Self {
            ca_cert: write("ca.crt", &ca_pem)?,
            ca_pem,
            serving_cert: write("apiserver.crt", &serving_cert.pem())?,
            serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
            kcm_cert_pem: kcm.cert_pem,
            kcm_key_pem: kcm.key_pem,
            scheduler,
            node,
            sa_private_key: write("sa.key", &sa_key.serialize_pem())?,
            sa_public_key: write("sa.pub", &sa_key.public_key_pem())?,
        })
    }
}
