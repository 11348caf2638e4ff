//! The image path: a user uploads an image through S3, Walrus serves it to
//! nodes over its internal gRPC service (mutual TLS, signed calls, and only
//! the images a node's instances use), and the node caches it by digest
//! after verifying it.

use std::fs;

use common::{
    auth::{ClusterSecret, SignCalls},
    pki::Role,
};
use proto::{
    node_service_client::NodeServiceClient, walrus_internal_client::WalrusInternalClient, ImageRef,
    ObjectChunk, ObjectRef, PrepareImagesRequest,
};
use sha2::{Digest, Sha256};
use tests::{
    clients::{self, AwsCli, Credentials},
    harness::{Cloud, Tier},
};
use tonic::Code;

/// Walrus's internal service, called as `role`.
async fn walrus(cloud: &Cloud, role: Role) -> WalrusInternalClient<common::rpc::Client> {
    WalrusInternalClient::new(cloud.client("walrus", Tier::Walrus, role, "test").await)
}

async fn node(cloud: &Cloud) -> NodeServiceClient<common::rpc::Client> {
    NodeServiceClient::new(cloud.client("nc-1", Tier::Node, Role::Cc, "test-cc").await)
}

fn image(bucket: &str, key: &str, sha256: &str, size: u64) -> ImageRef {
    ImageRef {
        id: String::new(),
        bucket: bucket.into(),
        key: key.into(),
        sha256: sha256.into(),
        size,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_fetch_verify_and_cache_images_from_walrus() {
    let cloud = tokio::task::block_in_place(Cloud::start);
    let creds = tokio::task::block_in_place(|| Credentials::new(cloud.admin_key()));
    let home = cloud.dir().join("home-images");
    fs::create_dir_all(&home).expect("home");
    // A 3 MiB "disk image", uploaded as a user would, and a second object.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let file = home.join("disk.img");
    fs::write(&file, &data).expect("write image");
    let other_file = home.join("other.img");
    fs::write(&other_file, b"an object no instance uses").expect("write");
    let (s3, ec2) = (cloud.s3_endpoint(), cloud.ec2_endpoint());
    let aws = |endpoint: &str, args: &[&str]| {
        tokio::task::block_in_place(|| clients::aws(AwsCli::V1, &creds, &home, endpoint, args))
    };
    aws(&s3, &["s3", "mb", "s3://images"]).expect_ok();
    for (path, key) in [(&file, "tiny/disk.img"), (&other_file, "other.img")] {
        aws(
            &s3,
            &[
                "s3",
                "cp",
                path.to_str().unwrap_or_default(),
                &format!("s3://images/{key}"),
            ],
        )
        .expect_ok();
    }
    let sha256 = hex::encode(Sha256::digest(&data));

    // Walrus knows the digest (what the CLC records at registration).
    let info = walrus(&cloud, Role::Clc)
        .await
        .head_object(ObjectRef {
            bucket: "images".into(),
            key: "tiny/disk.img".into(),
        })
        .await
        .expect("head")
        .into_inner();
    assert_eq!(
        (info.size, info.sha256.as_str()),
        (data.len() as u64, sha256.as_str())
    );

    // Nothing runs it yet: Walrus does not serve it to a node.
    let mut nc = node(&cloud).await;
    let walrus_addr = cloud.addr("walrus").to_string();
    let prepare = |images: Vec<ImageRef>| PrepareImagesRequest {
        walrus: walrus_addr.clone(),
        images,
    };
    let good = image("images", "tiny/disk.img", &sha256, data.len() as u64);
    let refused = nc
        .prepare_images(prepare(vec![good.clone()]))
        .await
        .expect_err("no instance uses it yet");
    assert!(
        refused
            .message()
            .contains("runs no instance of images/tiny/disk.img"),
        "{refused:?}"
    );

    // Registered and launched: the node fetches it once, verifies it, and
    // then serves it from cache.
    let on_ec2 = |args: &[&str]| aws(&ec2, args);
    let ami = clients::register_image(&on_ec2, "images/tiny/disk.img", "tiny");
    let id = clients::launch_one(&on_ec2, &ami);
    aws(
        &ec2,
        &["ec2", "wait", "instance-running", "--instance-ids", &id],
    )
    .expect_ok();
    let cached = cloud.dir().join("nc-1").join("images").join(&sha256);
    assert_eq!(fs::read(&cached).expect("cached file"), data);
    let again = nc
        .prepare_images(prepare(vec![good]))
        .await
        .expect("prepare again")
        .into_inner();
    assert!(
        again.images[0].cached,
        "the second time it comes from the cache"
    );
    assert_eq!(
        cloud.log("walrus").matches("internal download").count(),
        1,
        "Walrus served it once"
    );

    // A digest that does not match is refused, and nothing is cached.
    let wrong = "0".repeat(64);
    let refused = nc
        .prepare_images(prepare(vec![image(
            "images",
            "tiny/disk.img",
            &wrong,
            data.len() as u64,
        )]))
        .await
        .expect_err("a wrong digest is refused");
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(!cloud.dir().join("nc-1/images").join(&wrong).exists());
    let leftovers: Vec<_> = fs::read_dir(cloud.dir().join("nc-1/images"))
        .expect("cache dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "no partial downloads: {leftovers:?}");
    // Another object of the same bucket is still not the node's to read.
    let other = hex::encode(Sha256::digest(b"an object no instance uses"));
    let refused = nc
        .prepare_images(prepare(vec![image("images", "other.img", &other, 26)]))
        .await
        .expect_err("an object no instance uses");
    assert!(
        refused
            .message()
            .contains("runs no instance of images/other.img"),
        "{refused:?}"
    );
    // Directly, with a node's certificate, it is the same.
    let denied = walrus(&cloud, Role::Nc)
        .await
        .head_object(ObjectRef {
            bucket: "images".into(),
            key: "other.img".into(),
        })
        .await
        .expect_err("a node reads only its instances' images");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A caller with a certificate but without the cluster secret gets
    // nothing from Walrus.
    let stranger = ClusterSecret::from_bytes(b"a-secret-nobody-shares-with-walrus");
    let trust = cloud.trust(Role::Clc, "rogue");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{walrus_addr}"))
        .expect("endpoint")
        .connect_with_connector(common::mtls::Connector::new(
            trust.tls.clone(),
            Role::Walrus,
        ))
        .await
        .expect("connect");
    let denied = WalrusInternalClient::new(SignCalls::new(channel, stranger, "rogue"))
        .head_object(ObjectRef {
            bucket: "images".into(),
            key: "tiny/disk.img".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(denied.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_uploads_are_verified_before_they_are_visible() {
    let cloud = Cloud::start();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-put");
    fs::create_dir_all(&home).expect("home");
    clients::aws(
        AwsCli::V1,
        &creds,
        &home,
        &cloud.s3_endpoint(),
        &["s3", "mb", "s3://snapshots"],
    )
    .expect_ok();
    let mut w = walrus(&cloud, Role::Sc).await;
    let chunks = |sha: &str| {
        let first = ObjectChunk {
            object: Some(ObjectRef {
                bucket: "snapshots".into(),
                key: "snap-1".into(),
            }),
            data: b"block data ".to_vec(),
            sha256: String::new(),
        };
        let last = ObjectChunk {
            object: None,
            data: b"and more".to_vec(),
            sha256: sha.into(),
        };
        tokio_stream::iter(vec![first, last])
    };
    let bad = w
        .put_object(chunks(&"f".repeat(64)))
        .await
        .expect_err("a wrong digest");
    assert_eq!(bad.code(), Code::DataLoss);
    let gone = w
        .head_object(ObjectRef {
            bucket: "snapshots".into(),
            key: "snap-1".into(),
        })
        .await
        .expect_err("nothing stored");
    assert_eq!(gone.code(), Code::NotFound);
    let sha = hex::encode(Sha256::digest(b"block data and more"));
    let stored = w
        .put_object(chunks(&sha))
        .await
        .expect("stored")
        .into_inner();
    assert_eq!((stored.size, stored.sha256.as_str()), (19, sha.as_str()));
    // The bucket's owner reads it through S3 like any object.
    let got = clients::aws(
        AwsCli::V1,
        &creds,
        &home,
        &cloud.s3_endpoint(),
        &["s3", "cp", "s3://snapshots/snap-1", "-"],
    )
    .expect_ok();
    assert_eq!(got, "block data and more");
}
