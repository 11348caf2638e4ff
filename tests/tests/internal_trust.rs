//! Trust inside the cloud: every internal connection is mutual TLS with a
//! certificate from the cluster CA, every method is authorised by the
//! caller's role (and reports by its name), every call is signed over its
//! method, body and a nonce and cannot be replayed, and certificates
//! rotate while the cloud runs.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use common::{
    auth::SignCalls,
    pki::{self, Identity, Role, TlsFiles},
    rpc::Trust,
};
use proto::{
    admin_service_client::AdminServiceClient, cluster_service_client::ClusterServiceClient,
    identity_service_client::IdentityServiceClient, walrus_internal_client::WalrusInternalClient,
    DescribeAccessKeysRequest, DescribeAccountsRequest, LookupAccessKeyRequest, NodeReport,
    ObjectRef,
};
use tests::harness::{wait_for, Cloud};
use tonic::{body::Body, transport::Channel, Code};

/// A raw mutual-TLS channel, calls not signed.
async fn raw(trust: &Trust, addr: &str, role: Role) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(common::mtls::Connector::new(trust.tls.clone(), role))
        .await
        .expect("connect")
}

/// Sends the signature headers of its first request again on every later
/// one: what an attacker who captured a request would do.
#[derive(Clone)]
struct Replay {
    inner: Channel,
    captured: Arc<Mutex<Option<http::HeaderMap>>>,
}

