//! The image path: a user uploads an image through S3, Walrus serves it to
//! nodes over its internal, secret-signed gRPC service, and the node caches
//! it by digest after verifying it.

use std::fs;

use common::auth::{ClusterSecret, SignCalls};
use proto::{
    node_service_client::NodeServiceClient, walrus_internal_client::WalrusInternalClient, ImageRef,
    ObjectChunk, ObjectRef, PrepareImagesRequest,
};
use sha2::{Digest, Sha256};
use tests::{
    clients::{self, AwsCli, Credentials},
    harness::Cloud,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel, Code};

type Signed = InterceptedService<Channel, SignCalls>;

fn secret(cloud: &Cloud) -> ClusterSecret {
    ClusterSecret::from_file(cloud.secret_file()).expect("the cluster secret")
}

async fn walrus(cloud: &Cloud) -> WalrusInternalClient<Signed> {
    let channel = common::rpc::connect(&cloud.addr("walrus").to_string())
        .await
        .expect("connect to walrus");
    WalrusInternalClient::with_interceptor(channel, SignCalls::new(secret(cloud), "test"))
}

async fn node(cloud: &Cloud) -> NodeServiceClient<Signed> {
    let channel = common::rpc::connect(&cloud.addr("nc-1").to_string())
        .await
        .expect("connect to nc-1");
    NodeServiceClient::with_interceptor(channel, SignCalls::new(secret(cloud), "test"))
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
    let cloud = Cloud::start();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-images");
    fs::create_dir_all(&home).expect("home");
    // A 3 MiB "disk image", uploaded as a user would.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let file = home.join("disk.img");
    fs::write(&file, &data).expect("write image");
    let endpoint = cloud.s3_endpoint();
    let aws = |args: &[&str]| clients::aws(AwsCli::V1, &creds, &home, &endpoint, args);
    aws(&["s3", "mb", "s3://images"]).expect_ok();
    aws(&[
        "s3",
        "cp",
        file.to_str().unwrap_or_default(),
        "s3://images/tiny/disk.img",
    ])
    .expect_ok();
    let sha256 = hex::encode(Sha256::digest(&data));

    // Walrus knows the digest (what the CLC records at registration).
    let mut w = walrus(&cloud).await;
    let info = w
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

    // The node fetches it once, verifies it, and then serves it from cache.
    let mut nc = node(&cloud).await;
    let walrus_addr = cloud.addr("walrus").to_string();
    let prepare = |images: Vec<ImageRef>| PrepareImagesRequest {
        walrus: walrus_addr.clone(),
        images,
    };
    let good = image("images", "tiny/disk.img", &sha256, data.len() as u64);
    let first = nc
        .prepare_images(prepare(vec![good.clone()]))
        .await
        .expect("prepare")
        .into_inner();
    assert_eq!(first.images.len(), 1);
    assert!(!first.images[0].cached, "the first time it is downloaded");
    let cached = cloud.dir().join("nc-1").join("images").join(&sha256);
    assert_eq!(fs::read(&cached).expect("cached file"), data);
    let second = nc
        .prepare_images(prepare(vec![good]))
        .await
        .expect("prepare again")
        .into_inner();
    assert!(
        second.images[0].cached,
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
    // (The cache is by digest: only an uncached digest goes to Walrus.)
    let other = hex::encode(Sha256::digest(b"not uploaded"));
    let missing = nc
        .prepare_images(prepare(vec![image("images", "nope", &other, 12)]))
        .await
        .expect_err("a missing object");
    assert_eq!(missing.code(), Code::Unavailable, "{missing:?}");

    // A caller without the cluster secret gets nothing from Walrus.
    let stranger = ClusterSecret::from_bytes(b"a-secret-nobody-shares-with-walrus");
    let channel = common::rpc::connect(&walrus_addr).await.expect("connect");
    let mut rogue =
        WalrusInternalClient::with_interceptor(channel, SignCalls::new(stranger, "rogue"));
    let denied = rogue
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
    let mut w = walrus(&cloud).await;
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
