//! EC2 response documents: `<ActionResponse xmlns=".../doc/<Version>/">`
//! with the `requestId` first.

use super::error::escape;

/// Builds a response document.
#[derive(Debug)]
pub struct Writer {
    out: String,
    root: String,
}

impl Writer {
    /// The document for `action`'s response in API `version`.
    pub fn new(action: &str, version: &str, request_id: &str) -> Self {
        let root = format!("{action}Response");
        Self {
            out: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"http://ec2.amazonaws.com/doc/{version}/\"><requestId>{request_id}</requestId>"
            ),
            root,
        }
    }

    /// `<name>text</name>`.
    pub fn elem(&mut self, name: &str, text: &str) -> &mut Self {
        self.out
            .push_str(&format!("<{name}>{}</{name}>", escape(text)));
        self
    }

    /// `<name>text</name>` when there is text.
    pub fn opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.elem(name, t);
        }
        self
    }

    /// `<name>true|false</name>`.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.elem(name, if value { "true" } else { "false" })
    }

    /// `<name>` (children follow).
    pub fn open(&mut self, name: &str) -> &mut Self {
        self.out.push_str(&format!("<{name}>"));
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        self.out.push_str(&format!("</{name}>"));
        self
    }

    /// Ends the document.
    pub fn finish(mut self) -> String {
        self.out.push_str(&format!("</{}>", self.root));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_the_version_namespace_and_request_id() {
        let mut w = Writer::new("RegisterImage", "2014-10-01", "r-1");
        w.elem("imageId", "ami-1")
            .opt("none", None)
            .bool("isPublic", false);
        assert_eq!(
            w.finish(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RegisterImageResponse xmlns=\"http://ec2.amazonaws.com/doc/2014-10-01/\"><requestId>r-1</requestId><imageId>ami-1</imageId><isPublic>false</isPublic></RegisterImageResponse>"
        );
    }
}
