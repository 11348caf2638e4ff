//! XML in and out: a small element tree for request bodies, and a writer
//! for responses.

use quick_xml::{events::Event, Reader};

use super::error::{escape, S3Error};

/// An element of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name (namespace prefix dropped).
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Most elements a request body may have, and how deep it may nest.
const MAX_ELEMENTS: usize = 20_000;
const MAX_DEPTH: usize = 16;

/// Parses a request body; anything that is not one well-formed element is `MalformedXML`.
pub fn parse(body: &[u8]) -> Result<Element, S3Error> {
    let mut reader = Reader::from_reader(body);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|_| S3Error::malformed_xml())?;
        match event {
            Event::Start(start) => {
                count += 1;
                if root.is_some() || count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(S3Error::malformed_xml());
                }
                stack.push(Element {
                    name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    ..Default::default()
                });
            }
            Event::Empty(empty) => {
                count += 1;
                let element = Element {
                    name: String::from_utf8_lossy(empty.local_name().as_ref()).into_owned(),
                    ..Default::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None if root.is_none() => root = Some(element),
                    None => return Err(S3Error::malformed_xml()),
                }
            }
            Event::Text(text) => {
                if let Some(top) = stack.last_mut() {
                    let t = text.unescape().map_err(|_| S3Error::malformed_xml())?;
                    top.text.push_str(&t);
                } else if !text.iter().all(u8::is_ascii_whitespace) {
                    return Err(S3Error::malformed_xml());
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Event::End(_) => {
                let done = stack.pop().ok_or_else(S3Error::malformed_xml)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(S3Error::malformed_xml());
    }
    root.ok_or_else(S3Error::malformed_xml)
}

/// Builds a response document.
#[derive(Debug)]
pub struct Writer {
    out: String,
}

/// The S3 namespace.
pub const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

impl Writer {
    /// A document whose root is `root` in the S3 namespace.
    pub fn new(root: &str) -> Self {
        Self {
            out: format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{S3_NS}\">"),
        }
    }

    /// `<name>text</name>`.
    pub fn elem(&mut self, name: &str, text: &str) -> &mut Self {
        self.out
            .push_str(&format!("<{name}>{}</{name}>", escape(text)));
        self
    }

    /// `<name>` (an element with children follows).
    pub fn open(&mut self, name: &str) -> &mut Self {
        self.out.push_str(&format!("<{name}>"));
        self
    }

    /// Text that is already XML.
    pub fn raw(&mut self, xml: &str) -> &mut Self {
        self.out.push_str(xml);
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        self.out.push_str(&format!("</{name}>"));
        self
    }

    /// Ends the document with `</root>`.
    pub fn finish(mut self, root: &str) -> String {
        self.out.push_str(&format!("</{root}>"));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delete_requests_and_refuses_junk() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>
<Object><Key>a&amp;b</Key></Object><Object><Key>c</Key><VersionId/></Object></Delete>"#;
        let root = parse(body).expect("parse");
        assert_eq!(root.name, "Delete");
        assert_eq!(root.child_text("Quiet"), Some("true"));
        let keys: Vec<&str> = root
            .children_named("Object")
            .filter_map(|o| o.child_text("Key"))
            .collect();
        assert_eq!(keys, vec!["a&b", "c"]);
        for bad in [
            &b""[..],
            b"<a>",
            b"<a></b>",
            b"text",
            b"<a/><b/>",
            b"<a></a>trailing",
        ] {
            assert_eq!(
                parse(bad).map_err(|e| e.code),
                Err("MalformedXML"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writes_escaped_documents() {
        let mut w = Writer::new("R");
        w.open("C").elem("Key", "a<b").close("C");
        assert_eq!(w.finish("R"), format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<R xmlns=\"{S3_NS}\"><C><Key>a&lt;b</Key></C></R>"));
    }
}
