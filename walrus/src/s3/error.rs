//! S3 errors as S3 sends them: a code, an HTTP status and an XML body.

use http::StatusCode;

/// One S3 error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct S3Error {
    pub code: &'static str,
    pub status: StatusCode,
    pub message: String,
    /// The bucket or object concerned, as `<Resource>`.
    pub resource: Option<String>,
    /// Extra elements S3 adds for some codes (e.g. `StringToSign`).
    pub extra: Vec<(&'static str, String)>,
}

macro_rules! errors {
    ($($fn_name:ident => $code:literal, $status:ident, $msg:literal;)*) => {
        impl S3Error {
            $(
                #[doc = concat!("`", $code, "`: ", $msg)]
                pub fn $fn_name() -> Self {
                    Self::new($code, StatusCode::$status, $msg)
                }
            )*
        }
    };
}

errors! {
    access_denied => "AccessDenied", FORBIDDEN, "Access Denied";
    signature_does_not_match => "SignatureDoesNotMatch", FORBIDDEN, "The request signature we calculated does not match the signature you provided. Check your key and signing method.";
    invalid_access_key_id => "InvalidAccessKeyId", FORBIDDEN, "The AWS Access Key Id you provided does not exist in our records.";
    request_time_too_skewed => "RequestTimeTooSkewed", FORBIDDEN, "The difference between the request time and the current time is too large.";
    expired => "AccessDenied", FORBIDDEN, "Request has expired";
    no_such_bucket => "NoSuchBucket", NOT_FOUND, "The specified bucket does not exist";
    no_such_key => "NoSuchKey", NOT_FOUND, "The specified key does not exist.";
    no_such_upload => "NoSuchUpload", NOT_FOUND, "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.";
    bucket_not_empty => "BucketNotEmpty", CONFLICT, "The bucket you tried to delete is not empty";
    bucket_already_exists => "BucketAlreadyExists", CONFLICT, "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again.";
    bucket_already_owned_by_you => "BucketAlreadyOwnedByYou", CONFLICT, "Your previous request to create the named bucket succeeded and you already own it.";
    invalid_bucket_name => "InvalidBucketName", BAD_REQUEST, "The specified bucket is not valid.";
    bad_digest => "BadDigest", BAD_REQUEST, "The Content-MD5 you specified did not match what we received.";
    invalid_digest => "InvalidDigest", BAD_REQUEST, "The Content-MD5 you specified is not valid.";
    sha256_mismatch => "XAmzContentSHA256Mismatch", BAD_REQUEST, "The provided 'x-amz-content-sha256' header does not match what was computed.";
    invalid_range => "InvalidRange", RANGE_NOT_SATISFIABLE, "The requested range is not satisfiable";
    malformed_xml => "MalformedXML", BAD_REQUEST, "The XML you provided was not well-formed or did not validate against our published schema";
    incomplete_body => "IncompleteBody", BAD_REQUEST, "You did not provide the number of bytes specified by the Content-Length HTTP header.";
    missing_content_length => "MissingContentLength", LENGTH_REQUIRED, "You must provide the Content-Length HTTP header.";
    precondition_failed => "PreconditionFailed", PRECONDITION_FAILED, "At least one of the pre-conditions you specified did not hold";
    method_not_allowed => "MethodNotAllowed", METHOD_NOT_ALLOWED, "The specified method is not allowed against this resource.";
    key_too_long => "KeyTooLongError", BAD_REQUEST, "Your key is too long";
    malformed_acl => "MalformedACLError", BAD_REQUEST, "The XML you provided was not well-formed or did not validate against our published schema.";
    invalid_part => "InvalidPart", BAD_REQUEST, "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.";
    invalid_part_order => "InvalidPartOrder", BAD_REQUEST, "The list of parts was not in ascending order. Parts must be ordered by part number.";
    entity_too_small => "EntityTooSmall", BAD_REQUEST, "Your proposed upload is smaller than the minimum allowed object size.";
    internal => "InternalError", INTERNAL_SERVER_ERROR, "We encountered an internal error. Please try again.";
    service_unavailable => "ServiceUnavailable", SERVICE_UNAVAILABLE, "Please reduce your request rate.";
}

impl S3Error {
    /// An error with any code.
    pub fn new(code: &'static str, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
            resource: None,
            extra: Vec::new(),
        }
    }

    /// `InvalidArgument` (400) with a message and the argument's name and value.
    pub fn invalid_argument(message: impl Into<String>, name: &str, value: &str) -> Self {
        let mut e = Self::new("InvalidArgument", StatusCode::BAD_REQUEST, message);
        e.extra.push(("ArgumentName", name.to_string()));
        e.extra.push(("ArgumentValue", value.to_string()));
        e
    }

    /// `InvalidRequest` (400).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new("InvalidRequest", StatusCode::BAD_REQUEST, message)
    }

    /// `NotImplemented` (501) for a feature we do not have.
    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            "NotImplemented",
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not implemented"),
        )
    }

    /// `AuthorizationHeaderMalformed` / `AuthorizationQueryParametersError` (400).
    pub fn malformed_auth(message: impl Into<String>) -> Self {
        Self::new(
            "AuthorizationHeaderMalformed",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// `BadDigest` for a checksum algorithm: "The CRC32 you specified did not match ...".
    pub fn checksum_mismatch(algorithm: &str) -> Self {
        Self::new(
            "BadDigest",
            StatusCode::BAD_REQUEST,
            format!("The {algorithm} you specified did not match the calculated checksum."),
        )
    }

    /// Names the bucket or key concerned.
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Adds an element to the body.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// The XML body, with `request_id`.
    pub fn to_xml(&self, request_id: &str) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>");
        xml.push_str(&format!("<Code>{}</Code>", self.code));
        xml.push_str(&format!("<Message>{}</Message>", escape(&self.message)));
        if let Some(r) = &self.resource {
            xml.push_str(&format!("<Resource>{}</Resource>", escape(r)));
        }
        for (name, value) in &self.extra {
            xml.push_str(&format!("<{name}>{}</{name}>", escape(value)));
        }
        xml.push_str(&format!("<RequestId>{request_id}</RequestId></Error>"));
        xml
    }
}

pub use common::xml::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_s3_xml() {
        let xml = S3Error::no_such_key()
            .with_resource("/b/a&b")
            .to_xml("REQ1");
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Resource>/b/a&amp;b</Resource><RequestId>REQ1</RequestId></Error>"
        );
        assert_eq!(S3Error::bucket_not_empty().status, StatusCode::CONFLICT);
        assert_eq!(S3Error::invalid_range().status.as_u16(), 416);
    }
}
