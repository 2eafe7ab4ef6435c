//! The registry client against real docker-registry instances: the shared one for the
//! streamed upload path, private ones for basic auth, token auth and TLS.

use std::io::Write;
use std::sync::Arc;

use ms2m_agent::registry::{Access, ClientOptions, Credentials, Reference, RegistryClient, Scheme};
use ms2m_agent::transfer::channel::ChannelSink;
use ms2m_agent::transfer::upload::{BlobSource, upload_blob};
use ms2m_agent::transfer::{Error, Progress};
use ms2m_tests::env;
use ms2m_tests::transfer::{PrivateRegistry, TokenServer, htpasswd, tls_material};
use sha2::Digest as _;

/// Pseudo-random bytes from a seed (xorshift): the same blob every time it is produced.
struct SeededBlob {
    seed: u64,
    size: usize,
}

impl SeededBlob {
    fn bytes(&self) -> Vec<u8> {
        let mut x = self.seed | 1;
        (0..self.size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

impl BlobSource for SeededBlob {
    type Output = usize;
    fn produce(&self, sink: &mut ChannelSink) -> Result<(String, usize), Error> {
        let data = self.bytes();
        for c in data.chunks(100_000) {
            sink.write_all(c)
                .map_err(|e| Error::Protocol(e.to_string()))?;
        }
        Ok((
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data))),
            data.len(),
        ))
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}

async fn push_and_check(client: &RegistryClient, size: usize) {
    let blob = Arc::new(SeededBlob { seed: seed(), size });
    let progress = Progress::new();
    progress.set_layers(&[size as u64]);
    let (digest, n) = upload_blob(client, blob.clone(), 0, &progress)
        .await
        .unwrap();
    assert_eq!(n, size);
    assert_eq!(progress.snapshot().wire_bytes, size as u64);
    assert!(client.blob_exists(&digest).await.unwrap());
    let all = client.get_small_blob(&digest, size as u64).await.unwrap();
    assert_eq!(all, blob.bytes());
    // A range request answers from the offset: what a broken download resumes with.
    let off = (size / 3) as u64;
    let part = client.get_blob(&digest, off).await.unwrap();
    assert_eq!(part.start, off);
    let tail = part.response.bytes().await.unwrap();
    assert_eq!(&tail[..], &blob.bytes()[off as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_upload_lands_with_its_digest_in_the_shared_registry() {
    let reference = Reference::parse(&format!(
        "{}/ms2m-test/upload:{}",
        env::registry(),
        env::unique("t")
    ))
    .unwrap();
    let client = RegistryClient::connect(&reference, ClientOptions::default(), Access::Push)
        .await
        .unwrap();
    assert_eq!(
        client.scheme(),
        Scheme::Http,
        "loopback registry must use plain HTTP"
    );
    push_and_check(&client, 5 * 1024 * 1024 + 17).await;
    assert!(
        !client
            .blob_exists("sha256:0000000000000000000000000000000000000000000000000000000000000000")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry_needs_and_accepts_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), "ms2m", "s3cret");
    let reg = PrivateRegistry::start(
        &format!(
            "auth:\n  htpasswd:\n    realm: ms2m-test\n    path: {}\n",
            pw.display()
        ),
        None,
    );
    let reference = Reference::parse(&format!("{}/ms2m/basic:v1", reg.addr)).unwrap();
    let anon = RegistryClient::connect(&reference, ClientOptions::default(), Access::Push).await;
    let err = anon
        .err()
        .expect("anonymous access to an htpasswd registry must fail");
    assert!(err.to_string().contains("wants credentials"), "{err}");

    let wrong = ClientOptions {
        credentials: Some(Credentials {
            username: "ms2m".into(),
            password: "nope".into(),
        }),
        ..ClientOptions::default()
    };
    let client = RegistryClient::connect(&reference, wrong, Access::Push)
        .await
        .unwrap();
    let err = client.start_upload().await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    let flags = ClientOptions {
        credentials: Some(Credentials {
            username: "ms2m".into(),
            password: "s3cret".into(),
        }),
        ..ClientOptions::default()
    };
    let client = RegistryClient::connect(&reference, flags, Access::Push)
        .await
        .unwrap();
    push_and_check(&client, 300_000).await;

    // The same credentials from a docker-style config.json.
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"bXMybTpzM2NyZXQ="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let from_file = ClientOptions {
        auth_file: Some(cfg),
        ..ClientOptions::default()
    };
    let client = RegistryClient::connect(&reference, from_file, Access::Push)
        .await
        .unwrap();
    push_and_check(&client, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_goes_through_the_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(dir.path(), "ms2m", "t0ken-pass");
    let reg = PrivateRegistry::start(&tokens.registry_auth_yaml(), None);
    let reference = Reference::parse(&format!("{}/ms2m/token:v1", reg.addr)).unwrap();

    let anon = RegistryClient::connect(&reference, ClientOptions::default(), Access::Push).await;
    let err = anon
        .err()
        .expect("the token server must refuse anonymous users");
    assert!(err.to_string().contains("token server"), "{err}");

    let opts = ClientOptions {
        credentials: Some(Credentials {
            username: "ms2m".into(),
            password: "t0ken-pass".into(),
        }),
        ..ClientOptions::default()
    };
    let client = RegistryClient::connect(&reference, opts, Access::Push)
        .await
        .unwrap();
    push_and_check(&client, 2 * 1024 * 1024).await;
    assert!(tokens.requests.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_is_trusted_through_a_custom_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_material(dir.path());
    let reg = PrivateRegistry::start("", Some((&tls.cert, &tls.key)));
    assert!(reg.is_tls());
    let reference = Reference::parse(&format!("{}/ms2m/tls:v1", reg.addr)).unwrap();

    // Unknown CA: a TLS error, and no silent fall-back to plain HTTP.
    let err = RegistryClient::connect(&reference, ClientOptions::default(), Access::Push)
        .await
        .err()
        .expect("a self-signed CA must not be trusted by default");
    assert!(err.to_string().contains("https://"), "{err}");

    let opts = ClientOptions {
        ca_file: Some(tls.ca.clone()),
        ..ClientOptions::default()
    };
    let client = RegistryClient::connect(&reference, opts, Access::Push)
        .await
        .unwrap();
    assert_eq!(client.scheme(), Scheme::Https);
    push_and_check(&client, 1024 * 1024).await;
}
