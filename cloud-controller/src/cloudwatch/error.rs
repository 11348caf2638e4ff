//! CloudWatch's errors, each knowing its wire forms: the Query protocol's
//! `<ErrorResponse>`, and for JSON and CBOR a `__type` body with the
//! `x-amzn-query-error` header (CloudWatch is query-compatible: clients
//! take the Query code from that header).

use http::StatusCode;

/// An error as CloudWatch answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct CwError {
    /// The Query protocol's code (`InvalidParameterValue`).
    pub code: String,
    /// The error shape's name (`InvalidParameterValueException`), JSON and CBOR's `__type`.
    pub shape: String,
    pub status: StatusCode,
    pub message: String,
}

impl CwError {
    fn new(code: &str, shape: &str, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            shape: shape.into(),
            status,
            message: message.into(),
        }
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidParameterValue",
            "InvalidParameterValueException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// `The value V for parameter P is invalid.`
    pub fn bad(param: &str, value: &str) -> Self {
        Self::invalid_value(format!(
            "The value {value} for parameter {param} is invalid."
        ))
    }

    pub fn combination(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidParameterCombination",
            "InvalidParameterCombinationException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            "MissingParameter",
            "MissingRequiredParameterException",
            StatusCode::BAD_REQUEST,
            format!("The parameter {param} is required."),
        )
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            "ValidationError",
            "ValidationException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            "ResourceNotFound",
            "ResourceNotFound",
            StatusCode::NOT_FOUND,
            message,
        )
    }

    pub fn next_token() -> Self {
        Self::new(
            "InvalidNextToken",
            "InvalidNextToken",
            StatusCode::BAD_REQUEST,
            "The service couldn't process the NextToken.",
        )
    }

    pub fn format(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidFormat",
            "InvalidFormatFault",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    /// A JSON or CBOR body that does not parse.
    pub fn format_body(message: String) -> Self {
        Self::new(
            "SerializationException",
            "SerializationException",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(
            "LimitExceeded",
            "LimitExceededFault",
            StatusCode::BAD_REQUEST,
            message,
        )
    }

    pub fn internal() -> Self {
        Self::new(
            "InternalServiceError",
            "InternalServiceFault",
            StatusCode::INTERNAL_SERVER_ERROR,
            "An internal error occurred.",
        )
    }

    pub fn unknown_operation(op: &str) -> Self {
        Self::new(
            "InvalidAction",
            "InvalidAction",
            StatusCode::BAD_REQUEST,
            format!("The action {op} is not valid for this web service."),
        )
    }

    /// An authentication error of the EC2 front end, as CloudWatch names it.
    pub fn from_auth(e: crate::ec2::Ec2Error) -> Self {
        match e.code.as_str() {
            "AuthFailure" => Self::new(
                "SignatureDoesNotMatch",
                "SignatureDoesNotMatch",
                StatusCode::FORBIDDEN,
                "The request signature we calculated does not match the signature you provided.",
            ),
            code => Self::new(code, code, e.status, e.message),
        }
    }

    /// `Sender` or `Receiver`, as the Query error names the fault.
    pub fn fault(&self) -> &'static str {
        if self.status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        }
    }

    /// The Query protocol's error document.
    pub fn to_xml(&self, request_id: &str) -> String {
        use common::xml::escape;
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"{}\"><Error><Type>{}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            super::doc::XMLNS,
            self.fault(),
            escape(&self.code),
            escape(&self.message)
        )
    }

    /// The JSON and CBOR protocols' error document.
    pub fn to_doc(&self) -> super::doc::Doc {
        use super::doc::Doc;
        Doc::of(vec![
            ("__type", Doc::str(self.shape.clone())),
            ("message", Doc::str(self.message.clone())),
        ])
    }
}

impl From<metric_store::StoreError> for CwError {
    fn from(e: metric_store::StoreError) -> Self {
        tracing::error!(error = %e, "metric store");
        Self::internal()
    }
}