impl tower::Service<http::Request<Body>> for Replay {
    type Response = <Channel as tower::Service<http::Request<Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<Body>>>::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut captured = self.captured.lock().expect("lock");
        match captured.as_ref() {
            None => {
                let mut keep = http::HeaderMap::new();
                for (name, value) in request.headers() {
                    if name.as_str().starts_with("x-gumtree-") {
                        keep.insert(name.clone(), value.clone());
                    }
                }
                *captured = Some(keep);
            }
            Some(headers) => {
                for (name, value) in headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        Box::pin(tower::Service::call(&mut self.inner, request))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_calls_need_the_right_certificate_role_and_a_fresh_signature() {
    let cloud = tokio::task::block_in_place(Cloud::start);
    let clc = cloud.addr("clc").to_string();
    let walrus = cloud.addr("walrus").to_string();

    // Without TLS nothing gets through: the handshake never happens.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{clc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("a TCP connection");
    let refused = AdminServiceClient::new(plain)
        .describe_accounts(DescribeAccountsRequest {})
        .await
        .expect_err("a peer without TLS");
    // (hyper reports the refused handshake as the connection closing,
    // cancelled, or unavailable, depending on timing.)
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{refused:?}"
    );
    // Nor with a certificate of another CA (and the right secret).
    let stranger_dir = cloud.dir().join("stranger-pki");
    pki::init_ca(&stranger_dir, false).expect("another CA");
    let admin = Identity {
        role: Role::Admin,
        name: "admin".into(),
    };
    pki::issue_in(&stranger_dir, &admin).expect("issue");
    let stranger = Trust::load(
        cloud.secret_file(),
        &TlsFiles {
            // It trusts the cloud's CA, so only the server can refuse it.
            ca: Some(cloud.pki_dir().join("ca.pem")),
            ..TlsFiles::in_dir(&stranger_dir)
        },
        &admin,
    )
    .expect("load");
    assert!(
        stranger.connect(&clc, Role::Clc).await.is_err()
            || AdminServiceClient::new(stranger.channel(&clc, Role::Clc).expect("channel"))
                .describe_accounts(DescribeAccountsRequest {})
                .await
                .is_err(),
        "a certificate of another CA"
    );
    wait_for(
        "the CLC to log the refused handshakes",
        Duration::from_secs(5),
        || (cloud.log("clc").matches("TLS handshake failed").count() >= 2).then_some(()),
    );
    // A client checks the server's role too: the CLC is not a cluster.
    let admin_trust = cloud.trust(Role::Admin, "admin");
    let wrong_server = admin_trust
        .connect(&clc, Role::Cc)
        .await
        .expect_err("the CLC's certificate does not name a cluster controller");
    assert!(
        format!("{wrong_server:?}").contains("TLS with the cc"),
        "{wrong_server:?}"
    );

    // The right CA but the wrong role: a node may not call the admin
    // service, the identity service or Walrus's bucket listing, and a
    // cluster may not read Walrus's objects.
    let node = cloud.trust(Role::Nc, "nc-1");
    let denied = AdminServiceClient::new(node.connect(&clc, Role::Clc).await.expect("connect"))
        .describe_access_keys(DescribeAccessKeysRequest {
            account: "eucalyptus".into(),
        })
        .await
        .expect_err("a node asking for secret keys");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = IdentityServiceClient::new(node.connect(&clc, Role::Clc).await.expect("connect"))
        .lookup_access_key(LookupAccessKeyRequest {
            access_key_id: "AKIA".into(),
        })
        .await
        .expect_err("a node looking up keys");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let cluster = cloud.trust(Role::Cc, "cluster-1");
    let denied = WalrusInternalClient::new(
        cluster
            .connect(&walrus, Role::Walrus)
            .await
            .expect("connect"),
    )
    .get_object(ObjectRef {
        bucket: "any".into(),
        key: "object".into(),
    })
    .await
    .expect_err("a cluster reading objects");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(cloud.log("walrus").contains("not allowed for this role"));
    // The administrator may.
    let mut admin_client =
        AdminServiceClient::new(admin_trust.connect(&clc, Role::Clc).await.expect("connect"));
    admin_client
        .describe_accounts(DescribeAccountsRequest {})
        .await
        .expect("the administrator lists accounts");

    // A node reports only as itself.
    let impostor = cloud.trust(Role::Nc, "nc-9");
    let cc = cloud.addr("cluster-1").to_string();
    let mut acks =
        ClusterServiceClient::new(impostor.connect(&cc, Role::Cc).await.expect("connect"))
            .report_node(tokio_stream::iter(vec![NodeReport {
                node_name: "nc-1".into(),
                endpoint: "127.0.0.1:1".into(),
                seq: 1,
                ..Default::default()
            }]))
            .await
            .expect("the stream opens")
            .into_inner();
    let refused = acks
        .message()
        .await
        .expect_err("a report naming another node");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Signed with the secret, but as another name than the certificate's.
    let channel = raw(&admin_trust, &clc, Role::Clc).await;
    let denied = AdminServiceClient::new(SignCalls::new(
        channel,
        admin_trust.secret.clone(),
        "someone-else",
    ))
    .describe_accounts(DescribeAccountsRequest {})
    .await
    .expect_err("a name that is not the certificate's");
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    assert!(denied.message().contains("someone-else"), "{denied:?}");

    // A captured request sent again is refused, even over the right
    // connection with the right certificate.
    let replay = Replay {
        inner: raw(&admin_trust, &clc, Role::Clc).await,
        captured: Arc::default(),
    };
    let mut replaying =
        AdminServiceClient::new(SignCalls::new(replay, admin_trust.secret.clone(), "admin"));
    replaying
        .describe_accounts(DescribeAccountsRequest {})
        .await
        .expect("the first time");
    let replayed = replaying
        .describe_accounts(DescribeAccountsRequest {})
        .await
        .expect_err("the same signature again");
    assert_eq!(replayed.code(), Code::Unauthenticated, "{replayed:?}");
    assert!(replayed.message().contains("replayed"), "{replayed:?}");
    // A signature is for its method and body: the captured headers on
    // another request do not verify.
    let tampered = replaying
        .describe_access_keys(DescribeAccessKeysRequest {
            account: "eucalyptus".into(),
        })
        .await
        .expect_err("another method under the captured signature");
    assert!(
        tampered.message().contains("signature does not match"),
        "{tampered:?}"
    );
}

#[test]
fn certificates_and_the_ca_rotate_while_the_cloud_runs() {
    let mut cloud = Cloud::start();
    let admin = |cloud: &Cloud, args: &[&str]| {
        let out = cloud.admin(args);
        assert!(
            out.status.success(),
            "gumtree-admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Keep the administrator's certificate of the old CA.
    let old = cloud.dir().join("old-admin");
    std::fs::create_dir_all(&old).expect("dir");
    for f in ["admin-admin.pem", "admin-admin.key"] {
        std::fs::copy(cloud.pki_dir().join(f), old.join(f)).expect("copy");
    }
    assert!(admin(&cloud, &["pki", "init", "--rotate"]).contains("made a new CA"));
    for (role, name) in [
        ("clc", "clc"),
        ("walrus", "walrus"),
        ("sc", "sc-1"),
        ("cc", "cluster-1"),
        ("nc", "nc-1"),
        ("admin", "admin"),
    ] {
        assert!(admin(&cloud, &["pki", "issue", role, name]).contains("issued"));
    }
    assert!(admin(&cloud, &["pki", "retire-old-cas"]).contains("1 old CA"));
    // New connections use the new certificates; nothing was restarted.
    let services = admin(&cloud, &["describe-services"]);
    assert!(services.contains("ENABLED"), "{services}");
    // The old certificate is no longer trusted.
    std::fs::copy(cloud.pki_dir().join("ca.pem"), old.join("ca.pem")).expect("copy");
    let out = std::process::Command::new(tests::harness::binary("gumtree-admin"))
        .env("GUMTREE_CLC", cloud.addr("clc").to_string())
        .env("GUMTREE_SECRET_FILE", cloud.secret_file())
        .env("GUMTREE_PKI_DIR", &old)
        .arg("describe-services")
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "the old CA's certificate was accepted"
    );
    // A restarted cluster controller joins the CLC with its new certificate,
    // and the node (not restarted) reconnects to it with its own.
    cloud.kill("cluster-1");
    cloud.restart("cluster-1");
    wait_for(
        "nc-1 to reconnect with its new certificate",
        Duration::from_secs(30),
        || {
            cloud
                .log("nc-1")
                .contains("internal TLS files changed: new connections use them")
                .then_some(())
        },
    );
    wait_for("nc-1 ENABLED again", Duration::from_secs(30), || {
        (cloud.node_state("nc-1").as_deref() == Some("ENABLED")).then_some(())
    });
    let services = admin(&cloud, &["describe-services"]);
    assert!(
        services.lines().filter(|l| l.contains("ENABLED")).count() == 4,
        "{services}"
    );
}
