//! The S3 client (endpoint, path style, region, credentials) and the bucket reads the
//! verifier needs. Shared by the uploader and `msp-agent verify`.
//!
//! Request checksums are computed only when an operation requires them
//! (`WhenRequired`): Ceph radosgw refuses the SDK's default streaming checksum, and
//! the uploader sends `Content-MD5` itself, which is what Object Lock uploads need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use futures_util::{StreamExt, TryStreamExt};

use super::verify::{Failure, Item, Retention};

/// Name of the credentials file inside `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "s3-credentials";

/// How to reach a bucket.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub credentials_file: Option<PathBuf>,
    pub request_timeout: Option<Duration>,
}

impl From<&super::S3Config> for ClientSettings {
    fn from(c: &super::S3Config) -> Self {
        ClientSettings {
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
            path_style: c.path_style,
            credentials_file: c.credentials_file.clone(),
            request_timeout: Some(c.request_timeout),
        }
    }
}

/// Parse an AWS-style credentials file: `aws_access_key_id = …`,
/// `aws_secret_access_key = …`, optional `aws_session_token`; `[sections]`, comments and
/// the upper-case environment spelling (`AWS_ACCESS_KEY_ID=…`) are accepted.
pub fn parse_credentials(text: &str) -> Result<Credentials, String> {
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            token,
            None,
            "msp-agent-credentials-file",
        )),
        _ => Err("needs aws_access_key_id and aws_secret_access_key".into()),
    }
}

fn credentials_from(path: &Path) -> anyhow::Result<Credentials> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read S3 credentials {}", path.display()))?;
    parse_credentials(&text).map_err(|e| anyhow::anyhow!("S3 credentials {}: {e}", path.display()))
}

/// Build a client: credentials from the configured file, else
/// `$CREDENTIALS_DIRECTORY/s3-credentials`, else the environment.
pub async fn client(s: &ClientSettings) -> anyhow::Result<Client> {
    let credential_path = s.credentials_file.clone().or_else(|| {
        let p = Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?).join(CREDENTIAL_NAME);
        p.exists().then_some(p)
    });
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(if s.region.is_empty() {
            "us-east-1".to_owned()
        } else {
            s.region.clone()
        }))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(s.request_timeout.unwrap_or(Duration::from_secs(20)))
                .build(),
        );
    loader = match credential_path {
        Some(p) => loader.credentials_provider(credentials_from(&p)?),
        None => loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        ),
    };
    if let Some(e) = &s.endpoint {
        loader = loader.endpoint_url(e);
    }
    let sdk = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(s.path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok(Client::from_conf(conf))
}

/// One line for logs and status: the S3 error code and message, or the transport error.
pub fn describe<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!(
                "{} (HTTP {}): {}",
                err.code().unwrap_or("error"),
                se.raw().status().as_u16(),
                err.message().unwrap_or("no message")
            )
        }
        other => {
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

/// The status code of a service error (404 for a missing object).
pub fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    }
}

pub fn to_chrono(t: &aws_smithy_types::DateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Split `s3://bucket/prefix` into bucket and prefix (without slashes at the ends).
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// The key of a bundle object: `<prefix>/<stem>.json` (or `.sig`).
pub fn object_key(prefix: &str, stem: &str, ext: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{stem}.{ext}")
    } else {
        format!("{prefix}/{stem}.{ext}")
    }
}

async fn get_with_retention(
    client: &Client,
    bucket: &str,
    key: &str,
) -> anyhow::Result<Option<(Vec<u8>, Retention)>> {
    let out = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => o,
        Err(e) if status_of(&e) == Some(404) => return Ok(None),
        Err(e) => anyhow::bail!("GetObject s3://{bucket}/{key}: {}", describe(&e)),
    };
    let retention = match out.object_lock_mode() {
        None => Retention::None,
        Some(m) => Retention::Locked {
            mode: m.as_str().to_owned(),
            until: out.object_lock_retain_until_date().and_then(to_chrono),
        },
    };
    let body = out
        .body
        .collect()
        .await
        .with_context(|| format!("reading s3://{bucket}/{key}"))?;
    Ok(Some((body.into_bytes().to_vec(), retention)))
}

