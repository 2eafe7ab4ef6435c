//! `ms2m-agent certs`: bootstrap the cluster CA and issue the shim's and agents'
//! certificates, in cert-manager's Secret layout (`tls.crt`, `tls.key`, `ca.crt`), for
//! clusters without cert-manager and for tests. Identities: `tls.rs`.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ms2m_agent::tls::CertIdentity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Certs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Certs {
    /// Make the cluster CA: `ca.crt` and `ca.key` in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA in --ca-dir into --out-dir.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out_dir: PathBuf,
        /// The shim's identity (`ms2m-shim`).
        #[arg(long, conflicts_with = "agent", required_unless_present = "agent")]
        shim: bool,
        /// An agent's identity, `ms2m-agent:<NODE>`.
        #[arg(long, value_name = "NODE")]
        agent: Option<String>,
        /// Addresses the holder is reached at (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// DNS names the holder is reached at (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Start the validity this many days ago (tests make expired certificates so).
        #[arg(long, default_value_t = 0)]
        backdate_days: u32,
    },
}

const CA_NAME: &str = "ms2m cluster CA";

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// `[start, start + days]` in whole days, from `backdate` days ago.
fn validity(p: &mut CertificateParams, days: u32, backdate: u32) -> anyhow::Result<()> {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let start = today.checked_sub(jiff::Span::new().days(i64::from(backdate)))?;
    let end = start.checked_add(jiff::Span::new().days(i64::from(days)))?;
    p.not_before = rcgen::date_time_ymd(
        i32::from(start.year()),
        start.month() as u8,
        start.day() as u8,
    );
    p.not_after = rcgen::date_time_ymd(i32::from(end.year()), end.month() as u8, end.day() as u8);
    Ok(())
}

/// Write `data` to `path` with `mode`, replacing what was there.
fn write(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Certs::Init { dir, days } => {
            std::fs::create_dir_all(&dir)?;
            let key = KeyPair::generate()?;
            let mut p = ca_params();
            validity(&mut p, days, 0)?;
            let cert = p.self_signed(&key)?;
            write(&dir.join("ca.crt"), &cert.pem(), 0o644)?;
            write(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
            println!("CA written to {}", dir.display());
        }
        Certs::Issue {
            ca_dir,
            out_dir,
            shim,
            agent,
            ip,
            dns,
            days,
            backdate_days,
        } => {
            let identity = match (shim, agent) {
                (true, _) => CertIdentity::Shim,
                (false, Some(node)) => {
                    anyhow::ensure!(
                        ms2m_agent::tls::valid_node_name(&node),
                        "{node:?} is not a node name (DNS-1123 subdomain)"
                    );
                    CertIdentity::Agent(node)
                }
                (false, None) => anyhow::bail!("give --shim or --agent NODE"),
            };
            let ca_pem = std::fs::read_to_string(ca_dir.join("ca.crt"))
                .with_context(|| format!("reading {}", ca_dir.join("ca.crt").display()))?;
            let ca_key = KeyPair::from_pem(
                &std::fs::read_to_string(ca_dir.join("ca.key"))
                    .with_context(|| format!("reading {}", ca_dir.join("ca.key").display()))?,
            )?;
            let issuer = Issuer::new(ca_params(), ca_key);
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, identity.to_string());
            p.distinguished_name = dn;
            p.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
            p.subject_alt_names
                .extend(ip.into_iter().map(SanType::IpAddress));
            for d in dns {
                p.subject_alt_names.push(SanType::DnsName(d.try_into()?));
            }
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            // Agents serve and call (Direct sends); the shim only calls, but one shape
            // for both keeps the tooling simple.
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut p, days, backdate_days)?;
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            std::fs::create_dir_all(&out_dir)?;
            write(&out_dir.join("tls.crt"), &cert.pem(), 0o644)?;
            write(&out_dir.join("tls.key"), &key.serialize_pem(), 0o600)?;
            write(&out_dir.join("ca.crt"), &ca_pem, 0o644)?;
            println!("{identity} written to {}", out_dir.display());
        }
    }
    Ok(())
}
