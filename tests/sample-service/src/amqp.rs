//! Connection set-up and the queue topology shared by consumer, producer and tools.

use amqprs::{
    BasicProperties,
    channel::{
        BasicPublishArguments, Channel, ExchangeDeclareArguments, QueueBindArguments,
        QueueDeclareArguments,
    },
    connection::{Connection, OpenConnectionArguments},
};

use crate::{Error, Result};

/// Connects to `url` (`amqp://user:pass@<ip>:<port>/<vhost>`). Containers have no
/// resolver, so the host should be an IP address.
pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let mut args = parse_url(url)?;
    args.connection_name(name);
    Ok(Connection::open(&args).await?)
}

/// Parses an `amqp://` URL per the RabbitMQ URI spec, percent-decoding user, password
/// and vhost (`/%2f` is the default vhost `/`; amqprs' own parser keeps `%2f` literally).
pub fn parse_url(url: &str) -> Result<OpenConnectionArguments> {
    let bad = |reason: &str| Error::AmqpUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| bad("only amqp:// is supported"))?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, vhost) = match rest.split_once('/') {
        Some((a, v)) if !v.is_empty() => (a, percent_decode(v).ok_or_else(|| bad("bad vhost"))?),
        Some((a, _)) => (a, "/".to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (
                percent_decode(user).ok_or_else(|| bad("bad user"))?,
                percent_decode(pass).ok_or_else(|| bad("bad password"))?,
            )
        }
        None => ("guest".to_owned(), "guest".to_owned()),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        (h, p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => 5672,
    };
    let mut args = OpenConnectionArguments::new(host, port, &user, &password);
    args.virtual_host(&vhost);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        if let Some(("heartbeat", v)) = kv.split_once('=') {
            args.heartbeat(v.parse().map_err(|_| bad("bad heartbeat"))?);
        }
    }
    Ok(args)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Declares the durable fanout exchange producers publish to, the durable primary
/// queue, and the binding between them. Idempotent: everyone calls it on start.
pub async fn declare_topology(ch: &Channel, exchange: &str, queue: &str) -> Result<()> {
    ch.exchange_declare(
        ExchangeDeclareArguments::new(exchange, "fanout")
            .durable(true)
            .finish(),
    )
    .await?;
    declare_durable_queue(ch, queue).await?;
    ch.queue_bind(QueueBindArguments::new(queue, exchange, ""))
        .await?;
    Ok(())
}

pub async fn declare_durable_queue(ch: &Channel, queue: &str) -> Result<u32> {
    let declared = ch
        .queue_declare(QueueDeclareArguments::durable_client_named(queue))
        .await?;
    Ok(declared.map(|(_, ready, _)| ready).unwrap_or(0))
}

/// Messages ready in `queue` (not counting unacknowledged ones); fails if it does not exist.
pub async fn queue_depth(ch: &Channel, queue: &str) -> Result<u32> {
    let declared = ch
        .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
        .await?;
    Ok(declared.map(|(_, ready, _)| ready).unwrap_or(0))
}

/// Persistent JSON publish.
pub async fn publish_json(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: Vec<u8>,
) -> Result<()> {
    let props = BasicProperties::default()
        .with_persistence(true)
        .with_content_type("application/json")
        .finish();
    ch.basic_publish(
        props,
        body,
        BasicPublishArguments::new(exchange, routing_key),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_like_the_rabbitmq_uri_spec() {
        let a = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (a.get_host(), a.get_port(), a.get_virtual_host()),
            ("127.0.0.1", 5672, "/")
        );
        let a = parse_url("amqp://u%40x:p%3Ass@10.0.0.1/prod?heartbeat=5").unwrap();
        assert_eq!(
            (a.get_host(), a.get_port(), a.get_virtual_host()),
            ("10.0.0.1", 5672, "prod")
        );
        assert_eq!(a.get_heartbeat(), 5);
        assert_eq!(percent_decode("u%40x").as_deref(), Some("u@x"));
        let a = parse_url("amqp://[::1]:5673").unwrap();
        assert_eq!(
            (a.get_host(), a.get_port(), a.get_virtual_host()),
            ("::1", 5673, "/")
        );
        for bad in ["http://x", "amqp://", "amqp://h:port", "amqp://h/%zz"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
