//! TLS on the gRPC port, so the config stream (resolved Secret values
//! included) and the replica token never cross the network in clear, and
//! gateways know they talk to their control plane. The certificate comes
//! from files (cert-manager's, say), or is made here: a CA of its own and
//! a server certificate, signed by it, for the names gateways dial. In a
//! cluster the made ones are kept in the tokens Secret ([`crate::tokens`])
//! so every pod and restart serves the same; `up` makes fresh ones for its
//! run. Gateways check the server against the CA (`ca.crt`).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long a made certificate is valid.
const VALID_YEARS: i32 = 10;

/// What the gRPC port serves, and the CA that vouches for it.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA gateways trust; for given files, the certificate itself
    /// (whoever issued it is the operator's business).
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the gRPC port's certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the gRPC port needs at least one name gateways dial it by")]
    NoNames,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(key redacted)")
    }
}

impl ServerTls {
    /// A certificate and key from PEM files.
    pub fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let cert_pem = read(cert)?;
        Ok(Self {
            ca_pem: cert_pem.clone(),
            cert_pem,
            key_pem: read(key)?,
        })
    }

    /// A new CA and a server certificate it signs for `names` (DNS names
    /// or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        if names.is_empty() {
            return Err(TlsError::NoNames);
        }
        let until = rcgen::date_time_ymd(this_year() + VALID_YEARS, 1, 1);
        let mut ca = CertificateParams::default();
        ca.distinguished_name = named("Switchboard control-plane CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_after = until;
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(names.to_vec())?;
        server.distinguished_name = named("Switchboard control plane");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.not_after = until;
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;
        Ok(Self {
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            ca_pem: ca_cert.pem(),
        })
    }

    /// tonic's server configuration.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn this_year() -> i32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Close enough for an expiry years away.
    1970 + i32::try_from(seconds / 31_556_952).unwrap_or(0)
}
