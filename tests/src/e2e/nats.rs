//! The end-to-end scenario on NATS JetStream instead of RabbitMQ: the same consumer
//! and producer binaries, selected by a `nats://` broker URL
//! (tests/sample-service/src/nats), the same shim (`--broker-url nats://...`), the
//! same accounting. Only the URLs and the clean-up differ.

/// The shim's and the sample service's control stream.
const CONTROL_STREAM: &str = "MS2M_CONTROL";

/// JetStream names have no `.` (the sample service's and the shim's rule).
fn jetstream_name(name: &str) -> String {
    name.replace('.', "_")
}

/// Which broker a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    #[default]
    RabbitMq,
    Nats,
}

impl BrokerKind {
    /// The broker URL the test runner exported (loopback), for the producer and shim.
    pub fn host_url(self) -> String {
        match self {
            BrokerKind::RabbitMq => crate::env::amqp_url(),
            BrokerKind::Nats => crate::env::nats_url(),
        }
    }

    /// The URL pods use: the broker relayed on the cluster's services address.
    pub fn pod_url(self, host_url: &str, cluster: &crate::nodes::Cluster) -> String {
        match self {
            BrokerKind::RabbitMq => {
                let port = super::amqp_port(host_url);
                super::amqp_url_at(host_url, cluster.forward(port, port))
            }
            BrokerKind::Nats => {
                let port = nats_port(host_url);
                format!("nats://{}", cluster.forward(port, port))
            }
        }
    }
}

/// The port of a `nats://host:port` URL (4222 by default).
pub fn nats_port(url: &str) -> u16 {
    let rest = url.strip_prefix("nats://").expect("nats:// URL");
    let hostport = rest.rsplit_once('@').map(|(_, t)| t).unwrap_or(rest);
    hostport
        .split(['/', '?'])
        .next()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(4222)
}

/// Deletes a scenario's streams (their consumers go with them) and its control
/// consumers, so runs don't accumulate them in the server's file store. Best effort:
/// called from a `Drop`.
pub fn cleanup(url: &str, control_subjects: &[String], exchanges: &[String]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(Ok(client)) =
            tokio::time::timeout(std::time::Duration::from_secs(5), async_nats::connect(url)).await
        else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        for e in exchanges {
            let _ = js.delete_stream(jetstream_name(e)).await;
        }
        if let Ok(control) = js.get_stream(CONTROL_STREAM).await {
            for s in control_subjects {
                let _ = control.delete_consumer(&jetstream_name(s)).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_ports() {
        assert_eq!(nats_port("nats://127.0.0.1:4317"), 4317);
        assert_eq!(nats_port("nats://u:p@10.0.0.1:4333/"), 4333);
        assert_eq!(nats_port("nats://host"), 4222);
    }
}