/// Every bundle under `prefix` (all hosts), with its signature and both retentions,
/// and the bundles hidden behind a delete marker (their locked versions are still
/// there, but a reader of the current objects would not see them).
pub async fn list_items(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<(Vec<Item>, Vec<Failure>)> {
    let list_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let mut hidden = Vec::new();
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let page = client
            .list_object_versions()
            .bucket(bucket)
            .prefix(&list_prefix)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ListObjectVersions s3://{bucket}/{list_prefix}: {}",
                    describe(&e)
                )
            })?;
        for m in page.delete_markers() {
            let Some(key) = m.key() else { continue };
            if m.is_latest() != Some(true) || !(key.ends_with(".json") || key.ends_with(".sig")) {
                continue;
            }
            let rel = key.strip_prefix(&list_prefix).unwrap_or(key);
            let file = rel.rsplit('/').next().unwrap_or(rel);
            hidden.push(Failure {
                host: rel.split('/').next().unwrap_or_default().to_owned(),
                seq: super::bundle::seq_from_name(file),
                name: format!("s3://{bucket}/{key}"),
                reason: "hidden by a delete marker (someone deleted it; its locked version is still in the bucket)".into(),
            });
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        version_marker = page.next_version_id_marker().map(str::to_owned);
    }
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&list_prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "ListObjectsV2 s3://{bucket}/{list_prefix}: {}",
                describe(&e)
            )
        })?;
        for o in page.contents() {
            if let Some(k) = o.key()
                && k.ends_with(".json")
            {
                keys.push(k.to_owned());
            }
        }
    }
    let items: Vec<Item> = futures_util::stream::iter(keys)
        .map(|key| {
            let list_prefix = list_prefix.clone();
            async move {
                let (json, jr) = get_with_retention(client, bucket, &key)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("s3://{bucket}/{key} vanished while listing"))?;
                let sig_key = format!("{}.sig", key.strip_suffix(".json").expect("json key"));
                let sig = get_with_retention(client, bucket, &sig_key).await?;
                let rel = key.strip_prefix(&list_prefix).unwrap_or(&key);
                let file = rel.rsplit('/').next().unwrap_or(rel);
                let mut item = Item::new(
                    format!("s3://{bucket}/{key}"),
                    json,
                    sig.as_ref().map(|s| s.0.clone()),
                );
                item.name_seq = Some(super::bundle::seq_from_name(file).unwrap_or(u64::MAX));
                item.name_host = rel.split('/').next().map(str::to_owned);
                item.retention = Some((jr, sig.map_or(Retention::None, |s| s.1)));
                anyhow::Ok(item)
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok((items, hidden))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_forms() {
        let c = parse_credentials("[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n")
            .unwrap();
        assert_eq!((c.access_key_id(), c.secret_access_key()), ("AK", "SK"));
        let c = parse_credentials(
            "export AWS_ACCESS_KEY_ID=\"A\"\nAWS_SECRET_ACCESS_KEY=S\nAWS_SESSION_TOKEN=T",
        )
        .unwrap();
        assert_eq!(c.session_token(), Some("T"));
        assert!(parse_credentials("aws_access_key_id=x").is_err());
    }

    #[test]
    fn s3_urls_and_keys() {
        assert_eq!(
            parse_s3_url("s3://b/p/q/"),
            Some(("b".into(), "p/q".into()))
        );
        assert_eq!(parse_s3_url("s3://b"), Some(("b".into(), "".into())));
        assert_eq!(parse_s3_url("/tmp"), None);
        assert_eq!(object_key("", "h/x", "json"), "h/x.json");
        assert_eq!(object_key("/ev/", "h/x", "sig"), "ev/h/x.sig");
    }
}
