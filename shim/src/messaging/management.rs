//! RabbitMQ's management HTTP API, for the one thing AMQP 0-9-1 cannot tell: the
//! current bindings of an exchange. The cut-over must find out how far an interrupted
//! earlier attempt got; bindings come from the broker's schema database, not from its
//! statistics, so they are current. (Its statistics are not: queue counts, consumers
//! and counters lag by seconds and were seen not to move at all while a consumer worked
//! off 40 deliveries, so nothing here reads them.)
//!
//! The standard `rabbitmq_management` plugin is a broker prerequisite (docs/deploy.md).

use std::time::Duration;

use serde::Deserialize;

use super::{AmqpUrl, MessagingError, Result};

/// RabbitMQ's default management listener port.
pub const DEFAULT_PORT: u16 = 15672;
/// Its default TLS listener port, assumed for `amqps://` brokers.
pub const DEFAULT_TLS_PORT: u16 = 15671;

/// Where the management API is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagementConfig {
    /// `http(s)://host:port` without a path; `None`: the AMQP host on port 15672, with
    /// the AMQP URL's credentials.
    pub url: Option<String>,
}

/// One binding whose source is an exchange.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Binding {
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
}

impl Binding {
    pub fn is_queue(&self, name: &str) -> bool {
        self.destination_type == "queue" && self.destination == name
    }

    pub fn is_exchange(&self, name: &str) -> bool {
        self.destination_type == "exchange" && self.destination == name
    }
}

/// A client for the few management endpoints ms2m reads.
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    vhost: String,
}

impl Management {
    /// `tls`: the broker connection's TLS configuration (`amqps://`), also used for an
    /// `https://` management URL, which is then the default (port 15671).
    pub fn new(
        amqp: &AmqpUrl,
        cfg: &ManagementConfig,
        tls: Option<&rustls::ClientConfig>,
    ) -> Result<Self> {
        // The shim's binaries install ring at start; library users (tests) may not have.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = match &cfg.url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if amqp.tls => format!("https://{}:{DEFAULT_TLS_PORT}", bracket_v6(&amqp.host)),
            None => format!("http://{}:{DEFAULT_PORT}", bracket_v6(&amqp.host)),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(MessagingError::Url(format!(
                "management URL must be http:// or https://: {base}"
            )));
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(tls) = tls
            && base.starts_with("https://")
        {
            // A management API behind the broker's own CA is trusted like the broker.
            let mut tls = tls.clone();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            http = http.tls_backend_preconfigured(tls);
        }
        let http = http
            .build()
            .map_err(|e| MessagingError::Url(format!("management client: {e}")))?;
        Ok(Self {
            http,
            base,
            user: amqp.user.clone(),
            password: amqp.password.clone(),
            vhost: amqp.vhost.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
    ) -> Result<Option<T>> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| MessagingError::Operation {
                op,
                message: format!("management API at {}: {e}", self.base),
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(MessagingError::Refused {
                op,
                code: status.as_u16(),
                text: format!(
                    "management API at {} refused the broker user (it needs the `monitoring` tag or better)",
                    self.base
                ),
            });
        }
        if !status.is_success() {
            return Err(MessagingError::Operation {
                op,
                message: format!("management API at {} answered {status}", self.base),
            });
        }
        resp.json::<T>()
            .await
            .map(Some)
            .map_err(|e| MessagingError::Operation {
                op,
                message: format!("management API at {}: {e}", self.base),
            })
    }

    /// Bindings whose source is `exchange` (current, not statistics).
    pub async fn bindings_from(&self, exchange: &str) -> Result<Vec<Binding>> {
        let path = format!(
            "/api/exchanges/{}/{}/bindings/source",
            segment(&self.vhost),
            segment(exchange)
        );
        Ok(self
            .get("management bindings", &path)
            .await?
            .unwrap_or_default())
    }
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// One path segment, percent-encoded (a vhost `/` is `%2F`).
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp() -> AmqpUrl {
        super::super::parse_url("amqp://u:p@10.0.0.1:5672/%2f").unwrap()
    }

    #[test]
    fn defaults_to_the_amqp_host_on_the_management_port() {
        let m = Management::new(&amqp(), &ManagementConfig::default(), None).unwrap();
        assert_eq!(m.base_url(), "http://10.0.0.1:15672");
        let v6 = super::super::parse_url("amqp://u:p@[::1]:5672/").unwrap();
        // parse_url keeps the brackets of an IPv6 literal.
        let m = Management::new(&v6, &ManagementConfig::default(), None).unwrap();
        assert!(m.base_url().starts_with("http://["), "{}", m.base_url());
    }

    #[test]
    fn an_explicit_url_must_be_http() {
        let cfg = ManagementConfig {
            url: Some("ftp://x".into()),
        };
        assert!(Management::new(&amqp(), &cfg, None).is_err());
        let cfg = ManagementConfig {
            url: Some("https://mq.example:15671/".into()),
        };
        assert_eq!(
            Management::new(&amqp(), &cfg, None).unwrap().base_url(),
            "https://mq.example:15671"
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("orders.ms2m-replay"), "orders%2Ems2m%2Dreplay");
    }
}
